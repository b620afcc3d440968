package prober

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/source/timing"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
)

// session is the source's connection to the first hop of a relay chain.
type session struct {
	o       *Options
	conn    net.Conn
	rx      *rxstamp.Conn
	rd      *frame.Reader
	tcp     *tcpinfo.Reader
	sign    *frame.Signer
	id      uint64
	connect time.Duration
	buf     []byte
	// firstHop is the name the first hop reported in this session.
	firstHop string
	// stopWake unregisters the wake-up on the dial's context: a
	// continuous session's context outlives every connection it opens.
	stopWake func() bool
}

func open(ctx context.Context, o *Options) (*session, *Failure) {
	src := peer.Hop{Name: o.Source}
	budget, ok := probeBudget(ctx, o.Timeout)
	if !ok {
		return nil, &Failure{From: src, To: peer.Hop{Name: o.Names.get(o.Target)}, Reason: peer.ReasonTimeout, Message: "no time left before the deadline to connect"}
	}
	dctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	t0 := o.Clock.Monotonic()
	conn, err := o.dialer().DialContext(dctx, o.Target)
	if err != nil {
		return nil, &Failure{From: src, To: peer.Hop{Name: o.Names.get(o.Target)}, Reason: peer.ClassifyOr(err, peer.ReasonUnreachable), Message: fmt.Sprintf("connect to %s: %v", o.Target, err)}
	}
	s := &session{o: o, conn: conn, rx: rxstamp.Of(conn), rd: frame.NewReader(conn, o.maxFrame()), sign: frame.NewSigner(o.Keys), id: peer.NewID(),
		connect: time.Duration(o.Clock.Monotonic() - t0)}
	s.tcp, _ = tcpinfo.NewReader(conn)
	s.stopWake = wakeOnDone(ctx, conn)
	return s, nil
}

func (s *session) close() {
	s.stopWake()
	s.conn.Close()
	s.rd.Release()
}

// wakeOnDone makes a blocked read or write on conn return when ctx ends.
// The caller must call the returned stop when it closes conn: a context
// that outlives the connection (a continuous session's) would otherwise
// keep the registration, and the connection with it, until it ends.
func wakeOnDone(ctx context.Context, conn net.Conn) func() bool {
	return context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
}

// probeBudget is the time one probe may take: the per-probe timeout, cut
// down to what is left of the context's deadline.
func probeBudget(ctx context.Context, timeout time.Duration) (time.Duration, bool) {
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return 0, false
		}
		timeout = min(timeout, left)
	}
	return timeout, true
}

// firstHopName is the first hop's name as this session or an earlier run
// learnt it, else the target address.
func (s *session) firstHopName() string {
	if s.firstHop != "" {
		return s.firstHop
	}
	return s.o.Names.get(s.o.Target)
}

