package continuous

import (
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
)

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
	for len(l.timers) > 0 {
		t := l.timers[0]
		if t.due > l.mono && (t.e.phase != idle || t.due > l.mono+earlyMargin(t.e.interval, l.entries)) {
			return
		}
		l.timers.remove(0)
		t.e.timeout()
	}
}

// Batching. A wake-up of the loop from idle costs this VM about as much
// CPU as a probe's own system calls (perf of 2000 entries: a quarter of
// the exporter's CPU in the scheduler's switch back to the loop), so the
// loop groups the probes of its entries into fewer turns, in two ways:
//   - a probe may go out a little before its slot with another entry's
//     turn (earlyMargin): enough for about batchProbes probes of the loop
//     to go out together, at least minEarly, at most a twentieth of the
//     interval — the probes stay spread over the interval, and what they
//     measure does not change (request-out is read at the write);
//   - after a turn that sent the probes of slots the loop does not wake
//     for each reply (a warm-up's or a trace's reply, which the next
//     request waits for, is read at once): it sleeps until its next deadline (often the next batch's
//     slot), at most holdLimit, and then takes every reply that came.
//     A reply's time is the kernel's receive stamp, not the moment it is
//     read, so the round trips do not change either; the source's own
//     wait for a reply (its hop's wait) is counted from the end of the
//     pause (ownWait), not from the reply's arrival during it.
const (
	minEarly    = 2 * time.Millisecond
	batchProbes = 8
)

// earlyMargin is how long before its slot a probe of an entry probing
// every interval may go out, on a loop running n entries.
func earlyMargin(interval time.Duration, n int) int64 {
	return int64(min(interval/20, max(minEarly, batchProbes*interval/time.Duration(max(n, 1)))))
}

// holdLimit is how long the replies of an entry's request may wait for
// the loop to collect them: a tenth of its interval, and a quarter of its
// timeout, so that the kernel's receive stamp is still believed
// (rxstamp.Clocks.MaxWait) and the reply read well before its deadline.
func holdLimit(interval, timeout time.Duration) time.Duration {
	return min(interval/10, timeout/4)
}

// held notes a request sent in this turn by an entry whose replies may
// wait limit: the loop collects them after the turn (wait).
func (l *loop) held(limit time.Duration) {
	if l.hold == 0 || limit < l.hold {
		l.hold = max(limit, 1)
	}
}

// ownWait is a reply's stamp with its wait for the source counted from
// the end of the loop's latest pause: a reply that came while the loop
// collected replies on purpose did not wait for a loaded source.
func (l *loop) ownWait(st rxstamp.Stamp) rxstamp.Stamp {
	if st.Kernel && !l.heldTo.IsZero() {
		if since := time.Since(l.heldTo); since < st.Wait {
			st.Wait = max(since, 0)
		}
	}
	return st
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
