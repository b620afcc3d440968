package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// A relay whose next hop is a STAMP reflector (--forward-to
// stamp://host:port, a router that runs nothing of ours) is the last relay
// of its chain: for every probe it sends one STAMP test packet to the
// reflector and answers upstream with its own record and one for the
// reflector, the end of the chain, whose residence is T3 − T2. The source
// then reports the segment to the reflector as the chain's last, through
// the same arithmetic and rules as any other.
//
// The relay keeps one STAMP session with the reflector for all its
// upstream connections: the reflector sees one sender, and its Direct
// Measurement counters run across scrapes, so that a loss is named
// forward or return by the next reply, whichever probe carries it. The
// connections' packets are in flight at once, each reply matched to its
// packet by sequence number (stamp.Session), so no connection waits for
// another's: a lost packet costs only the probe that carried it, which
// fails on the last segment, reason timeout, when its budget ends. Each
// connection answers its requests in order, one packet in flight at a
// time, so --relay.max-connections bounds the packets in flight. The
// relay counts the loss on its /metrics, per direction once named
// (STAMPMetrics).
//
// Such a relay serves its upstream connections with the goroutine engine;
// relays with a TCP next hop are untouched.

// STAMPMetrics counts what a relay sends its STAMP next hop; collector
// implements it for /metrics.
type STAMPMetrics interface {
	// STAMPPacket counts a test packet by fate: reflected (its reply came
	// back in time) or lost.
	STAMPPacket(reflected bool)
	// STAMPLost counts losses as the reflector's counters name them.
	STAMPLost(forward, ret int64)
}

type nopSTAMPMetrics struct{}

func (nopSTAMPMetrics) STAMPPacket(bool)       {}
func (nopSTAMPMetrics) STAMPLost(int64, int64) {}

// stampLink is a relay's STAMP session with its next hop, shared by its
// upstream connections.
type stampLink struct {
	target peer.STAMPTarget
	id     uint64
	// mu guards opening the session (by the first probe that needs it).
	mu     sync.Mutex
	sess   *stamp.Session
	ledger stamp.OrderedLedger
}

// session is the link's session, opened on first use; it lives as long
// as the relay serves (ctx).
func (l *stampLink) session(ctx context.Context, c clock.Clock) (*stamp.Session, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sess != nil {
		return l.sess, nil
	}
	sess, err := stamp.Open(ctx, stamp.SessionOptions{Target: l.target.Address, Clock: c,
		TLVs: stamp.TLVRequest{DirectMeasurement: true, TimestampInfo: true}})
	if err != nil {
		return nil, err
	}
	l.sess = sess
	context.AfterFunc(ctx, func() { _ = sess.Close() })
	return sess, nil
}

// stampNextOf parses a --forward-to that names a STAMP reflector; nil for
// any other next hop. Such a relay runs the goroutine engine.
func stampNextOf(cfg *Config) (*stampLink, error) {
	if !peer.IsSTAMPTarget(cfg.ForwardTo) {
		return nil, nil
	}
	t, err := peer.ParseSTAMPTarget(cfg.ForwardTo)
	if err != nil {
		return nil, fmt.Errorf("--forward-to: %w", err)
	}
	if cfg.DialTLS != nil || cfg.Dial != nil {
		return nil, fmt.Errorf("--forward-to %s: a STAMP reflector is reached over UDP, without TLS or a dialer", cfg.ForwardTo)
	}
	cfg.Engine = EngineGoroutines
	if cfg.STAMPMetrics == nil {
		cfg.STAMPMetrics = nopSTAMPMetrics{}
	}
	return &stampLink{target: t, id: stamp.HopID(t.Address)}, nil
}

// stampNext is one upstream connection of a relay whose next hop is a
// STAMP reflector, driven by one goroutine: requests are answered in
// order, each after its STAMP exchange.
type stampNext struct {
	hopState
	up   net.Conn
	r    *frame.Reader
	upRx *rxstamp.Conn
	link *stampLink
	// pending are the requests answered and not written yet, in order.
	pending []stampReply
}

// stampReply is a request and what its STAMP exchange found.
type stampReply struct {
	echoReply
	// around is T4 − T1, reply-in after request-out on this hop's clock;
	// kernelReply: T4 is the kernel's receive stamp.
	around      time.Duration
	kernelReply bool
	refl        frame.HopRecord
}

