package prober

import (
	"context"
	"fmt"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// STAMPOptions make Target a STAMP Session-Reflector (RFC 8762): a
// router's, or a relay's --stamp.listen-address, measured with one STAMP
// test packet per probe. The chain is the source and the reflector; the
// keys of an authenticated session are Options.Keys.
type STAMPOptions struct {
	// Name labels the reflector's hop (default: the target's host,
	// peer.AddressName).
	Name string
	// PacketBytes is the UDP payload of every packet (0: the smallest).
	PacketBytes int
	// DSCP marks the packets; with the Class of Service TLV it is asked
	// for the replies too.
	DSCP          uint8
	Authenticated bool
	TLVs          stamp.TLVRequest
	// PacketTimeout is how long a packet's reply is waited for before the
	// packet counts as lost (cut down to what is left of the run; 0:
	// DefaultPacketTimeout).
	PacketTimeout time.Duration
}

// DefaultPacketTimeout is how long a STAMP packet's reply is waited for.
const DefaultPacketTimeout = time.Second

// LossResult is a STAMP segment's packet loss (JSON: docs/probe.md).
type LossResult struct {
	// Sent counts the packets sent, the warm-up included; Received the
	// replies that came in time; Lost the rest.
	Sent     int `json:"sent"`
	Received int `json:"received"`
	Lost     int `json:"lost"`
	// Ratio is Lost / Sent.
	Ratio float64 `json:"ratio"`
	// ByDirection: the reflector's Direct Measurement counters named the
	// direction of losses; else Forward and Return are nil, and only the
	// total is known.
	ByDirection bool           `json:"by_direction"`
	Forward     *DirectionLoss `json:"forward"`
	Return      *DirectionLoss `json:"return"`
	// Unknown is the loss no reply named yet: the last packets of a run
	// (no later reply carried the counters), or every loss without them.
	Unknown int `json:"unknown"`
}

// DirectionLoss is one direction's loss.
type DirectionLoss struct {
	Lost int `json:"lost"`
	// Ratio is Lost over the packets that went that way (those sent,
	// forward; those that reached the reflector, return), the Unknown
	// ones left out.
	Ratio float64 `json:"ratio"`
}

// DSCPResult is what a STAMP segment showed of its packets' DSCP per
// direction (JSON: docs/probe.md); a nil field is not known.
type DSCPResult struct {
	Sent int `json:"sent"`
	// AtReflector is the DSCP the packets arrived with at the reflector
	// (Class of Service TLV); Returned the one the replies arrived with.
	AtReflector *int `json:"at_reflector"`
	Returned    *int `json:"returned"`
	// ForwardRemarked: the reflector received another DSCP than was sent;
	// ReturnRemarked: the replies arrived with another DSCP than the
	// reflector sent them with (Class of Service TLV).
	ForwardRemarked *bool `json:"forward_remarked"`
	ReturnRemarked  *bool `json:"return_remarked"`
}

// stampSession is the source's STAMP session with a reflector.
type stampSession struct {
	o       *Options
	sess    *stamp.Session
	address string
	src     peer.Hop
	refl    peer.Hop
	ledger  stamp.LossLedger
	// acc is what happened since the last result was built; faultsAt the
	// session's faults when it was.
	acc      stampAccount
	faultsAt stamp.ReplyFaults
}

// stampAccount is what a result says of its packets beyond the samples.
type stampAccount struct {
	sent, received int
	// measured and measuredBack count the measured probes' packets (the
	// warm-up aside) and their replies.
	measured, measuredBack int
	forward, ret           int64
	dscp                   stamp.DSCP
	wait                   time.Duration
}

// stampAddress is the reflector's host:port of a STAMP target (host:port,
// or stamp://host:port), and the name its URL gives.
func stampAddress(target string) (string, string, error) {
	if peer.IsSTAMPTarget(target) {
		t, err := peer.ParseSTAMPTarget(target)
		if err != nil {
			return "", "", err
		}
		name := t.Name
		if name == peer.AddressName(t.Address) {
			name = ""
		}
		return t.Address, name, nil
	}
	return target, "", peer.ValidateAddress(target)
}

// validate checks the STAMP options of o.
func (so *STAMPOptions) validate(o *Options) error {
	addr, _, err := stampAddress(o.Target)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if so.Name != "" {
		if err := peer.ValidateName(so.Name); err != nil {
			return fmt.Errorf("STAMP reflector name: %w", err)
		}
	}
	if o.PayloadBytes != 0 {
		return fmt.Errorf("payload bytes are for relay chains: a STAMP module sets its packet size")
	}
	if so.PacketTimeout < 0 {
		return fmt.Errorf("STAMP packet timeout %v is negative", so.PacketTimeout)
	}
	so2 := so.session(o, addr)
	return so2.Validate()
}

// session is the stamp package's view of the options.
func (so *STAMPOptions) session(o *Options, addr string) stamp.SessionOptions {
	mode := stamp.Unauthenticated
	if so.Authenticated {
		mode = stamp.Authenticated
	}
	return stamp.SessionOptions{Target: addr, Size: so.PacketBytes, DSCP: so.DSCP, Mode: mode, Keys: o.Keys, TLVs: so.TLVs, Clock: o.Clock}
}

// reflectorName is the reflector's hop name.
func (so *STAMPOptions) reflectorName(target string) string {
	addr, name, _ := stampAddress(target)
	switch {
	case so.Name != "":
		return so.Name
	case name != "":
		return name
	}
	return peer.AddressName(addr)
}

// dialSTAMP opens the session's socket.
func dialSTAMP(ctx context.Context, o *Options) (protocol, *Failure) {
	so := o.STAMP
	addr, _, _ := stampAddress(o.Target)
	s := &stampSession{o: o, address: addr, src: peer.Hop{ID: peer.NewID(), Name: o.Source},
		refl: peer.Hop{ID: stamp.HopID(addr), Name: so.reflectorName(o.Target)}}
	sess, err := stamp.Open(ctx, so.session(o, addr))
	if err != nil {
		return nil, &Failure{From: s.src, To: peer.Hop{Name: s.refl.Name}, Reason: peer.ClassifyOr(err, peer.ReasonUnreachable), Message: err.Error()}
	}
	s.sess = sess
	return s, nil
}

func (s *stampSession) close() { _ = s.sess.Close() }

func (s *stampSession) fail(reason peer.Reason, format string, args ...any) *Failure {
	return &Failure{From: s.src, To: s.refl, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// probe sends one test packet and turns its reply into the sample's
// records: the source's and the reflector's. A lost packet is a sample
// without records (and without failure): it counts in the loss, never in
// the times.
func (s *stampSession) probe(ctx context.Context, seq uint64, _ uint16) Sample {
	smp := Sample{Seq: seq}
	budget, ok := probeBudget(ctx, s.o.Timeout)
	if !ok {
		smp.Failure = s.fail(peer.ReasonTimeout, "deadline reached before the STAMP packet was sent")
		return smp
	}
	wait := s.o.STAMP.PacketTimeout
	if wait <= 0 {
		wait = DefaultPacketTimeout
	}
	wait = min(wait, budget)
	s.acc.wait = wait
	before := s.sess.Faults()
	p, err := s.sess.Exchange(ctx, wait)
	faults := s.sess.Faults().Since(before)
	fwd, ret := s.ledger.Add(&p)
	s.acc.add(&p, fwd, ret)
	if seq > 0 && p.Sent {
		s.acc.measured++
		if p.Received {
			s.acc.measuredBack++
		}
	}
	switch {
	case err != nil:
		smp.Failure = s.fail(peer.ClassifyOr(err, peer.ReasonUnreachable), "STAMP to %s: %v", s.address, err)
	case !p.Received && faults.Auth > 0:
		smp.Failure = s.fail(peer.ReasonAuth, "%s answered, but its replies do not verify with the key of --relay.auth-key-file: it signs with another key, or is not in authenticated mode", s.address)
	case !p.Received:
		// Lost: no records.
	default:
		s.decode(&smp, &p)
	}
	return smp
}

// decode turns a reply into the sample's records and holds the
// reflector's residence to what the source measured around it: the
// segment arithmetic of every protocol (breakDown), with T4 − T1 as the
// source's downstream time and T3 − T2 as the reflector's residence, so
// that the rtt is (T4 − T1) − (T3 − T2).
func (s *stampSession) decode(smp *Sample, p *stamp.PacketResult) {
	around, err := p.Around()
	if err != nil {
		smp.Failure = s.fail(peer.ReasonUnknown, "STAMP exchange with %s: %v", s.address, err)
		return
	}
	refl, err := p.ReflectorRecord(s.refl.ID, s.refl.Name)
	if err != nil {
		smp.Failure = s.fail(peer.ReasonBadFrame, "STAMP reply from %s: %v", s.address, err)
		return
	}
	t1 := p.BestT1()
	src := frame.HopRecord{ID: s.src.ID, Name: s.src.Name, Downstream: around, WallIn: t1}
	if p.T4Kernel {
		src.Flags |= frame.RecKernelReply
	}
	stamp.SetRecordClock(&src, p.SenderError)
	smp.Records = []frame.HopRecord{src, refl}
	breakDown(smp, timingHops(nil, smp.Records), nil, peer.ReasonBadFrame, func() string { return "STAMP reply from " + s.address + ": the residence T3 − T2" })
}

// add counts one exchanged packet.
func (a *stampAccount) add(p *stamp.PacketResult, fwd, ret int64) {
	if p.Sent {
		a.sent++
	}
	if p.Received {
		a.received++
	}
	a.forward += fwd
	a.ret += ret
	a.dscp.Add(p)
}

// attachTCP has nothing to attach: STAMP runs over UDP.
func (s *stampSession) attachTCP([]Sample) {}

// annotate adds to the result what only STAMP knows: the loss per
// direction and the DSCP per direction on the segment to the reflector,
// and the failure when no packet came back. What it adds covers the
// packets since the last result (one run, or one probe of a Session).
func (s *stampSession) annotate(r *Result) {
	a := s.acc
	s.acc = stampAccount{}
	now := s.sess.Faults()
	faults := now.Since(s.faultsAt)
	s.faultsAt = now
	if r.fail == nil && a.silent() {
		r.setFailure(s.silence(a, &faults))
	}
	if len(r.Segments) == 0 {
		return
	}
	seg := &r.Segments[0]
	seg.Loss = a.loss(s.ledger.Named)
	seg.DSCP = a.dscpResult(s.o.STAMP.DSCP)
	seg.BadReplies = &faults
}

// silent says whether no packet of the result came back: of its measured
// probes, or, for a warm-up alone (a Session's Open), of the warm-up.
func (a *stampAccount) silent() bool {
	if a.measured > 0 {
		return a.measuredBack == 0
	}
	return a.sent > 0 && a.received == 0
}

// silence is the failure of a run in which no packet came back usable:
// what came instead, when anything did (reason auth for replies that do
// not verify, bad_frame for replies no reflector may send), else that
// nothing did — which the sender cannot tell from a path that drops them
// or a reflector that refuses them (reason timeout; auth for an
// authenticated module, whose reflector discards what does not verify).
func (s *stampSession) silence(a stampAccount, faults *stamp.ReplyFaults) *Failure {
	waited := fmt.Sprintf("to %d packets (each waited for %s)", a.sent, a.wait.Round(time.Millisecond))
	if faults.Refused() > faults.Late {
		reason := peer.ReasonBadFrame
		if faults.Auth > 0 {
			reason = peer.ReasonAuth
		}
		return s.fail(reason, "no usable STAMP reply from %s %s: %s", s.address, waited, faults.Text())
	}
	msg := fmt.Sprintf("no STAMP reply from %s %s", s.address, waited)
	if faults.Late > 0 {
		msg += "; " + faults.Text()
	}
	if s.o.STAMP.Authenticated {
		return s.fail(peer.ReasonAuth, "%s: an authenticated reflector discards every packet whose HMAC does not verify, so it uses another key than --relay.auth-key-file, or none (or the path drops every packet)", msg)
	}
	return s.fail(peer.ReasonTimeout, "%s: the packets or their replies were lost on the path, or the reflector did not answer them "+
		"(a reflector refuses what is over its bounds or not in its mode, an authenticated one every unauthenticated packet: "+
		"ours counts its refusals by reason in subsegment_stamp_refused_packets_total)", msg)
}

// loss is the account's loss; the directions named in it may be of
// packets of earlier results of a Session.
func (a stampAccount) loss(named bool) *LossResult {
	l := &LossResult{Sent: a.sent, Received: a.received, Lost: a.sent - a.received}
	if a.sent > 0 {
		l.Ratio = float64(l.Lost) / float64(a.sent)
	}
	l.Unknown = l.Lost
	if !named {
		return l
	}
	l.ByDirection = true
	fwd, ret := int(a.forward), int(a.ret)
	l.Unknown = max(l.Lost-fwd-ret, 0)
	known := max(a.sent-l.Unknown, 0)
	l.Forward = &DirectionLoss{Lost: fwd, Ratio: ratio(fwd, known)}
	l.Return = &DirectionLoss{Lost: ret, Ratio: ratio(ret, known-fwd)}
	return l
}

func ratio(n, of int) float64 {
	if of <= 0 || n <= 0 {
		return 0
	}
	return min(float64(n)/float64(of), 1)
}

// dscpResult is the account's DSCP per direction.
func (a stampAccount) dscpResult(sent uint8) *DSCPResult {
	d := &DSCPResult{Sent: int(sent)}
	if a.dscp.HasDSCPAtReflector {
		v := int(a.dscp.DSCPAtReflector)
		d.AtReflector = &v
	}
	if a.dscp.HasDSCPReturned {
		v := int(a.dscp.DSCPReturned)
		d.Returned = &v
	}
	if a.dscp.ForwardKnown {
		v := a.dscp.ForwardRemarked
		d.ForwardRemarked = &v
	}
	if a.dscp.ReturnKnown {
		v := a.dscp.ReturnRemarked
		d.ReturnRemarked = &v
	}
	return d
}

// Survives says whether a Session goes on after a probe that failed:
// a STAMP session does when the packet was lost (there is no connection
// to open again, and the reflector's counters name the loss on the next
// reply); every other failure ends a session.
func (s *Session) Survives(res *Result) bool {
	_, udp := s.p.(*stampSession)
	return udp && res.Failure != nil && res.Failure.Reason == peer.ReasonTimeout.String()
}
