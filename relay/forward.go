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

	"github.com/subsegment/subsegment_exporter/clock"
	"github.com/subsegment/subsegment_exporter/frame"
	"github.com/subsegment/subsegment_exporter/tcpinfo"
)

// forwarder is one upstream connection of a hop that has a next hop. Its
// forward goroutine reads requests, appends this hop's ID to their path and
// writes them downstream; its return goroutine reads the replies, prepends
// this hop's record and writes them upstream. The two meet in a ring of
// inflight entries, so a reply is matched to its request in order.
type forwarder struct {
	s     *Server
	up    net.Conn
	upR   *frame.Reader
	down  net.Conn
	downR *frame.Reader
	tcp   *tcpinfo.Reader
	ring  *ring

	// forward goroutine state
	fwdSign *frame.Signer
	fwd     batch
	pending int // filled, unpublished ring slots of the current batch

	// return goroutine state
	retSign *frame.Signer
	ret     batch
	replies []pendingReply
	retDone chan struct{}
	downErr atomic.Pointer[error] // why the forward goroutine gave up on the downstream

	hop frame.HopRecord // scratch record, reused
}

// pendingReply is a reply waiting for the batch write that stamps reply-out.
type pendingReply struct {
	e        inflight
	frame    []byte // the downstream reply as received; nil for local answers
	view     frame.View
	tReplyIn int64
	tcp      frame.TCPInfo
	hasTCP   bool
	// downErr is the error record of a KindError frame from downstream.
	downErr []byte
	local   *localAnswer
}

func newForwarder(s *Server, up net.Conn) *forwarder {
	return &forwarder{
		s:       s,
		up:      up,
		upR:     frame.NewReader(up, s.cfg.MaxFrameBytes),
		fwdSign: frame.NewSigner(s.cfg.Keys),
		retSign: frame.NewSigner(s.cfg.Keys),
	}
}

func (f *forwarder) clock() clock.Clock { return f.s.cfg.Clock }

func (f *forwarder) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() {
		if f.ring != nil {
			f.ring.close()
			<-f.retDone
			f.down.Close()
		}
	}()
	timeout := f.s.cfg.Timeout
	for {
		if err := f.up.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return
		}
		err := f.upR.Fill()
		if err != nil {
			f.upstreamEnded(err)
			return
		}
		tIn := f.clock().Monotonic()
		wall := f.clock().Wall()
		sync := f.clock().Sync()
		for {
			fr, err := f.upR.Next()
			if err != nil {
				f.rejectUpstream(ctx, err, tIn)
				return
			}
			if fr == nil {
				break
			}
			if !f.request(ctx, fr, tIn, wall, sync) {
				return
			}
		}
		if !f.flush() {
			return
		}
	}
}

// upstreamEnded handles the end of the upstream side: a clean close or an
// idle timeout passes the half-close on and lets the replies drain; a
// malformed header is refused.
func (f *forwarder) upstreamEnded(err error) {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET):
	case Classify(err) == frame.ReasonTimeout:
		f.s.log.Debug("upstream idle, closing", "peer", f.up.RemoteAddr(), "timeout", f.s.cfg.Timeout)
	case Classify(err) == frame.ReasonBadFrame || Classify(err) == frame.ReasonClosed:
		f.rejectUpstream(context.Background(), err, f.clock().Monotonic())
		return
	default:
		f.s.log.Debug("upstream read failed", "peer", f.up.RemoteAddr(), "err", err)
	}
	if f.down != nil {
		closeWrite(f.down)
	}
}

// rejectUpstream answers a frame that cannot be trusted or parsed with an
// error frame, in order after the replies already in flight, and ends the
// session: the stream position is unknown after it.
func (f *forwarder) rejectUpstream(ctx context.Context, err error, tIn int64) {
	reason := Classify(err)
	if reason == frame.ReasonUnknown || reason == frame.ReasonClosed {
		reason = frame.ReasonBadFrame
	}
	f.s.metrics.Failed(reason)
	f.s.log.Debug("refusing frame from upstream", "peer", f.up.RemoteAddr(), "reason", reason, "err", err)
	ans := &localAnswer{reason: reason, side: frame.SideUpstream, peer: f.up.RemoteAddr().String(),
		message: fmt.Sprintf("%s refused a frame from %s: %v", f.s.cfg.Name, f.up.RemoteAddr(), err), fatal: true, errorFrame: true}
	if f.ring == nil {
		f.answerDirect(inflight{tIn: tIn}, ans)
		return
	}
	if !f.flush() || !f.ring.waitFree(ctx) {
		return
	}
	*f.ring.slot(0) = inflight{tIn: tIn, local: ans}
	f.ring.slot(0).tOut = f.clock().Monotonic()
	f.ring.publish(1)
}

