package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/subsegment/subsegment_exporter/frame"
)

// echo is one upstream connection of the end host: every request comes
// back as a reply with its data and this hop's record in place of the path.
type echo struct {
	s       *Server
	up      net.Conn
	r       *frame.Reader
	sign    *frame.Signer
	b       batch
	pending []echoReply
	hop     frame.HopRecord
}

type echoReply struct {
	frame []byte
	view  frame.View
	e     inflight
	local *localAnswer
}

func newEcho(s *Server, up net.Conn) *echo {
	return &echo{s: s, up: up, r: frame.NewReader(up, s.cfg.MaxFrameBytes), sign: frame.NewSigner(s.cfg.Keys)}
}

func (x *echo) run() {
	for {
		if err := x.up.SetReadDeadline(time.Now().Add(x.s.cfg.Timeout)); err != nil {
			return
		}
		err := x.r.Fill()
		if err != nil {
			if r := Classify(err); r == frame.ReasonBadFrame || errors.Is(err, frame.ErrPartialFrame) {
				x.reject(err, x.s.cfg.Clock.Monotonic())
			} else if !errors.Is(err, io.EOF) {
				x.s.log.Debug("upstream read ended", "peer", x.up.RemoteAddr(), "err", err)
			}
			return
		}
		tIn := x.s.cfg.Clock.Monotonic()
		wall := x.s.cfg.Clock.Wall()
		sync := x.s.cfg.Clock.Sync()
		for {
			fr, err := x.r.Next()
			if err != nil {
				x.flush()
				x.reject(err, tIn)
				return
			}
			if fr == nil {
				break
			}
			if err := x.sign.Verify(fr); err != nil {
				x.flush()
				x.reject(err, tIn)
				return
			}
			v, err := frame.Parse(fr, x.s.cfg.MaxFrameBytes, frame.MaxHopsLimit)
			if err == nil && !v.Header.Kind.IsRequest() {
				err = fmt.Errorf("%w: %s from upstream, expected a request", frame.ErrMalformed, v.Header.Kind)
			}
			if err != nil {
				x.flush()
				x.reject(err, tIn)
				return
			}
			e := inflight{seq: v.Probe.Seq, kind: v.Header.Kind, pflags: v.Probe.Flags, tIn: tIn, wallIn: wall, sync: sync}
			if ans := x.s.checkPath(v, fr, x.up); ans != nil {
				x.s.metrics.Failed(ans.reason)
				x.pending = append(x.pending, echoReply{e: e, local: ans})
				continue
			}
			x.pending = append(x.pending, echoReply{frame: fr, view: v, e: e})
		}
		if !x.flush() {
			return
		}
	}
}

// reject answers a frame that cannot be trusted with an error frame.
func (x *echo) reject(err error, tIn int64) {
	reason := Classify(err)
	if reason == frame.ReasonUnknown || reason == frame.ReasonClosed {
		reason = frame.ReasonBadFrame
	}
	x.s.metrics.Failed(reason)
	x.s.log.Debug("refusing frame from upstream", "peer", x.up.RemoteAddr(), "reason", reason, "err", err)
	ans := &localAnswer{reason: reason, side: frame.SideUpstream, peer: x.up.RemoteAddr().String(),
		message: fmt.Sprintf("%s refused a frame from %s: %v", x.s.cfg.Name, x.up.RemoteAddr(), err), fatal: true, errorFrame: true}
	x.pending = append(x.pending, echoReply{e: inflight{tIn: tIn}, local: ans})
	x.flush()
}

// flush stamps reply-out, builds the replies and writes them in one writev.
func (x *echo) flush() bool {
	if len(x.pending) == 0 {
		return true
	}
	tOut := x.s.cfg.Clock.Monotonic()
	b := &x.b
	for i := range x.pending {
		p := &x.pending[i]
		if p.local != nil {
			appendLocalAnswer(x.s, b, &x.hop, &p.e, p.local, x.sign, tOut)
			continue
		}
		fillCommon(x.s, &x.hop, &p.e)
		x.hop.Flags |= frame.RecEnd
		x.hop.Forward = time.Duration(tOut - p.e.tIn)
		x.s.metrics.Residence(x.hop.Forward)
		x.appendEcho(p)
	}
	clear(x.pending)
	x.pending = x.pending[:0]
	if _, err := b.write(x.up, x.s.cfg.Timeout); err != nil {
		x.s.log.Debug("cannot write replies upstream", "peer", x.up.RemoteAddr(), "err", err)
		return false
	}
	return true
}

// appendEcho turns a request into its reply: same data, the path replaced
// by this hop's record.
func (x *echo) appendEcho(p *echoReply) {
	fr, v := p.frame, &p.view
	b := &x.b
	kind := v.Header.Kind.ReplyKind()
	pr := v.Probe
	pr.Count = 1
	recOff := len(b.scratch)
	b.scratch = frame.AppendHop(b.scratch, &x.hop)
	rec := b.scratch[recOff:]
	frame.PutProbeHeader(fr[frame.HeaderLen:], pr)
	frame.PutHeader(fr, frame.Header{Kind: kind, Flags: x.sign.HeaderFlags(),
		Length: uint32(v.TailOff - frame.HeaderLen + len(rec) + x.sign.TrailerLen())})
	b.frameBytes(fr[:v.TailOff])
	macOff := len(b.scratch)
	b.scratch = append(b.scratch, x.sign.Sign(fr[:v.TailOff], rec)...)
	b.scratchFrom(recOff)
	_ = macOff
	x.s.metrics.Relayed(kind, true)
	if kind == frame.KindStreamReply {
		x.s.metrics.StreamBytes(int(v.Probe.DataLen))
	}
}
