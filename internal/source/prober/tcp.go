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

// relayProbe is the relay protocol of one connection to the first hop,
// without the connection: the request it sends, and what a reply (or a
// failed write or read) means. The Session's connection (session, below)
// and the continuous epoll loop (Exchange) both run it, so both accept
// and compute exactly the same.
type relayProbe struct {
	o       *Options
	sign    *frame.Signer
	id      uint64
	path    [1]uint64
	connect time.Duration
	buf     []byte
	// firstHop is the name the first hop reported on this connection;
	// cached what this probe last put into Options.Names.
	firstHop string
	cached   cachedName
	// reuse builds every sample's records and breakdown in arrays, valid
	// until the next probe of its kind: a Session's and the loop's
	// results hold a warm-up (arrays[0]) and a probe (arrays[1]) at most.
	// A run of several probes (Run) gives each sample its own.
	reuse  bool
	arrays [2]sampleArrays
}

// sampleArrays are what a sample's records and breakdown are built in.
type sampleArrays struct {
	records   []frame.HopRecord
	parsed    []frame.Record
	hops      []timing.Hop
	breakdown timing.Breakdown
}

// arraysOf are the arrays of probe seq's sample: one set for warm-ups
// (seq 0), one for probes.
func (p *relayProbe) arraysOf(seq uint64) *sampleArrays {
	if seq == 0 {
		return &p.arrays[0]
	}
	return &p.arrays[1]
}

func newRelayProbe(o *Options, connect time.Duration) *relayProbe {
	p := &relayProbe{o: o, sign: frame.NewSigner(o.Keys), id: peer.NewID(), connect: connect}
	p.path[0] = p.id
	return p
}

// session is the source's connection to the first hop of a relay chain.
type session struct {
	*relayProbe
	conn net.Conn
	rx   *rxstamp.Conn
	rd   *frame.Reader
	tcp  *tcpinfo.Reader
	// stopWake unregisters the wake-up on the dial's context: a
	// continuous session's context outlives every connection it opens.
	stopWake func() bool
}

// dialFailure is a failed connect to the first hop.
func dialFailure(o *Options, err error) *Failure {
	return &Failure{From: peer.Hop{Name: o.Source}, To: peer.Hop{Name: o.Names.get(o.Target)}, Reason: peer.ClassifyOr(err, peer.ReasonUnreachable), Message: fmt.Sprintf("connect to %s: %v", o.Target, err)}
}