// request handles one complete request frame; false ends the session.
func (f *forwarder) request(ctx context.Context, fr []byte, tIn, wall int64, sync clock.Sync) bool {
	if err := f.fwdSign.Verify(fr); err != nil {
		f.rejectUpstream(ctx, err, tIn)
		return false
	}
	v, err := frame.Parse(fr, f.s.cfg.MaxFrameBytes, frame.MaxHopsLimit)
	if err != nil {
		f.rejectUpstream(ctx, err, tIn)
		return false
	}
	if !v.Header.Kind.IsRequest() {
		f.rejectUpstream(ctx, fmt.Errorf("%w: %s from upstream, expected a request", frame.ErrMalformed, v.Header.Kind), tIn)
		return false
	}
	e := inflight{seq: v.Probe.Seq, kind: v.Header.Kind, pflags: v.Probe.Flags, tIn: tIn, wallIn: wall, sync: sync}
	total := f.budget(v.Probe.BudgetMicros)
	e.waitUntil = tIn + int64(total)*15/16

	if ans := f.s.checkPath(v, fr, f.up); ans != nil {
		return f.answer(ctx, e, ans)
	}
	if f.down == nil {
		conn, connect, err := f.dial(ctx, total*7/8)
		if err != nil {
			reason := Classify(err)
			if reason == frame.ReasonUnknown {
				reason = frame.ReasonUnreachable
			}
			f.s.log.Debug("cannot reach next hop", "next", f.s.cfg.ForwardTo, "reason", reason, "err", err)
			return f.answer(ctx, e, &localAnswer{reason: reason, side: frame.SideDownstream, peer: f.s.nextName(),
				message: fmt.Sprintf("%s cannot reach %s: %v", f.s.cfg.Name, f.s.cfg.ForwardTo, err), fatal: true})
		}
		f.startReturn(ctx, conn, v.Header.Kind)
		e.dialed, e.connect = true, int64(connect)
	}
	if f.pending == f.ring.free() {
		if !f.flush() || !f.ring.waitFree(ctx) {
			return false
		}
	}
	*f.ring.slot(f.pending) = e
	f.pending++
	f.rewriteRequest(fr, &v, uint32(max(total*7/8/time.Microsecond, 1)))
	return true
}

// budget is how long this hop may take to reply: what the request allows,
// but never more than this hop's own --timeout.
func (f *forwarder) budget(micros uint32) time.Duration {
	total := time.Duration(micros) * time.Microsecond
	if micros == 0 || total > f.s.cfg.Timeout {
		total = f.s.cfg.Timeout
	}
	return total
}

// rewriteRequest adds the request to the forward batch with this hop's ID
// appended to its path (or replacing it, with --remove-perf-headers).
func (f *forwarder) rewriteRequest(fr []byte, v *frame.View, nextBudget uint32) {
	tailEnd := v.MACOff
	p := v.Probe
	if f.s.cfg.RemovePerfHeaders {
		tailEnd = v.TailOff
		p.Count = 0
		p.Flags |= frame.ProbeStripped
	}
	p.Count++
	p.BudgetMicros = nextBudget
	frame.PutProbeHeader(fr[frame.HeaderLen:], p)
	frame.PutHeader(fr, frame.Header{Kind: v.Header.Kind, Flags: f.fwdSign.HeaderFlags(),
		Length: uint32(tailEnd - frame.HeaderLen + frame.PathEntryLen + f.fwdSign.TrailerLen())})
	b := &f.fwd
	b.frameBytes(fr[:tailEnd])
	off := len(b.scratch)
	b.scratch = append(b.scratch, f.s.idBytes[:]...)
	b.scratch = append(b.scratch, f.fwdSign.Sign(fr[:tailEnd], f.s.idBytes[:])...)
	b.scratchFrom(off)
}

