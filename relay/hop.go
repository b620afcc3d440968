package relay

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
)

// hopState is one upstream session of a hop, whichever engine drives it:
// the frames it has in flight, the batches it writes, and the protocol
// rules. Engines (the epoll loop, the goroutine pair for TLS) only move
// bytes and time; every decision about a frame is made here.
type hopState struct {
	s      *Server
	upPeer string
	ring   *ring

	fwdSign *frame.Signer
	retSign *frame.Signer
	fwd     batch // requests going downstream
	ret     batch // replies going upstream
	pending int   // filled, unpublished ring slots of the current forward batch
	replies []pendingReply
	echoes  []echoReply

	hop frame.HopRecord // scratch record, reused
	adm *admission      // marked proven at the first valid frame
	// upReader reads the upstream; proven (frame.Reader.Prove) at the
	// first valid frame, when its buffer leaves the budget's unproven share.
	upReader *frame.Reader
	tcp      tcpView
	traceState
	// lastOut is request-out of the latest forwarded batch.
	lastOut int64
	// pend are the metrics of the replies being built, recorded once
	// they are written: off the reply's way.
	pend []metricEvent
}

// metricEvent is what one answer adds to the relay's metrics.
type metricEvent struct {
	kind            frame.Kind
	ok, hop         bool
	residence, wait time.Duration // when hop: this hop's record
	stream          int           // stream bytes relayed back
}

// tcpView is the kernel's view of the session's two connections: the
// downstream one (this hop is the near end of the segment after it) and
// the upstream one (the far end of the segment before it). A reply
// carries a reading at most tcpInfoEvery old. A relay reads right after
// it forwarded a request, while the request and its reply are on the
// wire: the reply then carries a reading taken during its own round
// trip, at no cost to it. The end host has no such moment (its answer
// follows the request at once); it, and a relay whose reading grew older
// than tcpInfoEvery meanwhile, read while the reply is built. The
// goroutine engine reads and uses it from two goroutines: mu guards the
// reading.
type tcpView struct {
	mu             sync.Mutex
	down, up       tcpinfo.Info
	hasDown, hasUp bool
	read           bool
	at             int64
	readDown       func() (tcpinfo.Info, error)
	readUp         func() (tcpinfo.Info, error)
}

// tcpInfoEvery bounds how often a session reads TCP_INFO, so that a
// burst of frames does not pay two syscalls each. Probes sent at the
// usual intervals (50 ms and more) each get a fresh read.
const tcpInfoEvery = int64(5 * time.Millisecond)

// refresh reads both connections' TCP_INFO unless the last reading is
// more recent than tcpInfoEvery.
func (t *tcpView) refresh(now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.read && now-t.at < tcpInfoEvery {
		return
	}
	t.read, t.at = true, now
	if t.readDown != nil {
		info, err := t.readDown()
		t.down, t.hasDown = info, err == nil
	}
	if t.readUp != nil {
		info, err := t.readUp()
		t.up, t.hasUp = info, err == nil
	}
}

// reading is the latest reading, renewed first when it is older than
// tcpInfoEvery (or there is none yet).
func (t *tcpView) reading(now int64) tcpReading {
	t.refresh(now)
	t.mu.Lock()
	defer t.mu.Unlock()
	return tcpReading{down: t.down, up: t.up, hasDown: t.hasDown, hasUp: t.hasUp}
}

// dropDown forgets the downstream connection, which is gone.
func (t *tcpView) dropDown() {
	t.mu.Lock()
	t.readDown, t.hasDown = nil, false
	t.mu.Unlock()
}

// tcpReading is what a reply's records carry of tcpView.
type tcpReading struct {
	down, up       tcpinfo.Info
	hasDown, hasUp bool
}

// pendingReply is a reply waiting for the batch write that stamps reply-out.
type pendingReply struct {
	e     inflight
	frame []byte // the downstream reply as received; nil for local answers
	view  frame.View
	// rx is when the kernel received the reply (reply-in).
	rx rxstamp.Stamp
	// downErr is the error record of a KindError frame from downstream.
	downErr []byte
	local   *localAnswer
	// spliced is how much of the reply's data is in the return pipe (the
	// frame is then its stub); with dropOnly the entry only discards it:
	// the reply was refused.
	spliced  int
	dropOnly bool
}

