package continuous

import "time"

// Deadlines: every entry's next one (its next slot, or the deadline of
// its connect or of its request in flight) in a 4-ary heap the loop waits
// on, kept by hand with the deadlines beside the entries (container/heap's
// interface calls, and a pointer to follow per comparison, cost more than
// the rest of a probe's scheduling with ten thousand entries).

// expire handles the deadlines that are due, and sends the probes due
// within their entry's early margin: a turn the loop makes anyway (for a
// reply) sends them, rather than a wake-up of its own a moment later —
// a wake-up costs as much CPU as a probe.
func (l *loop) expire() {
	for len(l.timers) > 0 {
		t := l.timers[0]
		if t.due > l.mono && (t.e.phase != idle || t.due > l.mono+t.e.early) {
			return
		}
		l.timers.remove(0)
		t.e.timeout()
	}
}

// maxEarly is how much before its slot a probe may go out with another
// entry's turn: a fiftieth of the interval, at most 2 ms. The probes stay
// spread (the busiest 100 ms of 10 000 entries at 1 s holds no more), and
// what they measure does not change: request-out is read at the write.
const maxEarly = 2 * time.Millisecond

func earlyMargin(interval time.Duration) int64 { return int64(min(maxEarly, interval/50)) }

// schedule puts e's deadline, e.due, into the heap.
func (l *loop) schedule(e *tcpEntry) {
	if e.heapIdx >= 0 {
		l.timers[e.heapIdx].due = e.due
		l.timers.fix(e.heapIdx)
		return
	}
	l.timers.push(e)
}

// unschedule takes e out of the heap.
func (l *loop) unschedule(e *tcpEntry) {
	if e.heapIdx >= 0 {
		l.timers.remove(e.heapIdx)
	}
}

// timer is an entry's deadline in the heap.
type timer struct {
	due int64
	e   *tcpEntry
}

// timerHeap orders entries by deadline; each knows its place (heapIdx,
// -1 when out).
type timerHeap []timer

const heapArity = 4

func (h *timerHeap) push(e *tcpEntry) {
	e.heapIdx = len(*h)
	*h = append(*h, timer{due: e.due, e: e})
	h.up(e.heapIdx)
}

func (h *timerHeap) remove(i int) {
	old := *h
	n := len(old) - 1
	e := old[i].e
	if i != n {
		old[i] = old[n]
		old[i].e.heapIdx = i
	}
	old[n] = timer{}
	*h = old[:n]
	e.heapIdx = -1
	if i < n {
		h.fix(i)
	}
}

// fix restores the order after the deadline at i changed.
func (h timerHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h timerHeap) up(i int) {
	t := h[i]
	for i > 0 {
		p := (i - 1) / heapArity
		if h[p].due <= t.due {
			break
		}
		h[i] = h[p]
		h[i].e.heapIdx = i
		i = p
	}
	h[i] = t
	t.e.heapIdx = i
}

// down moves the deadline at i down; false when it stayed.
func (h timerHeap) down(i int) bool {
	start, t, n := i, h[i], len(h)
	for {
		first := heapArity*i + 1
		if first >= n {
			break
		}
		c := first
		for k := first + 1; k < min(first+heapArity, n); k++ {
			if h[k].due < h[c].due {
				c = k
			}
		}
		if t.due <= h[c].due {
			break
		}
		h[i] = h[c]
		h[i].e.heapIdx = i
		i = c
	}
	h[i] = t
	t.e.heapIdx = i
	return i > start
}
