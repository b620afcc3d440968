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

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
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
	// upRx and downRx stamp what the connections receive; nil where a
	// connection does not give kernel stamps (the read time is used).
	upRx, downRx *rxstamp.Conn

	retDone  chan struct{}
	ctx      context.Context // the session's, cancelled when the relay stops
	stopDown func() bool
	// deadlineGen counts the forward goroutine's deadline moves, so that
	// the return goroutine notices when one raced with its own.
	deadlineGen atomic.Uint64
	downErr     atomic.Pointer[error] // why the forward goroutine gave up on the downstream
	// downBroken: a write downstream failed; the forward goroutine (its
	// only user) writes nothing more there.
	downBroken bool
}

func newForwarder(s *Server, up net.Conn) *forwarder {
	f := &forwarder{up: up, upR: frame.NewReader(up, s.cfg.MaxFrameBytes), upRx: rxstamp.Of(up)}
	f.upR.Budget = s.budget
	f.upReader = f.upR
	f.init(s, up.RemoteAddr().String())
	f.tcp.readUp = tcpReader(up)
	return f
}

// tcpReader reads TCP_INFO of conn; nil when it is not a TCP connection.
func tcpReader(conn net.Conn) func() (tcpinfo.Info, error) {
	r, err := tcpinfo.NewReader(conn)
	if err != nil {
		return nil
	}
	return r.Read
}

// received is when the kernel received what the latest read of a
// connection returned: its stamp, or the read time without one.
func (h *hopState) received(c *rxstamp.Conn) rxstamp.Stamp {
	if c != nil {
		return c.Last()
	}
	return rxstamp.Stamp{At: h.now()}
}

func (f *forwarder) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f.ctx = ctx
	defer func() {
		// No more frames are read from upstream: the buffer goes back
		// now, not after the return goroutine's replies and drain (it
		// writes nothing from this buffer).
		f.upR.Release()
		f.fwd.forget()
		if f.stopDown != nil {
			f.stopDown()
		}
		if f.ring != nil {
			f.ring.close()
			f.moveDeadline(time.Now())
			<-f.retDone
			f.down.Close()
			f.downR.Release()
		}
	}()
	for {
		if err := f.up.SetReadDeadline(time.Now().Add(f.s.cfg.Timeout)); err != nil {
			return
		}
		if err := f.upR.Fill(); err != nil {
			f.upstreamEnded(ctx, err)
			return
		}
		if !f.forwardBuffered(ctx) || !f.flush() {
			return
		}
	}
}

// forwardBuffered batches every complete request the upstream buffer
// holds (or this hop's answer to it); false ends the session.
func (f *forwarder) forwardBuffered(ctx context.Context) bool {
	rx, wall, sync := f.received(f.upRx), f.s.cfg.Clock.Wall(), f.s.cfg.Clock.Sync()
	for {
		fr, err := f.upR.Next()
		if err != nil {
			f.answer(ctx, newEntry(rx), f.reject(err))
			return false
		}
		if fr == nil {
			return true
		}
		e, v, ans := f.classify(fr, rx, wall, sync)
		if ans == nil && f.down == nil {
			if ans = f.dial(ctx, &e); ans == nil {
				f.startReturn(ctx, v.Header.Kind)
			}
		}
		if ans != nil {
			if !f.answer(ctx, e, ans) {
				return false
			}
			continue
		}
		if !f.room(ctx) {
			return false
		}
		f.enqueueForward(e, fr, &v, 0)
	}
}

// upstreamEnded handles the end of the upstream side: a clean close or an
// idle timeout passes the half-close on and lets the replies drain; a
// malformed header is refused.
func (f *forwarder) upstreamEnded(ctx context.Context, err error) {
	switch r := peer.Classify(err); {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET):
	case r == peer.ReasonTimeout:
		f.s.log.Debug("upstream idle, closing", "peer", f.upPeer, "timeout", f.s.cfg.Timeout)
	case r == peer.ReasonBadFrame || r == peer.ReasonClosed || r == peer.ReasonTooLarge || r == peer.ReasonOverloaded:
		f.answer(ctx, newEntry(rxstamp.Stamp{At: f.now()}), f.reject(err))
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
	conn, err := f.s.dialer.DialContext(ctx, f.s.cfg.ForwardTo)
	if err != nil {
		return f.dialFailed(err)
	}
	f.down = conn
	f.downRx = rxstamp.Of(conn)
	// Shutting down closes the downstream too: a write stuck on a next hop
	// that stopped reading must not hold the relay up until its deadline.
	f.stopDown = context.AfterFunc(f.ctx, func() { conn.Close() })
	e.dialed, e.connect = true, f.now()-start
	return nil
}