// echoReply is a request the end host answers in the next batch.
type echoReply struct {
	frame []byte
	view  frame.View
	e     inflight
	local *localAnswer
	// spliced is how much of the request's data is in the pipe.
	spliced int
}

func (h *hopState) init(s *Server, upPeer string) {
	h.s = s
	h.upPeer = upPeer
	// The session's keys follow the ring: a reload that drops a key
	// revokes it on this connection too (frame.Signer.Follow, at each
	// frame read and each batch built). The forward signer belongs to
	// whoever reads upstream, the return signer to whoever writes there.
	h.fwdSign = s.cfg.KeyRing.Signer()
	h.retSign = s.cfg.KeyRing.Signer()
}

func (h *hopState) now() int64 { return h.s.cfg.Clock.Monotonic() }

// startRing creates the in-flight ring when the first frame shows what the
// session carries.
func (h *hopState) startRing(kind frame.Kind) {
	size := inflightProbe
	if kind == frame.KindStreamRequest {
		size = inflightStream
	}
	h.ring = newRing(size)
}

// newEntry is the inflight entry of a request received at rx.
func newEntry(rx rxstamp.Stamp) inflight {
	return inflight{tIn: rx.At, waitIn: rx.Wait, kernelIn: rx.Kernel}
}

// classify checks one request frame received at rx. It returns the frame's
// inflight entry and view, and an answer when the hop must answer it
// itself instead of forwarding it: fatal ones (an untrusted frame) end the
// session.
func (h *hopState) classify(fr []byte, rx rxstamp.Stamp, wall int64, sync clock.Sync) (inflight, frame.View, *localAnswer) {
	e := newEntry(rx)
	h.fwdSign.Follow()
	if err := h.fwdSign.Verify(fr); err != nil {
		return e, frame.View{}, h.reject(err)
	}
	v, err := frame.Parse(fr, h.s.cfg.MaxFrameBytes, frame.MaxHopsLimit)
	if err == nil && !v.Header.Kind.IsRequest() {
		err = fmt.Errorf("%w: %s from upstream, expected a request", frame.ErrMalformed, v.Header.Kind)
	}
	if err != nil {
		return e, frame.View{}, h.reject(err)
	}
	if h.adm != nil && !h.adm.proven.Load() {
		h.s.settle(h.adm)
	}
	if h.upReader != nil {
		h.upReader.Prove()
	}
	// The wall clock at request-in: read right after the read, moved
	// back by the time from the kernel's receipt to the read.
	e.seq, e.kind, e.pflags, e.wallIn, e.sync = v.Probe.Seq, v.Header.Kind, v.Probe.Flags, wall-int64(rx.Wait), sync
	e.budget = h.budget(v.Probe.BudgetMicros)
	e.waitUntil = e.tIn + int64(e.budget)*15/16
	if ans := h.s.checkPath(v, fr, h.upPeer); ans != nil {
		h.s.metrics.Failed(ans.reason)
		return e, v, ans
	}
	return e, v, nil
}

// queueEchoes turns every complete request buffered in r into an answer
// of the end host, all received at rx. It reports whether the session
// must end (an untrusted or unparsable frame); the answers queued so far,
// its error frame included, are still to be sent.
func (h *hopState) queueEchoes(r *frame.Reader, rx rxstamp.Stamp) (stop bool) {
	wall, sync := h.s.cfg.Clock.Wall(), h.s.cfg.Clock.Sync()
	for {
		fr, err := r.Next()
		if err != nil {
			h.echoes = append(h.echoes, echoReply{e: newEntry(rx), local: h.reject(err)})
			return true
		}
		if fr == nil {
			return false
		}
		e, v, ans := h.classify(fr, rx, wall, sync)
		h.echoes = append(h.echoes, echoReply{frame: fr, view: v, e: e, local: ans, spliced: r.Spliced()})
		if ans != nil && ans.fatal {
			return true
		}
	}
}

