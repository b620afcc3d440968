package continuous

import "container/heap"

// Deadlines: every entry's next one (its next slot, or the deadline of
// its connect or of its request in flight) in a heap the loop waits on.

// expire handles the deadlines that are due.
func (l *loop) expire() {
	for len(l.timers) > 0 && l.timers[0].due <= l.mono {
		e := l.timers[0]
		heap.Pop(&l.timers)
		e.timeout()
	}
}

// schedule puts e's deadline, e.due, into the heap.
func (l *loop) schedule(e *tcpEntry) {
	if e.heapIdx >= 0 {
		heap.Fix(&l.timers, e.heapIdx)
		return
	}
	heap.Push(&l.timers, e)
}

// unschedule takes e out of the heap.
func (l *loop) unschedule(e *tcpEntry) {
	if e.heapIdx >= 0 {
		heap.Remove(&l.timers, e.heapIdx)
	}
}

// timerHeap orders entries by deadline.
type timerHeap []*tcpEntry

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}

func (h *timerHeap) Push(v any) {
	e := v.(*tcpEntry)
	e.heapIdx = len(*h)
	*h = append(*h, e)
}

func (h *timerHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.heapIdx = -1
	return e
}
