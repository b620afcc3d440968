package continuous

import "time"

// Deadlines: every entry's next one (its next slot, or the deadline of
// its connect or of its request in flight) in a 4-ary heap the loop waits
// on, kept by hand with the deadlines beside the entries (container/heap's
// interface calls, and a pointer to follow per comparison, cost more than
// the rest of a probe's scheduling with ten thousand entries).

// expire handles the deadlines that are due, and sends the probes due
// within their entry's early margin: a turn the loop makes anyway (for a
// reply, or another entry's slot) sends them, rather than a wake-up of
// its own a moment later — a wake-up costs as much CPU as a probe.
func (l *loop) expire() {
	sent := l.slotProbes
	defer func() {
		if l.slotProbes != sent {
			l.slotTurns++
		}
	}()
	for len(l.timers) > 0 {
		t := l.timers[0]
		if t.due > l.mono && (t.e.phase != idle || t.due > l.mono+earlyMargin(time.Duration(t.e.sched.interval), l.entries)) {
			return
		}
		l.timers.remove(0)
		t.e.timeout()
	}
}

// Batching. A wake-up of the loop from idle costs this VM about as much
// CPU as a probe's own system calls (perf of 2000 entries: a quarter of
// the exporter's CPU in the scheduler's switch back to the loop), so a
// probe may go out a little before its slot with another entry's turn
// (earlyMargin): enough for about batchProbes probes of the loop to go
// out together, at least minEarly, at most a twentieth of the interval.
// The probes stay spread over the interval, and what they measure does
// not change: the request's build and out times are read for each probe
// (turnOf), its reply's arrival is the kernel's receive stamp. (Reading
// the replies of a batch together, after a pause, was tried: the pause
// went into the source's own residence, and into the connect times and
// warm-ups of other entries.)
const (
	minEarly    = 2 * time.Millisecond
	batchProbes = 8
)

// earlyMargin is how long before its slot a probe of an entry probing
// every interval may go out, on a loop running n entries.
func earlyMargin(interval time.Duration, n int) int64 {
	return int64(min(interval/20, max(minEarly, batchProbes*interval/time.Duration(max(n, 1)))))
}

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