// reject is the answer to a frame that cannot be trusted or parsed: an
// error frame, after which the session ends (its stream position is lost).
func (h *hopState) reject(err error) *localAnswer {
	s := h.s
	reason := peer.Classify(err)
	if reason == peer.ReasonUnknown || reason == peer.ReasonClosed {
		reason = peer.ReasonBadFrame
	}
	s.metrics.Failed(reason)
	msg := fmt.Sprintf("%s refused a frame from %s: %v", s.cfg.Name, h.upPeer, err)
	switch {
	case errors.Is(err, frame.ErrTooLarge):
		msg = fmt.Sprintf("%s refuses frames over %d bytes (its --relay.max-frame-bytes): %v; raise it on %s, or send smaller blocks", s.cfg.Name, s.cfg.MaxFrameBytes, err, s.cfg.Name)
	case errors.Is(err, frame.ErrBudget):
		msg = fmt.Sprintf("%s cannot take a large frame now: %v (--relay.buffer-budget-bytes); try again, or raise the budget", s.cfg.Name, err)
	}
	if s.warned.allow(time.Minute) {
		s.log.Warn("refusing a frame from upstream (more such refusals this minute are logged at debug level)", "peer", h.upPeer, "reason", reason, "err", err)
	} else {
		s.log.Debug("refusing a frame from upstream", "peer", h.upPeer, "reason", reason, "err", err)
	}
	return &localAnswer{reason: reason, side: frame.SideUpstream, peer: h.upPeer, message: msg, fatal: true, errorFrame: true}
}

// dialFailed is the answer when the next hop cannot be reached.
func (h *hopState) dialFailed(err error) *localAnswer {
	s := h.s
	reason := peer.ClassifyOr(err, peer.ReasonUnreachable)
	s.metrics.Failed(reason)
	s.log.Debug("cannot reach next hop", "next", s.cfg.ForwardTo, "reason", reason, "err", err)
	return &localAnswer{reason: reason, side: frame.SideDownstream, peer: s.nextName(),
		message: fmt.Sprintf("%s cannot reach %s: %v", s.cfg.Name, s.cfg.ForwardTo, err), fatal: true}
}

// budget is how long this hop may take to reply: what the request allows,
// but never more than this hop's own --timeout.
func (h *hopState) budget(micros uint32) time.Duration {
	total := time.Duration(micros) * time.Microsecond
	if micros == 0 || total > h.s.cfg.Timeout {
		total = h.s.cfg.Timeout
	}
	return total
}

// roomInRing reports whether one more entry fits in the ring.
func (h *hopState) roomInRing() bool { return h.pending < h.ring.free() }

// enqueueForward adds a request to the forward batch with this hop's ID
// appended to its path (or replacing it, with --remove-perf-headers). The
// caller checked roomInRing. A request whose data is in the pipe
// (spliced bytes; fr is its stub) gets it back between its probe header
// and its path; it is never signed (frame.Sink).
func (h *hopState) enqueueForward(e inflight, fr []byte, v *frame.View, spliced int) {
	*h.ring.slot(h.pending) = e
	h.pending++
	if e.pflags&frame.ProbeTrace != 0 {
		h.traceFlags(&e)
	}
	tailEnd := v.MACOff
	p := v.Probe
	if h.s.cfg.RemovePerfHeaders {
		tailEnd = v.TailOff
		p.Count = 0
		// No trace beyond the boundary: its paths would be removed.
		p.Flags = p.Flags&^(frame.ProbeTrace|frame.ProbePath) | frame.ProbeStripped
	}
	p.Count++
	p.BudgetMicros = uint32(max(e.budget*7/8/time.Microsecond, 1))
	p.DataLen += uint32(spliced)
	frame.PutProbeHeader(fr[frame.HeaderLen:], p)
	frame.PutHeader(fr, frame.Header{Kind: v.Header.Kind, Flags: h.fwdSign.HeaderFlags(),
		Length: uint32(tailEnd - frame.HeaderLen + spliced + frame.PathEntryLen + h.fwdSign.TrailerLen())})
	b := &h.fwd
	b.frameWithPiped(fr[:tailEnd], v.DataOff, spliced)
	off := len(b.scratch)
	b.scratch = append(b.scratch, h.s.idBytes[:]...)
	b.scratch = append(b.scratch, h.fwdSign.Sign(fr[:tailEnd], h.s.idBytes[:])...)
	b.scratchFrom(off)
}

// enqueueLocal queues an answer this hop gives itself, in order with the
// replies in flight. The caller checked roomInRing.
func (h *hopState) enqueueLocal(e inflight, ans *localAnswer) {
	e.local = ans
	*h.ring.slot(h.pending) = e
	h.pending++
}