func open(ctx context.Context, o *Options) (*session, *Failure) {
	budget, ok := probeBudget(ctx, o.Timeout)
	if !ok {
		return nil, &Failure{From: peer.Hop{Name: o.Source}, To: peer.Hop{Name: o.Names.get(o.Target)}, Reason: peer.ReasonTimeout, Message: "no time left before the deadline to connect"}
	}
	dctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	t0 := o.Clock.Monotonic()
	conn, err := o.dialer().DialContext(dctx, o.Target)
	if err != nil {
		return nil, dialFailure(o, err)
	}
	s := &session{relayProbe: newRelayProbe(o, time.Duration(o.Clock.Monotonic()-t0)), conn: conn, rx: rxstamp.Of(conn), rd: frame.NewReader(conn, o.maxFrame())}
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

// firstHopName is the first hop's name as this connection or an earlier
// run learnt it, else the target address.
func (p *relayProbe) firstHopName() string {
	if p.firstHop != "" {
		return p.firstHop
	}
	return p.o.Names.get(p.o.Target)
}

// fail is a failure of the segment from the source to the first hop.
func (p *relayProbe) fail(reason peer.Reason, format string, args ...any) *Failure {
	return &Failure{From: peer.Hop{ID: p.id, Name: p.o.Source}, To: peer.Hop{Name: p.firstHopName()}, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// request builds the request of probe seq, which may take budget, into
// the probe's buffer.
func (p *relayProbe) request(seq uint64, flags uint16, budget time.Duration) []byte {
	p.buf = frame.AppendZeroRequest(p.buf[:0], frame.KindProbeRequest,
		frame.ProbeHeader{Seq: seq, Flags: flags, BudgetMicros: uint32(max(budget*7/8/time.Microsecond, 1))},
		p.o.PayloadBytes, p.path[:], p.sign)
	return p.buf
}

// noTime is the failure of a probe the deadline left no time to send.
func (p *relayProbe) noTime() *Failure {
	return p.fail(peer.ReasonTimeout, "deadline reached before the probe was sent")
}

// writeFailed is the failure of a request that could not be written.
func (p *relayProbe) writeFailed(err error) *Failure {
	return p.fail(peer.ClassifyOr(err, peer.ReasonReset), "write to %s: %v", p.o.Target, err)
}

// readFailed is the failure of a reply that did not come within budget.
func (p *relayProbe) readFailed(err error, budget time.Duration) *Failure {
	reason := peer.ClassifyOr(err, peer.ReasonReset)
	f := p.fail(reason, "read from %s: %v", p.o.Target, err)
	if reason == peer.ReasonTimeout {
		f.Message = fmt.Sprintf("no reply from %s within %s", p.o.Target, budget.Round(time.Millisecond))
	}
	return f
}

// probe sends one probe and reads its reply.
func (s *session) probe(ctx context.Context, seq uint64, flags uint16) Sample {
	smp := Sample{Seq: seq}
	o := s.o
	budget, ok := probeBudget(ctx, o.Timeout)
	if !ok {
		smp.Failure = s.noTime()
		return smp
	}
	tBuild := o.Clock.Monotonic()
	wall := o.Clock.Wall()
	sync := o.Clock.Sync()
	req := s.request(seq, flags, budget)
	if err := s.conn.SetDeadline(time.Now().Add(budget)); err != nil {
		smp.Failure = s.fail(peer.Classify(err), "%v", err)
		return smp
	}
	tOut := o.Clock.Monotonic()
	if _, err := s.conn.Write(req); err != nil {
		smp.Failure = s.writeFailed(err)
		return smp
	}
	fr, rx, err := s.read()
	if err != nil {
		smp.Failure = s.readFailed(err, budget)
		return smp
	}
	s.reply(&smp, fr, s.ownRecord(seq, tBuild, tOut, wall, sync, rx), rx)
	return smp
}

// reply turns the reply frame of probe smp.Seq, which the kernel received
// at rx, into the sample: the hops' records after src, the source's own,
// and the breakdown.
func (p *relayProbe) reply(smp *Sample, fr []byte, src frame.HopRecord, rx rxstamp.Stamp) {
	p.decode(fr, smp.Seq, smp, src)
	smp.Records[0].Return = time.Duration(p.o.Clock.Monotonic() - rx.At)
	p.breakDown(smp)
	if len(smp.Records) > 1 {
		p.firstHop = smp.Records[1].Name
		p.o.Names.keep(p.o.Target, p.firstHop, &p.cached)
	}
}

// breakDown is breakDown (below) of a relay's records, into the probe's
// own arrays when it reuses them.
func (p *relayProbe) breakDown(smp *Sample) {
	what := func() string { return "reply from " + p.o.Target + ": the record" }
	if !p.reuse {
		breakDown(smp, timingHops(nil, smp.Records), nil, peer.ReasonBadFrame, what)
		return
	}
	a := p.arraysOf(smp.Seq)
	a.hops = timingHops(a.hops[:0], smp.Records)
	breakDown(smp, a.hops, &a.breakdown, peer.ReasonBadFrame, what)
}

// ownRecord is the source's own record of a probe: it built the request
// at tBuild, sent it at tOut, and the kernel received the reply at rx.
func (p *relayProbe) ownRecord(seq uint64, tBuild, tOut, wall int64, sync clock.Sync, rx rxstamp.Stamp) frame.HopRecord {
	replyIn := max(rx.At, tOut)
	src := frame.HopRecord{ID: p.id, Name: p.o.Source, Forward: time.Duration(tOut - tBuild), Downstream: time.Duration(replyIn - tOut),
		WaitReturn: rx.Wait, WallIn: wall, EstErrorMicros: sync.EstErrorMicros, MaxErrorMicros: sync.MaxErrorMicros}
	if rx.Kernel {
		src.Flags |= frame.RecKernelReply
	}
	if sync.Synced {
		src.Flags |= frame.RecSynced
	}
	if seq == 0 {
		src.Flags |= frame.RecDialed
		src.Connect = p.connect
	}
	return src
}

// attachTCP adds the kernel's view of the source's connection to the
// source's record of the last sample that has one. Read once, after the
// probes: the counters are the connection's (new for this run), so the
// last reading holds every retransmission of the run, and one getsockopt
// per run costs less than one per probe.
func (s *session) attachTCP(samples []Sample) {
	if s.tcp != nil {
		attachTCPInfo(s.tcp, samples)
	}
}

// annotate has nothing to add: relays report everything in their records.
func (s *session) annotate(*Result) {}

// attachTCPInfo adds one reading of the source's connection to the last
// sample that has records (both probers do).
func attachTCPInfo(tcp TCPInfoReader, samples []Sample) {
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
func timingHops(dst []timing.Hop, records []frame.HopRecord) []timing.Hop {
	for i := range records {
		r := &records[i]
		dst = append(dst, timing.Hop{Name: r.Name, Forward: r.Forward, Downstream: r.Downstream, Return: r.Return, WallIn: r.WallIn,
			Synced: r.Flags&frame.RecSynced != 0, MaxError: time.Duration(r.MaxErrorMicros) * time.Microsecond})
	}
	return dst
}

// breakDown is how both protocols turn a sample's records into segments
// and residences: the segment arithmetic (timing.Compute), which also
// holds every hop to what its near neighbour measured around it. A hop
// that claims more fails the sample on the segment into it, with reason
// (bad_frame for a relay's record, bad_header for a proxy's stamp), in
// place of any failure reported from behind it; its record and those
// after it are dropped, as nothing they say can be trusted. into, when
// set, is a breakdown whose slices are reused; what says what was
// refused (built only then).
func breakDown(smp *Sample, hops []timing.Hop, into *timing.Breakdown, reason peer.Reason, what func() string) {
	var err error
	if into != nil {
		err = timing.ComputeInto(into, hops)
		smp.Breakdown = *into
	} else {
		smp.Breakdown, err = timing.Compute(hops)
	}
	if err == nil {
		return
	}
	var oc *timing.Overclaim // (on the heap: declared only for a refusal)
	if !errors.As(err, &oc) {
		return
	}
	far := smp.Records[oc.Far]
	smp.Records = smp.Records[:oc.Far]
	near := oc.Far - 1
	smp.Failure = &Failure{FromIndex: near, From: peerOf(&smp.Records[near]), To: peerOf(&far), Reason: reason,
		Message: fmt.Sprintf("%s of hop %d (%s) was refused: %v", what(), oc.Far, far.Name, oc)}
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
func (p *relayProbe) decode(fr []byte, seq uint64, smp *Sample, src frame.HopRecord) {
	o := p.o
	expect := frame.Expect{Request: frame.KindProbeRequest, Seq: seq}
	var rep frame.Reply
	var recs []frame.Record
	var err error
	if p.reuse {
		a := p.arraysOf(seq)
		smp.Records = append(a.records[:0], src)
		defer func() { a.records = smp.Records }()
		rep, a.parsed, err = frame.CheckReplyInto(fr, p.sign, o.maxFrame(), expect, a.parsed)
		recs = a.parsed
	} else {
		smp.Records = []frame.HopRecord{src}
		rep, recs, err = frame.CheckReplyInto(fr, p.sign, o.maxFrame(), expect, nil)
	}
	if rec := rep.Refusal; rec != nil {
		smp.Failure = &Failure{From: peer.Hop{ID: p.id, Name: o.Source}, To: peer.Hop{ID: rec.ID, Name: rec.Name}, Reason: rec.Reason, Message: rec.Message}
		if rep.Unverified {
			// The first hop refused us and signs with another key (or none).
			smp.Failure.Reason = peer.ReasonAuth
			smp.Failure.Message = fmt.Sprintf("%v; the unverified error frame from %s said: %s", err, rec.Name, rec.Message)
		}
		return
	}
	if err != nil {
		p.refused(smp, rep.View, recs, err)
		return
	}
	for i := range recs {
		r := &recs[i]
		switch r.Kind {
		case frame.RecordHop:
			smp.Records = append(smp.Records, r.Hop)
		case frame.RecordError:
			if i != len(recs)-1 {
				smp.Failure = p.fail(peer.ReasonBadFrame, "reply from %s has an error record before its last record", o.Target)
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
		smp.Failure = p.fail(peer.ReasonBadFrame, "reply from %s carries %d payload bytes, sent %d", o.Target, rep.View.Probe.DataLen, o.PayloadBytes)
		return
	}
	last := smp.Records[len(smp.Records)-1]
	switch {
	case last.Flags&frame.RecEnd != 0:
	case last.Flags&frame.RecStripped != 0:
		smp.Records = append(smp.Records, frame.HopRecord{Name: HiddenHop, Flags: frame.RecEnd})
	default:
		smp.Failure = p.fail(peer.ReasonBadFrame, "reply from %s ends without the end host's record", o.Target)
	}
}

// refused reports a reply the source could not accept. When one hop's
// record was refused, the records before it are trusted, and the failed
// segment is the one into the hop whose record was refused, which is named
// by its position: its own name is not trusted.
func (p *relayProbe) refused(smp *Sample, v frame.View, recs []frame.Record, err error) {
	reason := peer.ClassifyOr(err, peer.ReasonBadFrame)
	var br *frame.BadRecord
	if !errors.As(err, &br) || v.TailOff == 0 {
		smp.Failure = p.fail(reason, "reply from %s: %v", p.o.Target, err)
		return
	}
	if br.Index == 0 {
		smp.Failure = p.fail(reason, "reply from %s: the record of hop 1 (the first hop) was refused: %v", p.o.Target, br.Err)
		return
	}
	for i := range recs {
		if recs[i].Kind != frame.RecordHop {
			break
		}
		smp.Records = append(smp.Records, recs[i].Hop)
	}
	from := len(smp.Records) - 1
	smp.Failure = &Failure{FromIndex: from, From: peerOf(&smp.Records[from]), To: peer.Hop{Name: fmt.Sprintf("hop%d", from+1)}, Reason: reason,
		Message: fmt.Sprintf("reply from %s: the record of hop %d (after %s) was refused: %v", p.o.Target, from+1, smp.Records[from].Name, br.Err)}
}

func peerOf(r *frame.HopRecord) peer.Hop { return peer.Hop{ID: r.ID, Name: r.Name} }

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
		f.FromIndex, f.From, f.To = prev, peerOf(&hops[prev]), peer.Hop{ID: e.ID, Name: e.Name}
	default:
		from := len(hops) - 1
		if rep > 0 {
			from = rep
		}
		f.FromIndex, f.From, f.To = from, peerOf(&hops[from]), peer.Hop{Name: e.Peer}
	}
	return f
}