func (f *forwarder) startReturn(ctx context.Context, kind frame.Kind) {
	f.downR = frame.NewReader(f.down, f.s.cfg.MaxFrameBytes)
	f.downR.Budget = f.s.budget
	// The downstream is this hop's own --forward-to, dialled for a session
	// that sent a valid frame: its reader is proven from the start.
	f.downR.Prove()
	f.tcp.readDown = tcpReader(f.down)
	f.downTarget = inspectConn(f.down)
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
		now := f.now()
		tcp := f.tcp.reading(now)
		f.appendLocalAnswer(&e, ans, now, &tcp)
		_, err := f.ret.write(f.up, f.s.cfg.Timeout)
		f.emitMetrics()
		if err != nil {
			f.s.log.Debug("cannot answer upstream", "peer", f.upPeer, "err", err)
			return false
		}
		if ans.fatal {
			f.letGoOfFrames(f.upR) // no return goroutine: both batches are ours
			drainConn(f.up, f.s.cfg.Timeout)
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
	if f.downBroken {
		// The return goroutine answers these requests for the broken
		// downstream, as it did the ones before.
		f.fwd.reset()
		return true
	}
	if _, err := f.fwd.write(f.down, f.s.cfg.Timeout); err != nil {
		// The return goroutine answers every published entry; closing
		// the downstream wakes it up. The session goes on: the requests
		// still coming get that answer too (as on the epoll engine),
		// instead of a reset that could lose the answers already sent.
		werr := fmt.Errorf("write to %s: %w", f.s.cfg.ForwardTo, err)
		f.downErr.Store(&werr)
		f.down.Close()
		f.downBroken = true
		return true
	}
	// The requests are on their way: the moment to read TCP_INFO, which
	// their replies will carry (tcpView).
	f.tcp.refresh(f.lastOut)
	return true
}

// returnLoop writes the reply of every published entry upstream, in order.
// It waits in the downstream read, not on the ring: a probe then wakes one
// goroutine per direction.
func (f *forwarder) returnLoop(ctx context.Context) {
	defer close(f.retDone)
	var st returnState
	for {
		switch f.returnStep(ctx, &st) {
		case stepAgain:
		case stepEnd:
			return
		case stepFail:
			f.fail()
			return
		}
	}
}

// returnState is what the return goroutine carries between steps.
type returnState struct {
	// broken answers every entry once the downstream failed.
	broken *localAnswer
	// rx is when the kernel received the latest downstream read.
	rx rxstamp.Stamp
}

type stepResult int

const (
	stepAgain stepResult = iota
	stepEnd
	stepFail
)

// returnStep answers the oldest entry if it can, or waits for what it
// needs: a published entry, or the downstream's reply.
func (f *forwarder) returnStep(ctx context.Context, st *returnState) stepResult {
	e := f.ring.peekReady()
	switch {
	case e != nil && (e.local != nil || st.broken != nil):
		return f.answerHead(e, st.broken)
	case e == nil && (st.broken != nil || f.ring.closed.Load()):
		return f.awaitEntries(ctx)
	}
	fr, again, err := f.readReply(st)
	if again {
		return stepAgain
	}
	if err == errUpstreamGone {
		return stepFail
	}
	if err == nil {
		if e = f.ring.peekReady(); e == nil {
			err = fmt.Errorf("%w: a frame from downstream that answers no request", frame.ErrMalformed)
		} else if e.local != nil {
			return stepAgain // answer the local entry first; the frame stays buffered
		}
	}
	if err != nil {
		if werr := f.downErr.Load(); werr != nil {
			err = *werr
		}
		st.broken = f.downstreamFailure(err, f.ring.peekReady())
		f.down.Close()
		return stepAgain
	}
	if f.tracing(e) {
		f.waitTrace(e)
	}
	if ans := f.takeReply(e, fr, st.rx, 0); ans != nil {
		st.broken = ans
		f.down.Close()
	}
	return stepAgain
}

// answerHead answers the oldest entry itself; a fatal answer ends the
// session once it is written.
func (f *forwarder) answerHead(e *inflight, broken *localAnswer) stepResult {
	if !f.takeHead(e, broken) {
		return stepAgain
	}
	if f.flushReturn() {
		// The forward goroutine, which ended the session with this
		// answer, releases its reader and forward batch itself.
		f.ret.forget()
		drainConn(f.up, f.s.cfg.Timeout)
	}
	return stepFail
}

// awaitEntries writes what is answered and waits for the forward
// goroutine to publish more, or to end the session.
func (f *forwarder) awaitEntries(ctx context.Context) stepResult {
	if !f.flushReturn() {
		return stepFail
	}
	if f.ring.peek(ctx) == nil {
		return stepEnd
	}
	return stepAgain
}

// readReply returns the next buffered reply, reading the downstream when
// none is (after writing what is answered). again means: nothing to
// return yet, look at the ring again (a local entry, a moved deadline).
func (f *forwarder) readReply(st *returnState) (fr []byte, again bool, err error) {
	if fr, err = f.downR.Next(); fr != nil || err != nil {
		return fr, false, err
	}
	if !f.flushReturn() {
		return nil, false, errUpstreamGone
	}
	if !f.armDeadline() {
		return nil, true, nil
	}
	if err = f.downR.Fill(); err == nil {
		st.rx = f.received(f.downRx)
		fr, err = f.downR.Next()
		return fr, false, err
	}
	if peer.Classify(err) == peer.ReasonTimeout {
		// A real timeout only if the oldest entry's time is up;
		// otherwise the forward goroutine poked or moved the deadline.
		if e := f.ring.peekReady(); e == nil || e.local != nil || f.now() < e.waitUntil {
			return nil, true, nil
		}
	}
	return nil, false, err
}

// flushReturn writes the pending replies upstream; false when upstream is gone.
func (f *forwarder) flushReturn() bool {
	n := f.buildReplies()
	if n == 0 {
		return true
	}
	_, err := f.ret.write(f.up, f.s.cfg.Timeout)
	f.emitMetrics()
	if err != nil {
		f.s.log.Debug("cannot write replies upstream", "peer", f.upPeer, "replies", n, "err", err)
		return false
	}
	return true
}

// errUpstreamGone ends the return side when replies cannot be written.
var errUpstreamGone = errors.New("upstream gone")

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
	up   net.Conn
	r    *frame.Reader
	upRx *rxstamp.Conn
}