// publish stamps request-out on the batch's entries and hands them to the
// return side. It reports whether the ring was empty before (the first
// entry is the new oldest one), whether an entry is a local answer, and
// the first entry's deadline.
func (h *hopState) publish() (wasEmpty, local bool, firstWait int64) {
	if h.pending == 0 {
		return false, false, 0
	}
	tOut := h.now()
	h.lastOut = tOut
	wasEmpty = h.ring.empty()
	for k := 0; k < h.pending; k++ {
		e := h.ring.slot(k)
		e.tOut = tOut
		local = local || e.local != nil
	}
	firstWait = h.ring.slot(0).waitUntil
	h.ring.publish(h.pending)
	h.pending = 0
	return wasEmpty, local, firstWait
}

// takeHead moves the oldest entry into the replies as an answer this hop
// gives itself (its own local answer, or broken when the downstream
// failed). It reports whether the answer ends the session.
func (h *hopState) takeHead(e *inflight, broken *localAnswer) bool {
	ans := e.local
	if ans == nil {
		ans = broken
		h.s.metrics.Failed(ans.reason)
	}
	h.replies = append(h.replies, pendingReply{e: *e, local: ans})
	h.ring.pop()
	return ans.fatal && e.local != nil
}

// takeReply matches a downstream frame, received at rx, with the oldest
// entry; spliced of its data bytes are in the return pipe. A non-nil
// answer means the downstream is unusable from here on; the frame still
// answered the entry when it was an error frame.
func (h *hopState) takeReply(e *inflight, fr []byte, rx rxstamp.Stamp, spliced int) (broken *localAnswer) {
	r := pendingReply{e: *e, frame: fr, rx: rx, spliced: spliced}
	if ans := h.checkReply(&r); ans != nil {
		if r.downErr == nil {
			if spliced > 0 {
				// Refused: its data leaves the pipe, in order.
				h.replies = append(h.replies, pendingReply{spliced: spliced, dropOnly: true})
			}
			return ans
		}
		broken = ans
	}
	h.replies = append(h.replies, r)
	h.ring.pop()
	return broken
}

// checkReply accepts a downstream frame as the answer to its entry, by the
// rules every receiver of replies applies (frame.CheckReply).
func (h *hopState) checkReply(r *pendingReply) *localAnswer {
	s := h.s
	h.retSign.Follow()
	rep, err := frame.CheckReply(r.frame, h.retSign, s.cfg.MaxFrameBytes, frame.Expect{Request: r.e.kind, Seq: r.e.seq})
	if rec := rep.Refusal; rec != nil {
		if rep.Unverified {
			// The next hop refused us and signs with another key (or none).
			return &localAnswer{reason: peer.ReasonAuth, side: frame.SideDownstream, peer: rec.Name,
				message: fmt.Sprintf("%s: %v; the unverified error frame from %s said: %s", s.cfg.Name, err, rec.Name, rec.Message)}
		}
		r.downErr = frame.ErrorRecordBytes(r.frame)
		r.frame = nil
		return &localAnswer{reason: rec.Reason, side: frame.SideDownstream, peer: rec.Name,
			message: fmt.Sprintf("%s refused an earlier frame from %s: %s", rec.Name, s.cfg.Name, rec.Message)}
	}
	if err == nil && int(rep.View.Probe.Count)+2 > frame.MaxHopsLimit {
		err = fmt.Errorf("%w: reply already holds %d records", frame.ErrTooManyHops, rep.View.Probe.Count)
	}
	if err != nil {
		if s.warned.allow(time.Minute) {
			s.log.Warn("refusing a bad reply from the next hop (more this minute are logged at debug level)", "next", s.cfg.ForwardTo, "err", err)
		} else {
			s.log.Debug("refusing a bad reply from the next hop", "next", s.cfg.ForwardTo, "err", err)
		}
		return &localAnswer{reason: peer.ClassifyOr(err, peer.ReasonBadFrame), side: frame.SideDownstream, peer: s.nextName(),
			message: fmt.Sprintf("%s got a bad reply from %s: %s", s.cfg.Name, s.cfg.ForwardTo, positioned(err, s.cfg.Name))}
	}
	r.view = rep.View
	s.learnNextName(r.view.Tail(r.frame), int(r.view.Probe.Count))
	return nil
}