func (s *Server) serveSTAMPNext(ctx context.Context, up net.Conn, adm *admission) {
	x := &stampNext{up: up, r: frame.NewReader(up, s.cfg.MaxFrameBytes), upRx: rxstamp.Of(up), link: s.stampNext}
	x.r.Budget = s.budget
	x.upReader = x.r
	x.adm = adm
	x.init(s, up.RemoteAddr().String())
	x.tcp.readUp = tcpReader(up)
	defer x.r.Release()
	for {
		if err := x.up.SetReadDeadline(time.Now().Add(s.cfg.Timeout)); err != nil {
			return
		}
		if err := x.r.Fill(); err != nil {
			x.ended(err)
			return
		}
		if !x.answerBuffered(ctx) {
			return
		}
	}
}

// ended answers what cannot be read with an error frame, as the end host
// does.
func (x *stampNext) ended(err error) {
	if r := peer.Classify(err); r == peer.ReasonBadFrame || r == peer.ReasonTooLarge || r == peer.ReasonOverloaded || errors.Is(err, frame.ErrPartialFrame) {
		x.pending = append(x.pending, stampReply{echoReply: echoReply{e: newEntry(rxstamp.Stamp{At: x.now()}), local: x.reject(err)}})
		if x.flush() {
			x.stopReading()
			drainConn(x.up, x.s.cfg.Timeout)
		}
	} else if !errors.Is(err, io.EOF) {
		x.s.log.Debug("upstream read ended", "peer", x.upPeer, "err", err)
	}
}

// answerBuffered answers every complete request buffered, one STAMP
// exchange each; false ends the session.
func (x *stampNext) answerBuffered(ctx context.Context) bool {
	rx, wall, sync := x.received(x.upRx), x.s.cfg.Clock.Wall(), x.s.cfg.Clock.Sync()
	for {
		fr, err := x.r.Next()
		if err != nil {
			x.pending = append(x.pending, stampReply{echoReply: echoReply{e: newEntry(rx), local: x.reject(err)}})
			if x.flush() {
				x.stopReading()
				drainConn(x.up, x.s.cfg.Timeout)
			}
			return false
		}
		if fr == nil {
			return x.flush()
		}
		e, v, ans := x.classify(fr, rx, wall, sync)
		r := stampReply{echoReply: echoReply{frame: fr, view: v, e: e}}
		if ans == nil {
			ans = x.exchange(ctx, &r)
		}
		r.local = ans
		x.pending = append(x.pending, r)
		if ans != nil && ans.fatal {
			if x.flush() {
				x.stopReading()
				drainConn(x.up, x.s.cfg.Timeout)
			}
			return false
		}
	}
}

// exchange sends the probe's STAMP packet and waits for its reply within
// the probe's budget; it stamps request-out on e and keeps the reflector's
// record. A lost packet (or a refused one) is the probe's answer.
func (x *stampNext) exchange(ctx context.Context, r *stampReply) *localAnswer {
	s, e, l := x.s, &r.e, x.link
	sess, err := l.session(ctx, s.cfg.Clock)
	if err != nil {
		return x.failed(peer.ClassifyOr(err, peer.ReasonUnreachable), "%s cannot reach the STAMP reflector %s (%s): %v", s.cfg.Name, l.target.Name, l.target.Address, err)
	}
	e.tOut = x.now()
	wait := max(time.Duration(e.waitUntil-e.tOut), 0)
	p, err := sess.Exchange(ctx, wait)
	replyIn := x.now()
	fwd, ret := l.ledger.Add(&p)
	s.cfg.STAMPMetrics.STAMPLost(fwd, ret)
	if p.Sent {
		s.cfg.STAMPMetrics.STAMPPacket(p.Received)
	}
	switch {
	case err != nil:
		return x.failed(peer.ClassifyOr(err, peer.ReasonUnreachable), "%s: STAMP to %s (%s): %v", s.cfg.Name, l.target.Name, l.target.Address, err)
	case !p.Received:
		return x.failed(peer.ReasonTimeout, "%s got no STAMP reply from %s (%s) within %s: the test packet or its reply was lost (%s)", s.cfg.Name, l.target.Name, l.target.Address,
			wait.Round(time.Microsecond), l.lossSoFar())
	}
	around, err := p.Around()
	if err == nil {
		r.refl, err = p.ReflectorRecord(l.id, l.target.Name)
	}
	if err != nil {
		return x.failed(peer.ReasonBadFrame, "%s: STAMP reply from %s (%s): %v", s.cfg.Name, l.target.Name, l.target.Address, err)
	}
	// Reply-in on this hop's monotonic clock: T4 − T1 after request-out,
	// within what the exchange took.
	r.around = min(around, time.Duration(replyIn-e.tOut))
	r.kernelReply = p.T4Kernel
	return nil
}

