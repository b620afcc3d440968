package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/subsegment/subsegment_exporter/frame"
	"github.com/subsegment/subsegment_exporter/tcpinfo"
)

// The goroutine engine drives a session with blocking net.Conn calls: one
// goroutine per direction. It serves connections the epoll loop cannot
// (TLS); the loop is faster because a probe then wakes no goroutines.

// forwarder is one upstream connection of a hop that has a next hop. Its
// forward goroutine reads requests and writes them downstream; its return
// goroutine reads the replies and writes them upstream. They meet in the
// ring, so a reply is matched to its request in order.
type forwarder struct {
	hopState
	up    net.Conn
	upR   *frame.Reader
	down  net.Conn
	downR *frame.Reader
	tcp   *tcpinfo.Reader

	retDone chan struct{}
	// deadlineGen counts the forward goroutine's deadline moves, so that
	// the return goroutine notices when one raced with its own.
	deadlineGen atomic.Uint64
	downErr     atomic.Pointer[error] // why the forward goroutine gave up on the downstream
}

func newForwarder(s *Server, up net.Conn) *forwarder {
	f := &forwarder{up: up, upR: frame.NewReader(up, s.cfg.MaxFrameBytes)}
	f.init(s, up.RemoteAddr().String())
	return f
}

func (f *forwarder) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() {
		if f.ring != nil {
			f.ring.close()
			f.moveDeadline(time.Now())
			<-f.retDone
			f.down.Close()
			f.downR.Release()
		}
		f.upR.Release()
	}()
	for {
		if err := f.up.SetReadDeadline(time.Now().Add(f.s.cfg.Timeout)); err != nil {
			return
		}
		if err := f.upR.Fill(); err != nil {
			f.upstreamEnded(ctx, err)
			return
		}
		tIn, wall, sync := f.now(), f.s.cfg.Clock.Wall(), f.s.cfg.Clock.Sync()
		for {
			fr, err := f.upR.Next()
			if err != nil {
				f.answer(ctx, inflight{tIn: tIn}, f.reject(err))
				return
			}
			if fr == nil {
				break
			}
			e, v, ans := f.classify(fr, tIn, wall, sync)
			if ans == nil && f.down == nil {
				if ans = f.dial(ctx, &e); ans == nil {
					f.startReturn(ctx, v.Header.Kind)
				}
			}
			if ans != nil {
				if !f.answer(ctx, e, ans) {
					return
				}
				continue
			}
			if !f.room(ctx) {
				return
			}
			f.enqueueForward(e, fr, &v)
		}
		if !f.flush() {
			return
		}
	}
}

// upstreamEnded handles the end of the upstream side: a clean close or an
// idle timeout passes the half-close on and lets the replies drain; a
// malformed header is refused.
func (f *forwarder) upstreamEnded(ctx context.Context, err error) {
	switch r := Classify(err); {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET):
	case r == frame.ReasonTimeout:
		f.s.log.Debug("upstream idle, closing", "peer", f.upPeer, "timeout", f.s.cfg.Timeout)
	case r == frame.ReasonBadFrame || r == frame.ReasonClosed:
		f.answer(ctx, inflight{tIn: f.now()}, f.reject(err))
		return
	default:
		f.s.log.Debug("upstream read failed", "peer", f.upPeer, "err", err)
	}
	if f.down != nil {
		closeWrite(f.down)
	}
}