// positioned says which hop a refused record belongs to, counted from the
// hop that refused it.
func positioned(err error, self string) string {
	var br *frame.BadRecord
	if errors.As(err, &br) {
		return fmt.Sprintf("the record of hop %d after %s: %v", br.Index+1, self, br.Err)
	}
	return err.Error()
}

// downstreamFailure turns a failed downstream read or write into the
// answer every remaining entry gets; e is the oldest entry, if any.
func (h *hopState) downstreamFailure(err error, e *inflight) *localAnswer {
	s := h.s
	reason := peer.ClassifyOr(err, peer.ReasonReset)
	msg := fmt.Sprintf("%s lost %s: %v", s.cfg.Name, s.cfg.ForwardTo, err)
	if reason == peer.ReasonTimeout && e != nil {
		msg = fmt.Sprintf("%s got no reply from %s within %s", s.cfg.Name, s.cfg.ForwardTo,
			time.Duration(e.waitUntil-e.tOut).Round(time.Millisecond))
	}
	s.log.Debug("next hop failed", "next", s.cfg.ForwardTo, "reason", reason, "err", err)
	return &localAnswer{reason: reason, side: frame.SideDownstream, peer: s.nextName(), message: msg}
}

// buildReplies stamps reply-out and turns every pending reply into
// pieces of the return batch, with the connections' latest TCP_INFO; the
// engine writes the batch, then the metrics (emitMetrics).
func (h *hopState) buildReplies() int {
	n := len(h.replies)
	if n == 0 {
		return 0
	}
	tOut := h.now()
	tcp := h.tcp.reading(tOut)
	h.retSign.Follow()
	for i := range h.replies {
		r := &h.replies[i]
		if r.dropOnly {
			h.ret.dropPiped(r.spliced)
			continue
		}
		if r.local != nil {
			h.appendLocalAnswer(&r.e, r.local, tOut, &tcp)
			continue
		}
		h.fillHop(r, tOut, &tcp)
		if r.downErr != nil {
			h.appendErrorReply(r)
			continue
		}
		h.appendReply(r)
	}
	clear(h.replies)
	h.replies = h.replies[:0]
	return n
}

// fillHop sets this hop's record for a downstream reply.
func (h *hopState) fillHop(r *pendingReply, tOut int64, tcp *tcpReading) {
	rec := &h.hop
	h.fillCommon(rec, &r.e, r.e.tOut, tcp)
	// Reply-in lies between request-out and reply-out; the clamps absorb
	// the sub-microsecond error of moving a kernel stamp between clocks.
	replyIn := min(max(r.rx.At, r.e.tOut), tOut)
	rec.Downstream = time.Duration(replyIn - r.e.tOut)
	rec.Return = time.Duration(tOut - replyIn)
	rec.WaitReturn = min(r.rx.Wait, rec.Return)
	if r.rx.Kernel {
		rec.Flags |= frame.RecKernelReply
	}
	if tcp.hasDown {
		rec.Flags |= frame.RecTCPInfo
		rec.TCP = tcp.down
	}
	if h.s.cfg.RemovePerfHeaders {
		rec.Flags |= frame.RecStripped
	}
	if r.e.pflags&(frame.ProbeTrace|frame.ProbePath) != 0 {
		rec.Path = h.pathFor(&r.e)
	}
}

// count records an answer for the metrics, emitted once it is written;
// rec is this hop's record of it (nil for an error frame).
func (h *hopState) count(kind frame.Kind, ok bool, rec *frame.HopRecord, stream int) {
	ev := metricEvent{kind: kind, ok: ok, stream: stream}
	if rec != nil {
		ev.hop, ev.residence, ev.wait = true, rec.Forward+rec.Return, rec.WaitForward+rec.WaitReturn
	}
	h.pend = append(h.pend, ev)
}

// emitMetrics hands the metrics of the answers just written to the relay.
func (h *hopState) emitMetrics() {
	m := h.s.metrics
	for i := range h.pend {
		ev := &h.pend[i]
		if ev.hop {
			m.Residence(ev.residence)
			m.Wait(ev.wait)
		}
		m.Relayed(ev.kind, ev.ok)
		if ev.stream > 0 {
			m.StreamBytes(ev.stream)
		}
	}
	h.pend = h.pend[:0]
}

