package relay

import (
	"container/heap"
	"fmt"

	"golang.org/x/sys/unix"
)

// Deadlines: every session's next one in a heap the loop waits on.

// expire handles the deadlines that passed; it returns the time now,
// for the wait that follows.
func (l *loop) expire() int64 {
	now := l.s.cfg.Clock.Monotonic()
	if len(l.timers) == 0 || l.timers[0].deadline > now {
		return now
	}
	for len(l.timers) > 0 && l.timers[0].deadline <= now {
		l.timers[0].timeout(now)
	}
	return l.s.cfg.Clock.Monotonic()
}

// schedule puts the session's next deadline into the timer heap.
func (x *lsession) schedule() {
	d := int64(0)
	pick := func(t int64) {
		if t > 0 && (d == 0 || t < d) {
			d = t
		}
	}
	if x.draining {
		pick(x.drainUntil)
	}
	if x.connFd >= 0 {
		pick(x.connUntil)
	}
	if x.fwd.pendingWrite() || x.ret.pendingWrite() {
		pick(x.stallUntil)
	}
	if x.ring != nil && x.broken == nil {
		if e := x.ring.peekReady(); e != nil && e.local == nil {
			pick(e.waitUntil)
		}
	}
	if !x.upEOF && !x.dialing && !x.draining && (x.ring == nil || x.ring.empty()) {
		pick(x.idleUntil)
	}
	x.deadline = d
	h := &x.l.timers
	switch {
	case d == 0 && x.heapIdx >= 0:
		heap.Remove(h, x.heapIdx)
	case d != 0 && x.heapIdx >= 0:
		heap.Fix(h, x.heapIdx)
	case d != 0:
		heap.Push(h, x)
	}
}

// timeout handles the session's deadline.
func (x *lsession) timeout(now int64) {
	switch {
	case x.draining && now >= x.drainUntil:
		x.close()
		return
	case x.connFd >= 0 && now >= x.connUntil:
		x.connectFailed(fmt.Errorf("connect to %s: %w", x.s.cfg.ForwardTo, errTimeout))
	case (x.fwd.pendingWrite() || x.ret.pendingWrite()) && x.stallUntil > 0 && now >= x.stallUntil:
		x.s.log.Debug("peer stopped reading, closing", "peer", x.upPeer, "timeout", x.s.cfg.Timeout)
		if x.fwd.pendingWrite() && x.ring != nil {
			x.breakDown(fmt.Errorf("write to %s: %w", x.s.cfg.ForwardTo, unix.ETIMEDOUT))
		} else {
			x.close()
			return
		}
	case x.ring != nil && x.broken == nil && x.ring.peekReady() != nil && x.ring.peekReady().local == nil && now >= x.ring.peekReady().waitUntil:
		x.breakDown(fmt.Errorf("read from %s: %w", x.s.cfg.ForwardTo, errTimeout))
	case !x.draining && now >= x.idleUntil:
		// Idle, or a frame that did not arrive whole within --timeout.
		x.s.log.Debug("upstream idle, closing", "peer", x.upPeer, "timeout", x.s.cfg.Timeout, "partial_frame_bytes", x.upR.Buffered())
		x.upstreamEnded(errTimeout)
	default:
		// The deadline moved meanwhile.
	}
	x.settle()
}

// errTimeout is a deadline the loop enforced.
var errTimeout = timeoutError{}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// timerHeap orders sessions by deadline.
type timerHeap []*lsession

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].deadline < h[j].deadline }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *timerHeap) Push(v any) {
	x := v.(*lsession)
	x.heapIdx = len(*h)
	*h = append(*h, x)
}
func (h *timerHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	x.heapIdx = -1
	return x
}