// answer queues an answer this hop gives itself, in order with the replies
// in flight; false ends the session.
func (f *forwarder) answer(ctx context.Context, e inflight, ans *localAnswer) bool {
	f.s.metrics.Failed(ans.reason)
	if f.ring == nil {
		f.answerDirect(e, ans)
		return !ans.fatal
	}
	if f.pending == f.ring.free() {
		if !f.flush() || !f.ring.waitFree(ctx) {
			return false
		}
	}
	e.local = ans
	*f.ring.slot(f.pending) = e
	f.pending++
	if ans.fatal {
		f.flush()
		return false
	}
	return true
}

// answerDirect writes an answer while no return goroutine exists yet.
func (f *forwarder) answerDirect(e inflight, ans *localAnswer) {
	e.tOut = f.clock().Monotonic()
	var b batch
	appendLocalAnswer(f.s, &b, &f.hop, &e, ans, f.fwdSign, f.clock().Monotonic())
	if _, err := b.write(f.up, f.s.cfg.Timeout); err != nil {
		f.s.log.Debug("cannot answer upstream", "peer", f.up.RemoteAddr(), "err", err)
	}
	f.s.metrics.Relayed(e.kind.ReplyKind(), false)
}

func (f *forwarder) dial(ctx context.Context, limit time.Duration) (net.Conn, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, min(limit, f.s.cfg.Timeout))
	defer cancel()
	start := f.clock().Monotonic()
	conn, err := f.s.cfg.Dial(ctx, f.s.cfg.ForwardTo)
	if err != nil {
		return nil, 0, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return conn, time.Duration(f.clock().Monotonic() - start), nil
}

func (f *forwarder) startReturn(ctx context.Context, conn net.Conn, kind frame.Kind) {
	f.down = conn
	f.downR = frame.NewReader(conn, f.s.cfg.MaxFrameBytes)
	f.tcp, _ = tcpinfo.NewReader(conn)
	size := inflightProbe
	if kind == frame.KindStreamRequest {
		size = inflightStream
	}
	f.ring = newRing(size)
	f.retDone = make(chan struct{})
	go f.returnLoop(ctx)
}

// flush stamps request-out, publishes the batch's ring entries and writes
// the batch downstream; false ends the session.
func (f *forwarder) flush() bool {
	if f.pending == 0 && f.fwd.empty() {
		return true
	}
	tOut := f.clock().Monotonic()
	for k := 0; k < f.pending; k++ {
		f.ring.slot(k).tOut = tOut
	}
	f.ring.publish(f.pending)
	f.pending = 0
	if f.fwd.empty() {
		return true
	}
	if _, err := f.fwd.write(f.down, f.s.cfg.Timeout); err != nil {
		// Leave the failure to the return goroutine, which answers every
		// published entry; closing the downstream wakes it up.
		werr := fmt.Errorf("write to %s: %w", f.s.cfg.ForwardTo, err)
		f.downErr.Store(&werr)
		f.down.Close()
		return false
	}
	return true
}