// appendReply adds a downstream reply with this hop's record prepended to
// its records (or replacing them, with --remove-perf-headers).
func (h *hopState) appendReply(r *pendingReply) {
	fr, v := r.frame, &r.view
	b := &h.ret
	recs := fr[v.TailOff:v.MACOff]
	p := v.Probe
	if h.s.cfg.RemovePerfHeaders {
		recs = nil
		p.Count = 0
		p.Flags |= frame.ProbeStripped
	}
	recOff := len(b.scratch)
	b.scratch = frame.AppendHop(b.scratch, &h.hop)
	rec := b.scratch[recOff:]
	p.Count++
	p.DataLen += uint32(r.spliced)
	frame.PutProbeHeader(fr[frame.HeaderLen:], p)
	frame.PutHeader(fr, frame.Header{Kind: v.Header.Kind, Flags: h.retSign.HeaderFlags(),
		Length: uint32(v.TailOff - frame.HeaderLen + r.spliced + len(rec) + len(recs) + h.retSign.TrailerLen())})
	b.frameWithPiped(fr[:v.TailOff], v.DataOff, r.spliced)
	b.scratchFrom(recOff)
	b.frameBytes(recs)
	macOff := len(b.scratch)
	b.scratch = append(b.scratch, h.retSign.Sign(fr[:v.TailOff], rec, recs)...)
	b.scratchFrom(macOff)
	stream := 0
	if v.Header.Kind == frame.KindStreamReply {
		stream = int(p.DataLen)
	}
	own := &h.hop
	if r.e.pflags&(frame.ProbeTrace|frame.ProbePath) != 0 {
		// A trace's frame, which may have waited for it: not a measure
		// of this hop's residence.
		own = nil
	}
	h.count(v.Header.Kind, true, own, stream)
}

// appendErrorReply answers an entry whose request the next hop refused:
// this hop's record followed by the next hop's error record.
func (h *hopState) appendErrorReply(r *pendingReply) {
	b := &h.ret
	start := len(b.scratch)
	b.scratch = append(b.scratch, make([]byte, frame.MinFrameLen)...)
	b.scratch = frame.AppendHop(b.scratch, &h.hop)
	b.scratch = append(b.scratch, r.downErr...)
	finishLocalFrame(b, start, r.e.kind.ReplyKind(), frame.ProbeHeader{Seq: r.e.seq, Flags: r.e.pflags, Count: 2}, h.retSign)
	h.count(r.e.kind.ReplyKind(), false, &h.hop, 0)
}

// buildEchoes stamps reply-out and turns the end host's pending requests
// into replies: same data, the path replaced by this hop's record, with
// the upstream connection's latest TCP_INFO (the engine reads the next one
// once the replies are written: tcpView).
func (h *hopState) buildEchoes() int {
	n := len(h.echoes)
	if n == 0 {
		return 0
	}
	tOut := h.now()
	tcp := h.tcp.reading(tOut)
	h.retSign.Follow()
	b := &h.ret
	for i := range h.echoes {
		p := &h.echoes[i]
		if p.local != nil {
			b.dropPiped(p.spliced)
			h.appendLocalAnswer(&p.e, p.local, tOut, &tcp)
			continue
		}
		h.fillCommon(&h.hop, &p.e, tOut, &tcp)
		h.hop.Flags |= frame.RecEnd
		fr, v := p.frame, &p.view
		kind := v.Header.Kind.ReplyKind()
		pr := v.Probe
		pr.Count = 1
		pr.DataLen += uint32(p.spliced)
		recOff := len(b.scratch)
		b.scratch = frame.AppendHop(b.scratch, &h.hop)
		rec := b.scratch[recOff:]
		frame.PutProbeHeader(fr[frame.HeaderLen:], pr)
		frame.PutHeader(fr, frame.Header{Kind: kind, Flags: h.retSign.HeaderFlags(),
			Length: uint32(v.TailOff - frame.HeaderLen + p.spliced + len(rec) + h.retSign.TrailerLen())})
		b.frameWithPiped(fr[:v.TailOff], v.DataOff, p.spliced)
		b.scratch = append(b.scratch, h.retSign.Sign(fr[:v.TailOff], rec)...)
		b.scratchFrom(recOff)
		stream := 0
		if kind == frame.KindStreamReply {
			stream = int(pr.DataLen)
		}
		h.count(kind, true, &h.hop, stream)
	}
	clear(h.echoes)
	h.echoes = h.echoes[:0]
	return n
}