// dial opens the downstream connection for the session's first request.
func (f *forwarder) dial(ctx context.Context, e *inflight) *localAnswer {
	ctx, cancel := context.WithTimeout(ctx, min(e.budget*7/8, f.s.cfg.Timeout))
	defer cancel()
	start := f.now()
	conn, err := f.s.cfg.Dial(ctx, f.s.cfg.ForwardTo)
	if err != nil {
		return f.dialFailed(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	f.down = conn
	e.dialed, e.connect = true, f.now()-start
	return nil
}

func (f *forwarder) startReturn(ctx context.Context, kind frame.Kind) {
	f.downR = frame.NewReader(f.down, f.s.cfg.MaxFrameBytes)
	f.tcp, _ = tcpinfo.NewReader(f.down)
	f.startRing(kind)
	f.retDone = make(chan struct{})
	go f.returnLoop(ctx)
}

// room waits for a free ring entry, writing what is batched first.
func (f *forwarder) room(ctx context.Context) bool {
	if f.roomInRing() {
		return true
	}
	return f.flush() && f.ring.waitFree(ctx)
}

// answer queues an answer this hop gives itself; false ends the session.
func (f *forwarder) answer(ctx context.Context, e inflight, ans *localAnswer) bool {
	if f.ring == nil {
		// No return goroutine yet: write it here.
		e.tOut = f.now()
		appendLocalAnswer(f.s, &f.ret, &f.hop, &e, ans, f.retSign, f.now())
		if _, err := f.ret.write(f.up, f.s.cfg.Timeout); err != nil {
			f.s.log.Debug("cannot answer upstream", "peer", f.upPeer, "err", err)
		}
		return !ans.fatal
	}
	if !f.room(ctx) {
		return false
	}
	f.enqueueLocal(e, ans)
	if ans.fatal {
		f.flush()
		return false
	}
	return true
}

// flush publishes the batch's entries and writes the batch downstream;
// false ends the session.
func (f *forwarder) flush() bool {
	if f.ring == nil {
		return true
	}
	wasEmpty, local, first := f.publish()
	defer func() {
		// Wake or re-time the return goroutine's downstream read after the
		// write, so the request does not wait for it.
		switch {
		case local:
			f.moveDeadline(time.Now())
		case wasEmpty:
			f.moveDeadline(f.monoTime(first))
		}
		f.ring.notify()
	}()
	if f.fwd.empty() {
		return true
	}
	if _, err := f.fwd.write(f.down, f.s.cfg.Timeout); err != nil {
		// The return goroutine answers every published entry; closing
		// the downstream wakes it up.
		werr := fmt.Errorf("write to %s: %w", f.s.cfg.ForwardTo, err)
		f.downErr.Store(&werr)
		f.down.Close()
		return false
	}
	return true
}

// returnLoop writes the reply of every published entry upstream, in order.
// It waits in the downstream read, not on the ring: a probe then wakes one
// goroutine per direction.
func (f *forwarder) returnLoop(ctx context.Context) {
	defer close(f.retDone)
	var broken *localAnswer
	var tReplyIn int64
	for {
		e := f.ring.peekReady()
		if e != nil && (e.local != nil || broken != nil) {
			if f.takeHead(e, broken) {
				f.flushReturn()
				f.fail()
				return
			}
			continue
		}
		if e == nil && (broken != nil || f.ring.closed.Load()) {
			// Nothing to read downstream: wait for entries, or the end.
			if !f.flushReturn() {
				f.fail()
				return
			}
			if f.ring.peek(ctx) == nil {
				return
			}
			continue
		}
		fr, err := f.downR.Next()
		if fr == nil && err == nil {
			if !f.flushReturn() {
				f.fail()
				return
			}
			if !f.armDeadline() {
				continue
			}
			if err = f.downR.Fill(); err == nil {
				tReplyIn = f.now()
				fr, err = f.downR.Next()
			} else if Classify(err) == frame.ReasonTimeout {
				// A real timeout only if the oldest entry's time is up;
				// otherwise the forward goroutine poked or moved the deadline.
				if e = f.ring.peekReady(); e == nil || e.local != nil || f.now() < e.waitUntil {
					continue
				}
			}
		}
		if err == nil {
			if e = f.ring.peekReady(); e == nil {
				err = fmt.Errorf("%w: a frame from downstream that answers no request", frame.ErrMalformed)
			} else if e.local != nil {
				continue // answer the local entry first; the frame stays buffered
			}
		}
		if err != nil {
			if werr := f.downErr.Load(); werr != nil {
				err = *werr
			}
			broken = f.downstreamFailure(err, f.ring.peekReady())
			f.down.Close()
			continue
		}
		if ans := f.takeReply(e, fr, tReplyIn); ans != nil {
			broken = ans
			f.down.Close()
		}
	}
}

// flushReturn writes the pending replies upstream; false when upstream is gone.
func (f *forwarder) flushReturn() bool {
	n := f.buildReplies()
	if n == 0 {
		return true
	}
	if _, err := f.ret.write(f.up, f.s.cfg.Timeout); err != nil {
		f.s.log.Debug("cannot write replies upstream", "peer", f.upPeer, "replies", n, "err", err)
		return false
	}
	if f.tcp != nil {
		f.refreshTCP(f.tcp.Read)
	}
	return true
}

// fail stops the session after an upstream write failure or a fatal answer.
func (f *forwarder) fail() {
	f.up.Close()
	f.down.Close()
	// Drain the ring so the forward goroutine never waits for room.
	go func() {
		for f.ring.peek(context.Background()) != nil {
			f.ring.pop()
		}
	}()
}

// armDeadline sets the downstream read deadline to the oldest entry's (none
// while the ring is empty). It returns false when the forward goroutine
// published meanwhile, or there is something to do without reading.
func (f *forwarder) armDeadline() bool {
	gen := f.deadlineGen.Load()
	var deadline time.Time
	if e := f.ring.peekReady(); e != nil {
		if e.local != nil {
			return false
		}
		deadline = f.monoTime(e.waitUntil)
	} else if f.ring.closed.Load() {
		return false
	}
	if err := f.down.SetReadDeadline(deadline); err != nil {
		return true // the read reports the closed connection
	}
	return f.deadlineGen.Load() == gen
}

// moveDeadline is the forward goroutine's side of armDeadline: after it
// publishes into an empty ring, or publishes an answer of its own, or
// closes the ring, it wakes or re-times the return goroutine's read.
func (f *forwarder) moveDeadline(to time.Time) {
	f.deadlineGen.Add(1)
	_ = f.down.SetReadDeadline(to)
}

func (f *forwarder) monoTime(mono int64) time.Time {
	return time.Now().Add(time.Duration(mono - f.now()))
}

// echo is one upstream connection of the end host, driven by one goroutine.
type echo struct {
	hopState
	up net.Conn
	r  *frame.Reader
}

func newEcho(s *Server, up net.Conn) *echo {
	x := &echo{up: up, r: frame.NewReader(up, s.cfg.MaxFrameBytes)}
	x.init(s, up.RemoteAddr().String())
	return x
}

func (x *echo) run() {
	defer x.r.Release()
	for {
		if err := x.up.SetReadDeadline(time.Now().Add(x.s.cfg.Timeout)); err != nil {
			return
		}
		err := x.r.Fill()
		if err != nil {
			if r := Classify(err); r == frame.ReasonBadFrame || errors.Is(err, frame.ErrPartialFrame) {
				x.echoes = append(x.echoes, echoReply{e: inflight{tIn: x.now()}, local: x.reject(err)})
				x.flush()
			} else if !errors.Is(err, io.EOF) {
				x.s.log.Debug("upstream read ended", "peer", x.upPeer, "err", err)
			}
			return
		}
		if stop := x.queueEchoes(x.r, x.now()); stop {
			x.flush()
			return
		}
		if !x.flush() {
			return
		}
	}
}

// flush writes the pending replies in one writev.
func (x *echo) flush() bool {
	if x.buildEchoes() == 0 {
		return true
	}
	if _, err := x.ret.write(x.up, x.s.cfg.Timeout); err != nil {
		x.s.log.Debug("cannot write replies upstream", "peer", x.upPeer, "err", err)
		return false
	}
	return true
}

func closeWrite(c net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.(closeWriter); ok {
		_ = cw.CloseWrite()
		return
	}
	c.Close()
}