// lossSoFar words the session's loss for a lost packet's message.
func (l *stampLink) lossSoFar() string {
	g := l.ledger.Ledger()
	text := fmt.Sprintf("%d of %d packets lost so far", g.Sent-g.Received, g.Sent)
	if g.Named {
		text += fmt.Sprintf(", %d forward and %d return as the reflector's counters named them", g.ForwardLost, g.ReturnLost)
	}
	if f := l.sess.Faults(); f.Any() {
		text += "; " + f.Text()
	}
	return text
}

// failed is a probe's answer when its STAMP exchange failed: the segment
// to the reflector, not fatal (the next probe sends the next packet).
func (x *stampNext) failed(reason peer.Reason, format string, args ...any) *localAnswer {
	x.s.metrics.Failed(reason)
	return &localAnswer{reason: reason, side: frame.SideDownstream, peer: x.link.target.Name, message: fmt.Sprintf(format, args...)}
}

// flush writes the pending answers in one writev.
func (x *stampNext) flush() bool {
	if x.buildSTAMPReplies() == 0 {
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

// buildSTAMPReplies turns the pending requests into replies: the request's
// data, its path replaced by this hop's record and the reflector's (or,
// with --remove-perf-headers, this hop's alone, marked stripped).
func (x *stampNext) buildSTAMPReplies() int {
	n := len(x.pending)
	if n == 0 {
		return 0
	}
	tOut := x.now()
	tcp := x.tcp.reading(tOut)
	for i := range x.pending {
		p := &x.pending[i]
		if p.local != nil {
			x.appendLocalAnswer(&p.e, p.local, tOut, &tcp)
			continue
		}
		x.appendSTAMPReply(p, tOut, &tcp)
	}
	clear(x.pending)
	x.pending = x.pending[:0]
	return n
}

func (x *stampNext) appendSTAMPReply(p *stampReply, tOut int64, tcp *tcpReading) {
	h := &x.hopState
	rec := &h.hop
	h.fillCommon(rec, &p.e, p.e.tOut, tcp)
	replyIn := p.e.tOut + int64(p.around)
	rec.Downstream = p.around
	rec.Return = time.Duration(max(tOut-replyIn, 0))
	if p.kernelReply {
		rec.Flags |= frame.RecKernelReply
	}
	records := []*frame.HopRecord{rec, &p.refl}
	if h.s.cfg.RemovePerfHeaders {
		rec.Flags |= frame.RecStripped
		records = records[:1]
	}
	b := &h.ret
	fr, v := p.frame, &p.view
	kind := v.Header.Kind.ReplyKind()
	pr := v.Probe
	pr.Count = uint8(len(records))
	if h.s.cfg.RemovePerfHeaders {
		pr.Flags |= frame.ProbeStripped
	}
	recOff := len(b.scratch)
	for _, r := range records {
		b.scratch = frame.AppendHop(b.scratch, r)
	}
	recs := b.scratch[recOff:]
	frame.PutProbeHeader(fr[frame.HeaderLen:], pr)
	frame.PutHeader(fr, frame.Header{Kind: kind, Flags: h.retSign.HeaderFlags(),
		Length: uint32(v.TailOff - frame.HeaderLen + len(recs) + h.retSign.TrailerLen())})
	b.frameBytes(fr[:v.TailOff])
	b.scratch = append(b.scratch, h.retSign.Sign(fr[:v.TailOff], recs)...)
	b.scratchFrom(recOff)
	stream := 0
	if kind == frame.KindStreamReply {
		stream = int(v.Probe.DataLen)
	}
	h.count(kind, true, rec, stream)
}

// stopReading lets go of the frames before the drain (letGoOfFrames),
// the replies' too.
func (x *stampNext) stopReading() {
	x.letGoOfFrames(x.r)
	clear(x.pending[:cap(x.pending)])
	x.pending = x.pending[:0]
}