// appendLocalAnswer adds an answer this hop gives itself: a reply holding
// its record and an error record, or an error frame for frames it could
// not trust.
func (h *hopState) appendLocalAnswer(e *inflight, ans *localAnswer, tOut int64, tcp *tcpReading) {
	h.retSign.Follow()
	s, b, sign := h.s, &h.ret, h.retSign
	er := frame.ErrorRecord{ID: s.id, Name: s.cfg.Name, Peer: ans.peer, Reason: ans.reason, Side: ans.side, Message: ans.message}
	start := len(b.scratch)
	if ans.errorFrame {
		b.scratch = frame.AppendErrorFrame(b.scratch, &er, sign)
		b.scratchFrom(start)
		return
	}
	h.fillCommon(&h.hop, e, tOut, tcp)
	h.hop.Path = h.pathFor(e)
	b.scratch = append(b.scratch, make([]byte, frame.MinFrameLen)...)
	b.scratch = frame.AppendHop(b.scratch, &h.hop)
	b.scratch = frame.AppendError(b.scratch, &er)
	finishLocalFrame(b, start, e.kind.ReplyKind(), frame.ProbeHeader{Seq: e.seq, Flags: e.pflags, Count: 2}, sign)
	h.count(e.kind.ReplyKind(), false, nil, 0)
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

// fillCommon sets the record fields every answer of this hop shares: its
// identity, clock, the request's way through it (forward time and wait),
// and the upstream connection's TCP_INFO. out ends the forward time: when
// the request went on downstream, or when this hop's own answer leaves.
func (h *hopState) fillCommon(rec *frame.HopRecord, e *inflight, out int64, tcp *tcpReading) {
	s := h.s
	*rec = frame.HopRecord{ID: s.id, Name: s.cfg.Name, WallIn: e.wallIn,
		EstErrorMicros: e.sync.EstErrorMicros, MaxErrorMicros: e.sync.MaxErrorMicros,
		Forward: time.Duration(max(out-e.tIn, 0))}
	rec.WaitForward = min(e.waitIn, rec.Forward)
	if e.kernelIn {
		rec.Flags |= frame.RecKernelIn
	}
	if e.sync.Synced {
		rec.Flags |= frame.RecSynced
	}
	if e.dialed {
		rec.Flags |= frame.RecDialed
		rec.Connect = time.Duration(e.connect)
	}
	if tcp.hasUp {
		rec.Flags |= frame.RecTCPInfoUp
		rec.TCPUp = tcp.up
	}
	if e.pflags&frame.ProbeAnnotate != 0 && s.cfg.Annotate != nil {
		rec.Vars = s.cfg.Annotate()
	}
}

// checkPath refuses requests that looped back to this hop or went through
// too many hops; it returns nil for requests that may go on.
func (s *Server) checkPath(v frame.View, fr []byte, upPeer string) *localAnswer {
	if frame.PathContains(v.Tail(fr), s.id) {
		return &localAnswer{reason: peer.ReasonLoop, side: frame.SideUpstream, peer: upPeer,
			message: fmt.Sprintf("%s received a probe that already passed through it (forwarding loop; check --forward-to along the chain)", s.cfg.Name)}
	}
	if int(v.Probe.Count) >= s.cfg.MaxHops {
		return &localAnswer{reason: peer.ReasonTooManyHops, side: frame.SideUpstream, peer: upPeer,
			message: fmt.Sprintf("%s received a probe that already passed %d hops (limit --relay.max-hops=%d)", s.cfg.Name, v.Probe.Count, s.cfg.MaxHops)}
	}
	return nil
}

// nextName is the next hop's name as its last reply gave it, else its address.
func (s *Server) nextName() string {
	if name := s.downName.Load(); name != nil {
		return *name
	}
	return s.cfg.ForwardTo
}

// learnNextName remembers the name in the first record of a reply (which
// frame.CheckReply validated), the next hop's, so that a later failure can
// name it.
func (s *Server) learnNextName(tail []byte, count int) {
	if count == 0 {
		return
	}
	name, ok := frame.FirstHopName(tail)
	if !ok {
		return
	}
	if cur := s.downName.Load(); cur != nil && *cur == string(name) {
		return
	}
	n := string(name)
	s.downName.Store(&n)
}
