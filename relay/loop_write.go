package relay

import (
	"fmt"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
)

// Queueing and writing: requests admitted into the ring and forwarded,
// replies (or this hop's own answers) taken from its head and written back.

type heldRequest struct {
	fr  []byte
	e   inflight
	v   frame.View
	ans *localAnswer
	// spliced is how much of the request's data is in the forward pipe.
	spliced int
}

// processEcho answers every complete request the end host has buffered.
func (x *lsession) processEcho() {
	if !x.upStopped && x.queueEchoes(x.upR, x.upRx.Last) {
		x.upStopped, x.closeAfter = true, true
	}
	x.flushEcho()
}

// processUp admits held requests, then every complete request buffered,
// and writes what it could admit downstream. The requests were received
// when the latest upstream read was: the kernel's stamp of it.
func (x *lsession) processUp() {
	if x.echo {
		x.processEcho()
		return
	}
	rx, wall, sync := x.upRx.Last, x.s.cfg.Clock.Wall(), x.s.cfg.Clock.Sync()
	for !x.closeAfter {
		r := &x.fresh
		if len(x.held) > 0 {
			r = &x.held[0]
		} else if !x.nextRequest(rx, wall, sync) {
			break
		}
		if !x.admit(r) {
			if r == &x.fresh {
				x.held = append(x.held, x.fresh)
			}
			break
		}
		if r != &x.fresh {
			// Shift in place: the queue is short, and keeps its capacity.
			n := copy(x.held, x.held[1:])
			x.held[n] = heldRequest{}
			x.held = x.held[:n]
		}
	}
	x.flushForward()
}

// nextRequest classifies the next complete request buffered into fresh;
// false when there is none (or no more may be read).
func (x *lsession) nextRequest(rx rxstamp.Stamp, wall int64, sync clock.Sync) bool {
	if x.upStopped {
		return false
	}
	fr, err := x.upR.Next()
	r := &x.fresh
	switch {
	case err != nil:
		*r = heldRequest{e: newEntry(rx), ans: x.reject(err)}
		x.upStopped = true
	case fr == nil:
		return false
	default:
		r.fr, r.spliced = fr, x.upR.Spliced()
		r.e, r.v, r.ans = x.classify(fr, rx, wall, sync)
		if r.ans != nil && r.ans.fatal {
			x.upStopped = true
		}
	}
	return true
}

// admit forwards a request or queues this hop's answer to it; false when
// it must wait (for the dial, or for room in the ring).
func (x *lsession) admit(r *heldRequest) bool {
	if r.ans == nil && x.broken != nil {
		ans := *x.broken
		r.ans = &ans
	}
	if x.ring == nil {
		if r.ans != nil {
			// Nothing in flight yet: answer right away.
			x.fwd.dropPiped(r.spliced)
			if r.ans.fatal {
				x.upStopped, x.closeAfter = true, true
			}
			x.echoes = append(x.echoes, echoReply{e: r.e, local: r.ans})
			x.flushEcho()
			return true
		}
		if !x.dialing {
			x.dial(r.e)
		}
		return false
	}
	if !x.roomInRing() {
		return false
	}
	if r.ans != nil {
		// A fatal answer closes the session once it reaches the head.
		x.fwd.dropPiped(r.spliced)
		x.enqueueLocal(r.e, r.ans)
		return true
	}
	if x.connectPending > 0 {
		// The first request forwarded after the dial carries its time.
		r.e.dialed, r.e.connect = true, x.connectPending
		x.connectPending = 0
	}
	x.enqueueForward(r.e, r.fr, &r.v, r.spliced)
	return true
}

// flushForward publishes the batch and writes it downstream.
func (x *lsession) flushForward() {
	if x.ring == nil {
		return
	}
	_, local, _ := x.publish()
	if x.fwd.pendingWrite() && x.down >= 0 {
		x.writeDown()
	}
	if local {
		x.processDown(x.downRx.Last)
	}
}

func (x *lsession) writeDown() {
	if !x.fwd.pendingWrite() {
		return
	}
	if x.down < 0 {
		x.fwd.reset()
		return
	}
	done, err := x.fwd.writeFd(x.down)
	if err != nil {
		x.fwd.reset()
		x.breakDown(fmt.Errorf("write to %s: %w", x.s.cfg.ForwardTo, err))
		return
	}
	if !done {
		x.stallUntil = x.now() + int64(x.s.cfg.Timeout)
		return
	}
	// The requests are on their way: the moment to read TCP_INFO, which
	// their replies will carry (tcpView).
	x.tcp.refresh(x.lastOut)
	// The batch is out: requests buffered meanwhile may go on.
	if x.upR.Complete() || len(x.held) > 0 {
		x.processUp()
	}
}

// processDown answers entries from the ring head: with the replies
// buffered from downstream (received at rx, the stamp of the latest
// downstream read), or by this hop itself.
func (x *lsession) processDown(rx rxstamp.Stamp) {
	for x.ring != nil {
		e := x.ring.peekReady()
		if e != nil && (e.local != nil || x.broken != nil) {
			if x.takeHead(e, x.broken) {
				x.closeAfter = true
			}
			continue
		}
		if x.down < 0 || e != nil && x.tracing(e) {
			// A reply asking for the path waits for the trace, whose end
			// calls processDown again (traceWake).
			break
		}
		fr, err := x.downR.Next()
		if err == nil && fr != nil && e == nil {
			err = fmt.Errorf("%w: a frame from downstream that answers no request", frame.ErrMalformed)
		}
		if err != nil {
			// A refused frame's spliced data stays at the end of the
			// return pipe: nothing follows it there once the downstream
			// is dropped.
			x.breakDown(err)
			return
		}
		if fr == nil {
			break
		}
		if ans := x.takeReply(e, fr, rx, x.downR.Spliced()); ans != nil {
			x.setBroken(ans)
		}
	}
	x.flushReturn()
	if x.ring != nil && (x.upR.Complete() || len(x.held) > 0) && !x.fwd.pendingWrite() {
		x.processUp() // replies freed ring room
	}
}

// flushReturn writes the replies upstream.
func (x *lsession) flushReturn() {
	if x.buildReplies() == 0 && !x.ret.pendingWrite() {
		return
	}
	x.writeUp()
}

func (x *lsession) flushEcho() {
	if x.buildEchoes() == 0 && !x.ret.pendingWrite() {
		return
	}
	x.writeUp()
}

func (x *lsession) writeUp() {
	if !x.ret.pendingWrite() {
		return
	}
	done, err := x.ret.writeFd(x.up)
	x.emitMetrics()
	if err != nil {
		x.s.log.Debug("cannot write replies upstream", "peer", x.upPeer, "err", err)
		x.close()
		return
	}
	if !done {
		x.stallUntil = x.now() + int64(x.s.cfg.Timeout)
		return
	}
	if x.down >= 0 {
		// Replies buffered meanwhile may go on.
		if x.downR.Complete() {
			x.processDown(x.downRx.Last)
		}
	} else if x.echo && x.upR.Complete() && !x.upStopped {
		x.processUp()
	}
}