// fail is a failure of the segment from the source to the first hop.
func (s *session) fail(reason peer.Reason, format string, args ...any) *Failure {
	return &Failure{From: peer.Hop{ID: s.id, Name: s.o.Source}, To: peer.Hop{Name: s.firstHopName()}, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// probe sends one probe and reads its reply.
func (s *session) probe(ctx context.Context, seq uint64, flags uint16) Sample {
	smp := Sample{Seq: seq}
	o := s.o
	budget, ok := probeBudget(ctx, o.Timeout)
	if !ok {
		smp.Failure = s.fail(peer.ReasonTimeout, "deadline reached before the probe was sent")
		return smp
	}
	tBuild := o.Clock.Monotonic()
	wall := o.Clock.Wall()
	sync := o.Clock.Sync()
	s.buf = frame.AppendZeroRequest(s.buf[:0], frame.KindProbeRequest,
		frame.ProbeHeader{Seq: seq, Flags: flags, BudgetMicros: uint32(max(budget*7/8/time.Microsecond, 1))},
		o.PayloadBytes, []uint64{s.id}, s.sign)
	if err := s.conn.SetDeadline(time.Now().Add(budget)); err != nil {
		smp.Failure = s.fail(peer.Classify(err), "%v", err)
		return smp
	}
	tOut := o.Clock.Monotonic()
	if _, err := s.conn.Write(s.buf); err != nil {
		smp.Failure = s.fail(peer.ClassifyOr(err, peer.ReasonReset), "write to %s: %v", o.Target, err)
		return smp
	}
	fr, rx, err := s.read()
	if err != nil {
		reason := peer.ClassifyOr(err, peer.ReasonReset)
		smp.Failure = s.fail(reason, "read from %s: %v", o.Target, err)
		if reason == peer.ReasonTimeout {
			smp.Failure.Message = fmt.Sprintf("no reply from %s within %s", o.Target, budget.Round(time.Millisecond))
		}
		return smp
	}
	src := s.ownRecord(seq, tBuild, tOut, wall, sync, rx)
	s.decode(fr, seq, &smp, src)
	smp.Records[0].Return = time.Duration(o.Clock.Monotonic() - rx.At)
	breakDown(&smp, timingHops(smp.Records), peer.ReasonBadFrame, "reply from "+o.Target+": the record")
	if len(smp.Records) > 1 {
		s.firstHop = smp.Records[1].Name
		o.Names.put(o.Target, s.firstHop)
	}
	return smp
}

// ownRecord is the source's own record of a probe: it built the request
// at tBuild, sent it at tOut, and the kernel received the reply at rx.
func (s *session) ownRecord(seq uint64, tBuild, tOut, wall int64, sync clock.Sync, rx rxstamp.Stamp) frame.HopRecord {
	replyIn := max(rx.At, tOut)
	src := frame.HopRecord{ID: s.id, Name: s.o.Source, Forward: time.Duration(tOut - tBuild), Downstream: time.Duration(replyIn - tOut),
		WaitReturn: rx.Wait, WallIn: wall, EstErrorMicros: sync.EstErrorMicros, MaxErrorMicros: sync.MaxErrorMicros}
	if rx.Kernel {
		src.Flags |= frame.RecKernelReply
	}
	if sync.Synced {
		src.Flags |= frame.RecSynced
	}
	if seq == 0 {
		src.Flags |= frame.RecDialed
		src.Connect = s.connect
	}
	return src
}

// attachTCP adds the kernel's view of the source's connection to the
// source's record of the last sample that has one. Read once, after the
// probes: the counters are the connection's (new for this run), so the
// last reading holds every retransmission of the run, and one getsockopt
// per run costs less than one per probe.
func (s *session) attachTCP(samples []Sample) { attachTCPInfo(s.tcp, samples) }

// annotate has nothing to add: relays report everything in their records.
func (s *session) annotate(*Result) {}

// attachTCPInfo adds one reading of the source's connection to the last
// sample that has records (both probers do).
func attachTCPInfo(tcp *tcpinfo.Reader, samples []Sample) {
	if tcp == nil {
		return
	}
	for i := len(samples) - 1; i >= 0; i-- {
		if len(samples[i].Records) == 0 {
			continue
		}
		if info, err := tcp.Read(); err == nil {
			src := &samples[i].Records[0]
			src.Flags |= frame.RecTCPInfo
			src.TCP = info
		}
		return
	}
}

// timingHops is what the segment arithmetic needs of the records.
func timingHops(records []frame.HopRecord) []timing.Hop {
	hops := make([]timing.Hop, len(records))
	for i, r := range records {
		hops[i] = timing.Hop{Name: r.Name, Forward: r.Forward, Downstream: r.Downstream, Return: r.Return, WallIn: r.WallIn,
			Synced: r.Flags&frame.RecSynced != 0, MaxError: time.Duration(r.MaxErrorMicros) * time.Microsecond}
	}
	return hops
}

// breakDown is how both protocols turn a sample's records into segments
// and residences: the segment arithmetic (timing.Compute), which also
// holds every hop to what its near neighbour measured around it. A hop
// that claims more fails the sample on the segment into it, with reason
// (bad_frame for a relay's record, bad_header for a proxy's stamp), in
// place of any failure reported from behind it; its record and those
// after it are dropped, as nothing they say can be trusted.
func breakDown(smp *Sample, hops []timing.Hop, reason peer.Reason, what string) {
	b, err := timing.Compute(hops)
	smp.Breakdown = b
	var oc *timing.Overclaim
	if !errors.As(err, &oc) {
		return
	}
	far := smp.Records[oc.Far]
	smp.Records = smp.Records[:oc.Far]
	near := oc.Far - 1
	smp.Failure = &Failure{FromIndex: near, From: peerOf(smp.Records[near]), To: peerOf(far), Reason: reason,
		Message: fmt.Sprintf("%s of hop %d (%s) was refused: %v", what, oc.Far, far.Name, oc)}
}

// read waits for the next reply and says when the kernel received it.
func (s *session) read() ([]byte, rxstamp.Stamp, error) {
	if err := s.rd.Fill(); err != nil {
		return nil, rxstamp.Stamp{}, err
	}
	rx := rxstamp.Stamp{At: s.o.Clock.Monotonic()}
	if s.rx != nil {
		rx = s.rx.Last()
	}
	fr, err := s.rd.Next()
	if err != nil {
		return nil, rxstamp.Stamp{}, err
	}
	return fr, rx, nil
}

// decode fills smp from a reply frame, accepted by the rules every
// receiver of replies applies (frame.CheckReply); src is the source's own
// record.
func (s *session) decode(fr []byte, seq uint64, smp *Sample, src frame.HopRecord) {
	o := s.o
	smp.Records = []frame.HopRecord{src}
	rep, err := frame.CheckReply(fr, s.sign, o.maxFrame(), frame.Expect{Request: frame.KindProbeRequest, Seq: seq})
	if rec := rep.Refusal; rec != nil {
		smp.Failure = &Failure{From: peer.Hop{ID: s.id, Name: o.Source}, To: peer.Hop{ID: rec.ID, Name: rec.Name}, Reason: rec.Reason, Message: rec.Message}
		if rep.Unverified {
			// The first hop refused us and signs with another key (or none).
			smp.Failure.Reason = peer.ReasonAuth
			smp.Failure.Message = fmt.Sprintf("%v; the unverified error frame from %s said: %s", err, rec.Name, rec.Message)
		}
		return
	}
	if err != nil {
		s.refused(smp, fr, rep.View, err)
		return
	}
	recs, _ := frame.ParseRecords(rep.View.Tail(fr), int(rep.View.Probe.Count))
	for i, r := range recs {
		switch r.Kind {
		case frame.RecordHop:
			smp.Records = append(smp.Records, r.Hop)
		case frame.RecordError:
			if i != len(recs)-1 {
				smp.Failure = s.fail(peer.ReasonBadFrame, "reply from %s has an error record before its last record", o.Target)
				return
			}
			smp.Failure = locate(smp.Records, r.Err)
		}
	}
	if smp.Failure != nil {
		// Error replies carry no padding: the hop that answered dropped it.
		return
	}
	if int(rep.View.Probe.DataLen) != o.PayloadBytes {
		smp.Failure = s.fail(peer.ReasonBadFrame, "reply from %s carries %d payload bytes, sent %d", o.Target, rep.View.Probe.DataLen, o.PayloadBytes)
		return
	}
	last := smp.Records[len(smp.Records)-1]
	switch {
	case last.Flags&frame.RecEnd != 0:
	case last.Flags&frame.RecStripped != 0:
		smp.Records = append(smp.Records, frame.HopRecord{Name: HiddenHop, Flags: frame.RecEnd})
	default:
		smp.Failure = s.fail(peer.ReasonBadFrame, "reply from %s ends without the end host's record", o.Target)
	}
}

// refused reports a reply the source could not accept. When one hop's
// record was refused, the records before it are trusted, and the failed
// segment is the one into the hop whose record was refused, which is named
// by its position: its own name is not trusted.
func (s *session) refused(smp *Sample, fr []byte, v frame.View, err error) {
	reason := peer.ClassifyOr(err, peer.ReasonBadFrame)
	var br *frame.BadRecord
	if !errors.As(err, &br) || v.TailOff == 0 {
		smp.Failure = s.fail(reason, "reply from %s: %v", s.o.Target, err)
		return
	}
	if br.Index == 0 {
		smp.Failure = s.fail(reason, "reply from %s: the record of hop 1 (the first hop) was refused: %v", s.o.Target, br.Err)
		return
	}
	recs, _ := frame.ParseRecords(v.Tail(fr), int(v.Probe.Count))
	for _, r := range recs {
		if r.Kind != frame.RecordHop {
			break
		}
		smp.Records = append(smp.Records, r.Hop)
	}
	from := len(smp.Records) - 1
	smp.Failure = &Failure{FromIndex: from, From: peerOf(smp.Records[from]), To: peer.Hop{Name: fmt.Sprintf("hop%d", from+1)}, Reason: reason,
		Message: fmt.Sprintf("reply from %s: the record of hop %d (after %s) was refused: %v", s.o.Target, from+1, smp.Records[from].Name, br.Err)}
}

func peerOf(r frame.HopRecord) peer.Hop { return peer.Hop{ID: r.ID, Name: r.Name} }

// locate turns an error record into the failed segment. The records before
// it are the hops that answered, in order.
func locate(hops []frame.HopRecord, e frame.ErrorRecord) *Failure {
	// Index of the reporting hop's own record, if it attached one.
	rep := -1
	for i, h := range hops {
		if h.ID == e.ID && i > 0 {
			rep = i
		}
	}
	f := &Failure{Reason: e.Reason, Message: e.Message}
	switch e.Side {
	case frame.SideUpstream:
		prev := len(hops) - 1
		if rep > 0 {
			prev = rep - 1
		}
		f.FromIndex, f.From, f.To = prev, peerOf(hops[prev]), peer.Hop{ID: e.ID, Name: e.Name}
	default:
		from := len(hops) - 1
		if rep > 0 {
			from = rep
		}
		f.FromIndex, f.From, f.To = from, peerOf(hops[from]), peer.Hop{Name: e.Peer}
	}
	return f
}