func newEcho(s *Server, up net.Conn) *echo {
	x := &echo{up: up, r: frame.NewReader(up, s.cfg.MaxFrameBytes), upRx: rxstamp.Of(up)}
	x.r.Budget = s.budget
	x.upReader = x.r
	x.init(s, up.RemoteAddr().String())
	x.tcp.readUp = tcpReader(up)
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
			if r := peer.Classify(err); r == peer.ReasonBadFrame || r == peer.ReasonTooLarge || r == peer.ReasonOverloaded || errors.Is(err, frame.ErrPartialFrame) {
				x.echoes = append(x.echoes, echoReply{e: newEntry(rxstamp.Stamp{At: x.now()}), local: x.reject(err)})
				if x.flush() {
					x.letGoOfFrames(x.r)
					drainConn(x.up, x.s.cfg.Timeout)
				}
			} else if !errors.Is(err, io.EOF) {
				x.s.log.Debug("upstream read ended", "peer", x.upPeer, "err", err)
			}
			return
		}
		if stop := x.queueEchoes(x.r, x.received(x.upRx)); stop {
			if x.flush() {
				x.letGoOfFrames(x.r)
				drainConn(x.up, x.s.cfg.Timeout)
			}
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
	_, err := x.ret.write(x.up, x.s.cfg.Timeout)
	x.emitMetrics()
	if err != nil {
		x.s.log.Debug("cannot write replies upstream", "peer", x.upPeer, "err", err)
		return false
	}
	return true
}

// drainConn ends a connection whose last answer is written: the write
// side is shut and what the peer still sends is discarded for a little
// while, so that a peer still sending reads the answer instead of losing
// it to a reset. The caller has let go of its frames first
// (hopState.letGoOfFrames): the drain reads none, into a buffer of its own.
func drainConn(c net.Conn, timeout time.Duration) {
	closeWrite(c)
	_ = c.SetReadDeadline(time.Now().Add(min(timeout, drainTime)))
	_, _ = io.CopyN(io.Discard, c, drainBytes)
}

func closeWrite(c net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.(closeWriter); ok {
		_ = cw.CloseWrite()
		return
	}
	c.Close()
}
