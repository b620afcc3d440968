package relay

import (
	"fmt"
	"time"

	"github.com/subsegment/subsegment_exporter/clock"
	"github.com/subsegment/subsegment_exporter/frame"
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

	hop     frame.HopRecord // scratch record, reused
	adm     *admission      // marked proven at the first valid frame
	lastTCP frame.TCPInfo   // the downstream connection's TCP_INFO, read after a write
	hasTCP  bool
	tcpAt   int64 // when lastTCP was read (monotonic)
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

// echoReply is a request the end host answers in the next batch.
type echoReply struct {
	frame []byte
	view  frame.View
	e     inflight
	local *localAnswer
}

// tcpInfoEvery bounds how often a session reads TCP_INFO: after a write,
// at most this often, so that a probe does not pay a syscall each.
const tcpInfoEvery = int64(10 * time.Millisecond)

func (h *hopState) init(s *Server, upPeer string) {
	h.s = s
	h.upPeer = upPeer
	h.fwdSign = frame.NewSigner(s.cfg.Keys)
	h.retSign = frame.NewSigner(s.cfg.Keys)
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

// classify checks one request frame. It returns the frame's inflight entry
// and view, and an answer when the hop must answer it itself instead of
// forwarding it: fatal ones (an untrusted frame) end the session.
func (h *hopState) classify(fr []byte, tIn, wall int64, sync clock.Sync) (inflight, frame.View, *localAnswer) {
	if err := h.fwdSign.Verify(fr); err != nil {
		return inflight{tIn: tIn}, frame.View{}, h.reject(err)
	}
	v, err := frame.Parse(fr, h.s.cfg.MaxFrameBytes, frame.MaxHopsLimit)
	if err == nil && !v.Header.Kind.IsRequest() {
		err = fmt.Errorf("%w: %s from upstream, expected a request", frame.ErrMalformed, v.Header.Kind)
	}
	if err != nil {
		return inflight{tIn: tIn}, frame.View{}, h.reject(err)
	}
	if h.adm != nil && !h.adm.proven.Load() {
		h.adm.proven.Store(true)
	}
	e := inflight{seq: v.Probe.Seq, kind: v.Header.Kind, pflags: v.Probe.Flags, tIn: tIn, wallIn: wall, sync: sync}
	e.budget = h.budget(v.Probe.BudgetMicros)
	e.waitUntil = tIn + int64(e.budget)*15/16
	if ans := h.s.checkPath(v, fr, h.upPeer); ans != nil {
		h.s.metrics.Failed(ans.reason)
		return e, v, ans
	}
	return e, v, nil
}

// queueEchoes turns every complete request buffered in r into an answer
// of the end host, all stamped with the same request-in time. It reports
// whether the session must end (an untrusted or unparsable frame); the
// answers queued so far, its error frame included, are still to be sent.
func (h *hopState) queueEchoes(r *frame.Reader, tIn int64) (stop bool) {
	wall, sync := h.s.cfg.Clock.Wall(), h.s.cfg.Clock.Sync()
	for {
		fr, err := r.Next()
		if err != nil {
			h.echoes = append(h.echoes, echoReply{e: inflight{tIn: tIn}, local: h.reject(err)})
			return true
		}
		if fr == nil {
			return false
		}
		e, v, ans := h.classify(fr, tIn, wall, sync)
		h.echoes = append(h.echoes, echoReply{frame: fr, view: v, e: e, local: ans})
		if ans != nil && ans.fatal {
			return true
		}
	}
}

// reject is the answer to a frame that cannot be trusted or parsed: an
// error frame, after which the session ends (its stream position is lost).
func (h *hopState) reject(err error) *localAnswer {
	reason := Classify(err)
	if reason == frame.ReasonUnknown || reason == frame.ReasonClosed {
		reason = frame.ReasonBadFrame
	}
	h.s.metrics.Failed(reason)
	h.s.log.Debug("refusing frame from upstream", "peer", h.upPeer, "reason", reason, "err", err)
	return &localAnswer{reason: reason, side: frame.SideUpstream, peer: h.upPeer,
		message: fmt.Sprintf("%s refused a frame from %s: %v", h.s.cfg.Name, h.upPeer, err), fatal: true, errorFrame: true}
}

// dialFailed is the answer when the next hop cannot be reached.
func (h *hopState) dialFailed(err error) *localAnswer {
	reason := Classify(err)
	if reason == frame.ReasonUnknown {
		reason = frame.ReasonUnreachable
	}
	h.s.metrics.Failed(reason)
	h.s.log.Debug("cannot reach next hop", "next", h.s.cfg.ForwardTo, "reason", reason, "err", err)
	return &localAnswer{reason: reason, side: frame.SideDownstream, peer: h.s.nextName(),
		message: fmt.Sprintf("%s cannot reach %s: %v", h.s.cfg.Name, h.s.cfg.ForwardTo, err), fatal: true}
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
// caller checked roomInRing.
func (h *hopState) enqueueForward(e inflight, fr []byte, v *frame.View) {
	*h.ring.slot(h.pending) = e
	h.pending++
	tailEnd := v.MACOff
	p := v.Probe
	if h.s.cfg.RemovePerfHeaders {
		tailEnd = v.TailOff
		p.Count = 0
		p.Flags |= frame.ProbeStripped
	}
	p.Count++
	p.BudgetMicros = uint32(max(e.budget*7/8/time.Microsecond, 1))
	frame.PutProbeHeader(fr[frame.HeaderLen:], p)
	frame.PutHeader(fr, frame.Header{Kind: v.Header.Kind, Flags: h.fwdSign.HeaderFlags(),
		Length: uint32(tailEnd - frame.HeaderLen + frame.PathEntryLen + h.fwdSign.TrailerLen())})
	b := &h.fwd
	b.frameBytes(fr[:tailEnd])
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

// takeReply matches a downstream frame with the oldest entry. A non-nil
// answer means the downstream is unusable from here on; consumed says
// whether the frame still answered the entry (an error frame does).
func (h *hopState) takeReply(e *inflight, fr []byte, tReplyIn int64) (broken *localAnswer) {
	r := pendingReply{e: *e, frame: fr, tReplyIn: tReplyIn, tcp: h.lastTCP, hasTCP: h.hasTCP}
	if ans := h.checkReply(&r); ans != nil {
		if r.downErr == nil {
			return ans
		}
		broken = ans
	}
	h.replies = append(h.replies, r)
	h.ring.pop()
	return broken
}

// checkReply validates a downstream frame against the entry it answers.
func (h *hopState) checkReply(r *pendingReply) *localAnswer {
	s := h.s
	bad := func(err error) *localAnswer {
		s.log.Debug("bad frame from next hop", "next", s.cfg.ForwardTo, "err", err)
		return &localAnswer{reason: Classify(err), side: frame.SideDownstream, peer: s.nextName(),
			message: fmt.Sprintf("%s got a bad reply from %s: %v", s.cfg.Name, s.cfg.ForwardTo, err)}
	}
	if err := h.retSign.Verify(r.frame); err != nil {
		if rec, perr := frame.ParseErrorFrame(r.frame, s.cfg.MaxFrameBytes); perr == nil {
			// The next hop refused us and signs with another key (or none).
			return &localAnswer{reason: frame.ReasonAuth, side: frame.SideDownstream, peer: rec.Name,
				message: fmt.Sprintf("%s: %v; the unverified error frame from %s said: %s", s.cfg.Name, err, rec.Name, rec.Message)}
		}
		return bad(err)
	}
	hd, _ := frame.ParseHeader(r.frame, s.cfg.MaxFrameBytes)
	if hd.Kind == frame.KindError {
		rec, err := frame.ParseErrorFrame(r.frame, s.cfg.MaxFrameBytes)
		if err != nil {
			return bad(err)
		}
		end := hd.FrameLen()
		if hd.Signed() {
			end -= frame.MACLen
		}
		r.downErr = r.frame[frame.HeaderLen:end]
		r.frame = nil
		return &localAnswer{reason: rec.Reason, side: frame.SideDownstream, peer: rec.Name,
			message: fmt.Sprintf("%s refused an earlier frame from %s: %s", rec.Name, s.cfg.Name, rec.Message)}
	}
	v, err := frame.Parse(r.frame, s.cfg.MaxFrameBytes, frame.MaxHopsLimit)
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
	s.learnNextName(v.Tail(r.frame), int(v.Probe.Count))
	return nil
}

// downstreamFailure turns a failed downstream read or write into the
// answer every remaining entry gets; e is the oldest entry, if any.
func (h *hopState) downstreamFailure(err error, e *inflight) *localAnswer {
	s := h.s
	reason := Classify(err)
	msg := fmt.Sprintf("%s lost %s: %v", s.cfg.Name, s.cfg.ForwardTo, err)
	if reason == frame.ReasonTimeout && e != nil {
		msg = fmt.Sprintf("%s got no reply from %s within %s", s.cfg.Name, s.cfg.ForwardTo,
			time.Duration(e.waitUntil-e.tOut).Round(time.Millisecond))
	}
	if reason == frame.ReasonUnknown {
		reason = frame.ReasonReset
	}
	s.log.Debug("next hop failed", "next", s.cfg.ForwardTo, "reason", reason, "err", err)
	return &localAnswer{reason: reason, side: frame.SideDownstream, peer: s.nextName(), message: msg}
}

// buildReplies stamps reply-out and turns every pending reply into pieces
// of the return batch; the engine writes the batch.
func (h *hopState) buildReplies() int {
	n := len(h.replies)
	if n == 0 {
		return 0
	}
	tOut := h.now()
	for i := range h.replies {
		r := &h.replies[i]
		if r.local != nil {
			appendLocalAnswer(h.s, &h.ret, &h.hop, &r.e, r.local, h.retSign, tOut)
			continue
		}
		h.fillHop(r, tOut)
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

// refreshTCP reads the downstream connection's TCP_INFO after a write, at
// most every tcpInfoEvery; the next reply carries it.
func (h *hopState) refreshTCP(read func() (frame.TCPInfo, error)) {
	now := h.now()
	if h.hasTCP && now-h.tcpAt < tcpInfoEvery {
		return
	}
	info, err := read()
	h.lastTCP, h.hasTCP, h.tcpAt = info, err == nil, now
}

// fillHop sets this hop's record for a downstream reply.
func (h *hopState) fillHop(r *pendingReply, tOut int64) {
	rec := &h.hop
	fillCommon(h.s, rec, &r.e)
	rec.Forward = time.Duration(r.e.tOut - r.e.tIn)
	rec.Downstream = time.Duration(r.tReplyIn - r.e.tOut)
	rec.Return = time.Duration(tOut - r.tReplyIn)
	if r.hasTCP {
		rec.Flags |= frame.RecTCPInfo
		rec.TCP = r.tcp
	}
	if h.s.cfg.RemovePerfHeaders {
		rec.Flags |= frame.RecStripped
	}
	h.s.metrics.Residence(rec.Forward + rec.Return)
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
	frame.PutProbeHeader(fr[frame.HeaderLen:], p)
	frame.PutHeader(fr, frame.Header{Kind: v.Header.Kind, Flags: h.retSign.HeaderFlags(),
		Length: uint32(v.TailOff - frame.HeaderLen + len(rec) + len(recs) + h.retSign.TrailerLen())})
	b.frameBytes(fr[:v.TailOff])
	b.scratchFrom(recOff)
	b.frameBytes(recs)
	macOff := len(b.scratch)
	b.scratch = append(b.scratch, h.retSign.Sign(fr[:v.TailOff], rec, recs)...)
	b.scratchFrom(macOff)
	h.s.metrics.Relayed(v.Header.Kind, true)
	if v.Header.Kind == frame.KindStreamReply {
		h.s.metrics.StreamBytes(int(v.Probe.DataLen))
	}
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
	h.s.metrics.Relayed(r.e.kind.ReplyKind(), false)
}

// buildEchoes stamps reply-out and turns the end host's pending requests
// into replies: same data, the path replaced by this hop's record.
func (h *hopState) buildEchoes() int {
	n := len(h.echoes)
	if n == 0 {
		return 0
	}
	tOut := h.now()
	b := &h.ret
	for i := range h.echoes {
		p := &h.echoes[i]
		if p.local != nil {
			appendLocalAnswer(h.s, b, &h.hop, &p.e, p.local, h.retSign, tOut)
			continue
		}
		fillCommon(h.s, &h.hop, &p.e)
		h.hop.Flags |= frame.RecEnd
		h.hop.Forward = time.Duration(tOut - p.e.tIn)
		h.s.metrics.Residence(h.hop.Forward)
		fr, v := p.frame, &p.view
		kind := v.Header.Kind.ReplyKind()
		pr := v.Probe
		pr.Count = 1
		recOff := len(b.scratch)
		b.scratch = frame.AppendHop(b.scratch, &h.hop)
		rec := b.scratch[recOff:]
		frame.PutProbeHeader(fr[frame.HeaderLen:], pr)
		frame.PutHeader(fr, frame.Header{Kind: kind, Flags: h.retSign.HeaderFlags(),
			Length: uint32(v.TailOff - frame.HeaderLen + len(rec) + h.retSign.TrailerLen())})
		b.frameBytes(fr[:v.TailOff])
		b.scratch = append(b.scratch, h.retSign.Sign(fr[:v.TailOff], rec)...)
		b.scratchFrom(recOff)
		h.s.metrics.Relayed(kind, true)
		if kind == frame.KindStreamReply {
			h.s.metrics.StreamBytes(int(v.Probe.DataLen))
		}
	}
	clear(h.echoes)
	h.echoes = h.echoes[:0]
	return n
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
func (s *Server) checkPath(v frame.View, fr []byte, upPeer string) *localAnswer {
	if frame.PathContains(v.Tail(fr), s.id) {
		return &localAnswer{reason: frame.ReasonLoop, side: frame.SideUpstream, peer: upPeer,
			message: fmt.Sprintf("%s received a probe that already passed through it (forwarding loop; check --forward-to along the chain)", s.cfg.Name)}
	}
	if int(v.Probe.Count) >= s.cfg.MaxHops {
		return &localAnswer{reason: frame.ReasonTooManyHops, side: frame.SideUpstream, peer: upPeer,
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
	if cur := s.downName.Load(); cur != nil && *cur == string(name) {
		return
	}
	n := string(name)
	s.downName.Store(&n)
}