// returnLoop writes the reply of every published entry upstream, in order.
func (f *forwarder) returnLoop(ctx context.Context) {
	defer close(f.retDone)
	var broken *localAnswer
	var tReplyIn int64
	var tcp frame.TCPInfo
	var hasTCP bool
	for {
		e := f.ring.peekReady()
		if e == nil {
			if !f.flushReturn() {
				f.fail()
				return
			}
			if e = f.ring.peek(ctx); e == nil {
				return
			}
		}
		if e.local != nil || broken != nil {
			ans := e.local
			if ans == nil {
				ans = broken
				f.s.metrics.Failed(ans.reason)
			}
			f.replies = append(f.replies, pendingReply{e: *e, local: ans})
			f.ring.pop()
			if ans.fatal && e.local != nil {
				f.flushReturn()
				f.fail()
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
			err = f.down.SetReadDeadline(time.Now().Add(time.Duration(e.waitUntil - f.clock().Monotonic())))
			if err == nil {
				err = f.downR.Fill()
			}
			if err == nil {
				tReplyIn = f.clock().Monotonic()
				tcp, hasTCP = f.readTCP()
				fr, err = f.downR.Next()
			}
		}
		if err != nil {
			broken = f.downstreamFailure(err, e)
			f.down.Close()
			continue
		}
		r := pendingReply{e: *e, frame: fr, tReplyIn: tReplyIn, tcp: tcp, hasTCP: hasTCP}
		if ans := f.checkReply(&r); ans != nil {
			broken = ans
			f.down.Close()
			if r.downErr == nil {
				continue
			}
		}
		f.replies = append(f.replies, r)
		f.ring.pop()
	}
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

// checkReply validates a downstream frame against the entry it answers; a
// non-nil answer means the downstream is unusable from here on.
func (f *forwarder) checkReply(r *pendingReply) *localAnswer {
	bad := func(err error) *localAnswer {
		f.s.log.Debug("bad frame from next hop", "next", f.s.cfg.ForwardTo, "err", err)
		return &localAnswer{reason: Classify(err), side: frame.SideDownstream, peer: f.s.nextName(),
			message: fmt.Sprintf("%s got a bad reply from %s: %v", f.s.cfg.Name, f.s.cfg.ForwardTo, err)}
	}
	if err := f.retSign.Verify(r.frame); err != nil {
		if rec, perr := frame.ParseErrorFrame(r.frame, f.s.cfg.MaxFrameBytes); perr == nil {
			// The next hop refused us and signs with another key (or none).
			return &localAnswer{reason: frame.ReasonAuth, side: frame.SideDownstream, peer: rec.Name,
				message: fmt.Sprintf("%s: %v; the unverified error frame from %s said: %s", f.s.cfg.Name, err, rec.Name, rec.Message)}
		}
		return bad(err)
	}
	h, _ := frame.ParseHeader(r.frame, f.s.cfg.MaxFrameBytes)
	if h.Kind == frame.KindError {
		rec, err := frame.ParseErrorFrame(r.frame, f.s.cfg.MaxFrameBytes)
		if err != nil {
			return bad(err)
		}
		end := h.FrameLen()
		if h.Signed() {
			end -= frame.MACLen
		}
		r.downErr = r.frame[frame.HeaderLen:end]
		r.frame = nil
		return &localAnswer{reason: rec.Reason, side: frame.SideDownstream, peer: rec.Name,
			message: fmt.Sprintf("%s refused an earlier frame from %s: %s", rec.Name, f.s.cfg.Name, rec.Message)}
	}
	v, err := frame.Parse(r.frame, f.s.cfg.MaxFrameBytes, frame.MaxHopsLimit)
	if err != nil {
		return bad(err)
	}
	if v.Header.Kind != r.e.kind.ReplyKind() || v.Probe.Seq != r.e.seq {
		return bad(fmt.Errorf("%w: %s seq %d does not answer %s seq %d", frame.ErrMalformed, v.Header.Kind, v.Probe.Seq, r.e.kind, r.e.seq))
	}
	if int(v.Probe.Count)+2 > frame.MaxHopsLimit {
		return bad(fmt.Errorf("%w: reply already holds %d records", frame.ErrTooManyHops, v.Probe.Count))
	}
	r.view = v
	f.s.learnNextName(v.Tail(r.frame), int(v.Probe.Count))
	return nil
}

// downstreamFailure turns a failed downstream read into the answer every
// remaining entry gets.
func (f *forwarder) downstreamFailure(err error, e *inflight) *localAnswer {
	if werr := f.downErr.Load(); werr != nil {
		err = *werr
	}
	reason := Classify(err)
	msg := fmt.Sprintf("%s lost %s: %v", f.s.cfg.Name, f.s.cfg.ForwardTo, err)
	if reason == frame.ReasonTimeout {
		msg = fmt.Sprintf("%s got no reply from %s within %s", f.s.cfg.Name, f.s.cfg.ForwardTo,
			time.Duration(e.waitUntil-e.tOut).Round(time.Millisecond))
	}
	if reason == frame.ReasonUnknown {
		reason = frame.ReasonReset
	}
	f.s.log.Debug("next hop failed", "next", f.s.cfg.ForwardTo, "reason", reason, "err", err)
	return &localAnswer{reason: reason, side: frame.SideDownstream, peer: f.s.nextName(), message: msg}
}

func (f *forwarder) readTCP() (frame.TCPInfo, bool) {
	if f.tcp == nil {
		return frame.TCPInfo{}, false
	}
	info, err := f.tcp.Read()
	return info, err == nil
}

// flushReturn stamps reply-out, builds every pending reply and writes them
// upstream in one writev; false when upstream is gone.
func (f *forwarder) flushReturn() bool {
	if len(f.replies) == 0 {
		return true
	}
	tOut := f.clock().Monotonic()
	b := &f.ret
	for i := range f.replies {
		r := &f.replies[i]
		if r.local != nil {
			appendLocalAnswer(f.s, b, &f.hop, &r.e, r.local, f.retSign, tOut)
			continue
		}
		f.fillHop(r, tOut)
		if r.downErr != nil {
			f.appendErrorReply(r)
			continue
		}
		f.appendReply(r)
	}
	n := len(f.replies)
	clear(f.replies)
	f.replies = f.replies[:0]
	if _, err := b.write(f.up, f.s.cfg.Timeout); err != nil {
		f.s.log.Debug("cannot write replies upstream", "peer", f.up.RemoteAddr(), "replies", n, "err", err)
		return false
	}
	return true
}

// fillHop sets this hop's record for a downstream reply.
func (f *forwarder) fillHop(r *pendingReply, tOut int64) {
	h := &f.hop
	fillCommon(f.s, h, &r.e)
	h.Forward = time.Duration(r.e.tOut - r.e.tIn)
	h.Downstream = time.Duration(r.tReplyIn - r.e.tOut)
	h.Return = time.Duration(tOut - r.tReplyIn)
	if r.hasTCP {
		h.Flags |= frame.RecTCPInfo
		h.TCP = r.tcp
	}
	if f.s.cfg.RemovePerfHeaders {
		h.Flags |= frame.RecStripped
	}
	f.s.metrics.Residence(h.Forward + h.Return)
}

// appendReply adds a downstream reply with this hop's record prepended to
// its records (or replacing them, with --remove-perf-headers).
func (f *forwarder) appendReply(r *pendingReply) {
	fr, v := r.frame, &r.view
	b := &f.ret
	recs := fr[v.TailOff:v.MACOff]
	p := v.Probe
	if f.s.cfg.RemovePerfHeaders {
		recs = nil
		p.Count = 0
		p.Flags |= frame.ProbeStripped
	}
	recOff := len(b.scratch)
	b.scratch = frame.AppendHop(b.scratch, &f.hop)
	rec := b.scratch[recOff:]
	p.Count++
	frame.PutProbeHeader(fr[frame.HeaderLen:], p)
	frame.PutHeader(fr, frame.Header{Kind: v.Header.Kind, Flags: f.retSign.HeaderFlags(),
		Length: uint32(v.TailOff - frame.HeaderLen + len(rec) + len(recs) + f.retSign.TrailerLen())})
	b.frameBytes(fr[:v.TailOff])
	b.scratchFrom(recOff)
	b.frameBytes(recs)
	macOff := len(b.scratch)
	b.scratch = append(b.scratch, f.retSign.Sign(fr[:v.TailOff], rec, recs)...)
	b.scratchFrom(macOff)
	f.s.metrics.Relayed(v.Header.Kind, true)
	if v.Header.Kind == frame.KindStreamReply {
		f.s.metrics.StreamBytes(int(v.Probe.DataLen))
	}
}

// appendErrorReply answers an entry whose request the next hop refused:
// this hop's record followed by the next hop's error record.
func (f *forwarder) appendErrorReply(r *pendingReply) {
	b := &f.ret
	start := len(b.scratch)
	b.scratch = append(b.scratch, make([]byte, frame.MinFrameLen)...)
	b.scratch = frame.AppendHop(b.scratch, &f.hop)
	b.scratch = append(b.scratch, r.downErr...)
	finishLocalFrame(b, start, r.e.kind.ReplyKind(), frame.ProbeHeader{Seq: r.e.seq, Flags: r.e.pflags, Count: 2}, f.retSign)
	f.s.metrics.Relayed(r.e.kind.ReplyKind(), false)
}

// appendLocalAnswer adds an answer this hop gives itself: a reply holding
// its record and an error record, or an error frame for frames it could
// not trust.
func appendLocalAnswer(s *Server, b *batch, h *frame.HopRecord, e *inflight, ans *localAnswer, sign *frame.Signer, tOut int64) {
	er := frame.ErrorRecord{ID: s.id, Name: s.cfg.Name, Peer: ans.peer, Reason: ans.reason, Side: ans.side, Message: ans.message}
	start := len(b.scratch)
	if ans.errorFrame {
		b.scratch = frame.AppendErrorFrame(b.scratch, &er, sign)
		b.scratchFrom(start)
		return
	}
	fillCommon(s, h, e)
	h.Forward = time.Duration(tOut - e.tIn)
	h.Downstream, h.Return = 0, 0
	b.scratch = append(b.scratch, make([]byte, frame.MinFrameLen)...)
	b.scratch = frame.AppendHop(b.scratch, h)
	b.scratch = frame.AppendError(b.scratch, &er)
	finishLocalFrame(b, start, e.kind.ReplyKind(), frame.ProbeHeader{Seq: e.seq, Flags: e.pflags, Count: 2}, sign)
	s.metrics.Relayed(e.kind.ReplyKind(), false)
}

// finishLocalFrame fills in the header of a frame built in scratch from
// start, signs it and adds it to the batch.
func finishLocalFrame(b *batch, start int, kind frame.Kind, p frame.ProbeHeader, sign *frame.Signer) {
	fr := b.scratch[start:]
	frame.PutHeader(fr, frame.Header{Kind: kind, Flags: sign.HeaderFlags(), Length: uint32(len(fr) - frame.HeaderLen + sign.TrailerLen())})
	frame.PutProbeHeader(fr[frame.HeaderLen:], p)
	b.scratch = append(b.scratch, sign.Sign(b.scratch[start:])...)
	b.scratchFrom(start)
}

// fillCommon sets the record fields every answer of this hop shares.
func fillCommon(s *Server, h *frame.HopRecord, e *inflight) {
	*h = frame.HopRecord{ID: s.id, Name: s.cfg.Name, WallIn: e.wallIn,
		EstErrorMicros: e.sync.EstErrorMicros, MaxErrorMicros: e.sync.MaxErrorMicros}
	if e.sync.Synced {
		h.Flags |= frame.RecSynced
	}
	if e.dialed {
		h.Flags |= frame.RecDialed
		h.Connect = time.Duration(e.connect)
	}
	if e.pflags&frame.ProbeAnnotate != 0 && s.cfg.Annotate != nil {
		h.Vars = s.cfg.Annotate()
	}
}

// checkPath refuses requests that looped back to this hop or went through
// too many hops; it returns nil for requests that may go on.
func (s *Server) checkPath(v frame.View, fr []byte, up net.Conn) *localAnswer {
	if frame.PathContains(v.Tail(fr), s.id) {
		return &localAnswer{reason: frame.ReasonLoop, side: frame.SideUpstream, peer: up.RemoteAddr().String(),
			message: fmt.Sprintf("%s received a probe that already passed through it (forwarding loop; check --forward-to along the chain)", s.cfg.Name)}
	}
	if int(v.Probe.Count) >= s.cfg.MaxHops {
		return &localAnswer{reason: frame.ReasonTooManyHops, side: frame.SideUpstream, peer: up.RemoteAddr().String(),
			message: fmt.Sprintf("%s received a probe that already passed %d hops (limit --relay.max-hops=%d)", s.cfg.Name, v.Probe.Count, s.cfg.MaxHops)}
	}
	return nil
}

// nextName is the next hop's name as its last reply gave it, else its address.
func (s *Server) nextName() string {
	if v, ok := s.downName.Load(s.cfg.ForwardTo); ok {
		return v.(string)
	}
	return s.cfg.ForwardTo
}

// learnNextName remembers the name in the first record of a reply, the
// next hop's, so that a later failure can name it.
func (s *Server) learnNextName(tail []byte, count int) {
	if count == 0 {
		return
	}
	name, ok := frame.FirstHopName(tail)
	if !ok {
		return
	}
	if v, ok := s.downName.Load(s.cfg.ForwardTo); ok && v.(string) == string(name) {
		return
	}
	s.downName.Store(s.cfg.ForwardTo, string(name))
}

func closeWrite(c net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.(closeWriter); ok {
		_ = cw.CloseWrite()
		return
	}
	c.Close()
}
