// Package prober is the source end of a chain: it opens one connection to
// the first hop, sends a warm-up probe that opens every downstream
// connection (and reports their connect times), then the measured probes,
// and turns what the hops stamped into per-segment and per-hop statistics.
// The exporter, the probe command and the Nagios check all run it.
package prober

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/subsegment/subsegment_exporter/clock"
	"github.com/subsegment/subsegment_exporter/frame"
	"github.com/subsegment/subsegment_exporter/relay"
	"github.com/subsegment/subsegment_exporter/tcpinfo"
	"github.com/subsegment/subsegment_exporter/timing"
)

// HiddenHop names what lies beyond a relay running with
// --remove-perf-headers: its downstream time is reported as one segment.
const HiddenHop = "hidden"

// Options describe one run of probes through a chain.
type Options struct {
	// Target is the first hop, host:port.
	Target string
	// Source names hop 0, this process, in segment labels.
	Source string
	// Count is the number of measured probes (the warm-up comes on top).
	Count    int
	Interval time.Duration
	// PayloadBytes pads every probe so that an MTU/MSS black hole on a
	// segment makes that segment fail.
	PayloadBytes int
	// Timeout bounds each probe's round trip; the context's deadline
	// bounds the whole run.
	Timeout       time.Duration
	MaxFrameBytes int
	Keys          frame.Keys
	Clock         clock.Clock
	Dial          func(ctx context.Context, address string) (net.Conn, error)
	// AnnotateWarmup asks every hop to attach its local variables to the
	// warm-up probe's record.
	AnnotateWarmup bool
	// AnnotateAfter, when it returns true for the measured result, sends
	// one more probe asking for the hops' local variables.
	AnnotateAfter func(*Result) bool
	// Names remembers hop names across runs, to name a first hop that
	// cannot be reached; may be nil.
	Names  *NameCache
	Logger *slog.Logger
}

// Validate reports the first bad option.
func (o *Options) Validate() error {
	if err := relay.ValidateAddress(o.Target); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if err := relay.ValidateName(o.Source); err != nil {
		return fmt.Errorf("source name: %w", err)
	}
	if o.Count < 1 || o.Count > 10000 {
		return fmt.Errorf("probe count %d out of range: use 1 to 10000", o.Count)
	}
	if o.Interval < 0 {
		return fmt.Errorf("probe interval %v is negative", o.Interval)
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("probe timeout %v must be positive", o.Timeout)
	}
	if o.PayloadBytes < 0 || o.PayloadBytes > frame.MaxPayloadBytes {
		return fmt.Errorf("payload of %d bytes out of range: use 0 to %d", o.PayloadBytes, frame.MaxPayloadBytes)
	}
	if max := o.maxFrame(); RequestOverhead+o.PayloadBytes > max || ReplyOverhead+o.PayloadBytes > max {
		return fmt.Errorf("payload of %d bytes does not fit the maximum frame size of %d bytes with the chain's records (%d bytes at most with 32 hops): lower payload_bytes or raise --relay.max-frame-bytes on every hop and the source",
			o.PayloadBytes, max, max-ReplyOverhead)
	}
	return nil
}

// Overheads of a probe frame besides its payload, for the default maximum
// of 32 hops, each with a record without variables.
const (
	RequestOverhead = frame.MinFrameLen + frame.DefaultMaxHops*frame.PathEntryLen + frame.MACLen
	ReplyOverhead   = frame.MinFrameLen + frame.DefaultMaxHops*(frame.MaxHopRecordLen-frame.MaxVars*(1+frame.MaxNameLen+8)) + frame.MACLen + 1024
)

func (o *Options) maxFrame() int {
	if o.MaxFrameBytes > 0 {
		return o.MaxFrameBytes
	}
	return frame.DefaultMaxFrameBytes
}

// NameCache remembers, per target, the name its first hop reported.
type NameCache struct{ m sync.Map }

func (c *NameCache) get(target string) string {
	if c != nil {
		if v, ok := c.m.Load(target); ok {
			return v.(string)
		}
	}
	return target
}

func (c *NameCache) put(target, name string) {
	if c != nil && name != "" {
		c.m.Store(target, name)
	}
}

// Failure locates where the chain broke.
type Failure struct {
	From, To string
	// FromIndex is the position of From in the chain (0 = source).
	FromIndex int
	Reason    frame.Reason
	Message   string
}

func (f *Failure) Error() string {
	return fmt.Sprintf("segment %s → %s failed (%s): %s", f.From, f.To, f.Reason, f.Message)
}

// Sample is one probe's result.
type Sample struct {
	Seq    uint64
	Warmup bool
	// Records holds the source's own record first, then one per hop that
	// answered, in chain order.
	Records   []frame.HopRecord
	Breakdown timing.Breakdown
	Failure   *Failure
}

// Run sends the probes and summarises them. It always returns a result; a
// broken chain is reported in Result.Failure, never as a Go error.
func Run(ctx context.Context, o Options) *Result {
	start := time.Now()
	if o.Clock == nil {
		o.Clock = clock.NewSystem()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	res := &Result{Target: o.Target, Source: o.Source}
	defer func() { res.Duration = time.Since(start) }()
	if err := o.Validate(); err != nil {
		res.setFailure(&Failure{From: o.Source, To: o.Target, Reason: frame.ReasonUnknown, Message: err.Error()})
		return res
	}
	s, fail := open(ctx, &o)
	if fail != nil {
		res.setFailure(fail)
		o.Logger.Info("first hop unreachable", "target", o.Target, "reason", fail.Reason, "err", fail.Message)
		return res
	}
	defer s.close()

	var samples []Sample
	warm := s.probe(ctx, 0, frame.ProbeWarmup|annotateFlag(o.AnnotateWarmup))
	warm.Warmup = true
	samples = append(samples, warm)
	if warm.Failure == nil {
		slowest := warm.Breakdown.RoundTrip
		for seq := uint64(1); seq <= uint64(o.Count); seq++ {
			if seq > 1 && !res.fits(ctx, slowest+o.Interval) {
				// A slow chain, not a broken one: stop before a probe that
				// cannot come back before the deadline.
				res.Truncated = true
				o.Logger.Info("stopping early: no time left for another probe", "probes", seq-1, "slowest_round_trip", slowest)
				break
			}
			if seq > 1 && o.Interval > 0 {
				if !sleep(ctx, o.Interval) {
					break
				}
			}
			smp := s.probe(ctx, seq, 0)
			samples = append(samples, smp)
			if smp.Failure != nil {
				o.Logger.Info("probe failed", "seq", seq, "err", smp.Failure.Error())
				break
			}
			slowest = max(slowest, smp.Breakdown.RoundTrip)
			o.Logger.Debug("probe", "seq", seq, "round_trip", smp.Breakdown.RoundTrip, "segments", describe(smp))
		}
	} else {
		o.Logger.Info("warm-up probe failed", "err", warm.Failure.Error())
	}
	res.summarise(samples)
	if res.Failure == nil && o.AnnotateAfter != nil && o.AnnotateAfter(res) {
		ann := s.probe(ctx, uint64(o.Count)+1, frame.ProbeAnnotate)
		if ann.Failure == nil {
			res.addVars(ann.Records)
		} else {
			o.Logger.Info("annotation probe failed", "err", ann.Failure.Error())
		}
	}
	return res
}

// fits reports whether a probe taking about need still ends before the
// context's deadline, with a margin.
func (r *Result) fits(ctx context.Context, need time.Duration) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) > need*3/2
}

// describe lists a probe's segment rtts for the log.
func describe(smp Sample) string {
	var b strings.Builder
	for i, seg := range smp.Breakdown.Segments {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s>%s=%s", smp.Records[seg.From].Name, smp.Records[seg.To].Name, seg.RTT)
	}
	return b.String()
}

func annotateFlag(on bool) uint16 {
	if on {
		return frame.ProbeAnnotate
	}
	return 0
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// session is the source's connection to the first hop.
type session struct {
	o       *Options
	conn    net.Conn
	rd      *frame.Reader
	tcp     *tcpinfo.Reader
	sign    *frame.Signer
	id      uint64
	connect time.Duration
	buf     []byte
	// firstHop is the name the first hop reported in this session.
	firstHop string
}

func open(ctx context.Context, o *Options) (*session, *Failure) {
	budget, ok := probeBudget(ctx, o.Timeout)
	if !ok {
		return nil, &Failure{From: o.Source, To: o.Names.get(o.Target), Reason: frame.ReasonTimeout, Message: "no time left before the deadline to connect"}
	}
	dial := o.Dial
	if dial == nil {
		dial = func(ctx context.Context, address string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", address)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	t0 := o.Clock.Monotonic()
	conn, err := dial(dctx, o.Target)
	if err != nil {
		reason := relay.Classify(err)
		if reason == frame.ReasonUnknown {
			reason = frame.ReasonUnreachable
		}
		return nil, &Failure{From: o.Source, To: o.Names.get(o.Target), Reason: reason, Message: fmt.Sprintf("connect to %s: %v", o.Target, err)}
	}
	s := &session{o: o, conn: conn, rd: frame.NewReader(conn, o.maxFrame()), sign: frame.NewSigner(o.Keys), id: relay.NewID(),
		connect: time.Duration(o.Clock.Monotonic() - t0)}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	s.tcp, _ = tcpinfo.NewReader(conn)
	context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	return s, nil
}

func (s *session) close() {
	s.conn.Close()
	s.rd.Release()
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

// probe sends one probe and reads its reply.
func (s *session) probe(ctx context.Context, seq uint64, flags uint16) Sample {
	smp := Sample{Seq: seq}
	o := s.o
	firstHop := func() string {
		if s.firstHop != "" {
			return s.firstHop
		}
		return o.Names.get(o.Target)
	}
	budget, ok := probeBudget(ctx, o.Timeout)
	if !ok {
		smp.Failure = &Failure{From: o.Source, To: firstHop(), Reason: frame.ReasonTimeout, Message: "deadline reached before the probe was sent"}
		return smp
	}
	tBuild := o.Clock.Monotonic()
	wall := o.Clock.Wall()
	sync := o.Clock.Sync()
	s.buf = frame.AppendZeroRequest(s.buf[:0], frame.KindProbeRequest,
		frame.ProbeHeader{Seq: seq, Flags: flags, BudgetMicros: uint32(max(budget*7/8/time.Microsecond, 1))},
		o.PayloadBytes, []uint64{s.id}, s.sign)
	deadline := time.Now().Add(budget)
	if err := s.conn.SetDeadline(deadline); err != nil {
		smp.Failure = &Failure{From: o.Source, To: firstHop(), Reason: relay.Classify(err), Message: err.Error()}
		return smp
	}
	tOut := o.Clock.Monotonic()
	if _, err := s.conn.Write(s.buf); err != nil {
		smp.Failure = &Failure{From: o.Source, To: firstHop(), Reason: reasonOr(err, frame.ReasonReset), Message: fmt.Sprintf("write to %s: %v", o.Target, err)}
		return smp
	}
	fr, tIn, err := s.read()
	if err != nil {
		reason := reasonOr(err, frame.ReasonReset)
		msg := fmt.Sprintf("read from %s: %v", o.Target, err)
		if reason == frame.ReasonTimeout {
			msg = fmt.Sprintf("no reply from %s within %s", o.Target, budget.Round(time.Millisecond))
		}
		smp.Failure = &Failure{From: o.Source, To: firstHop(), Reason: reason, Message: msg}
		return smp
	}
	srcTCP, tcpErr := frame.TCPInfo{}, errors.ErrUnsupported
	if s.tcp != nil {
		srcTCP, tcpErr = s.tcp.Read()
	}
	src := frame.HopRecord{ID: s.id, Name: o.Source, Forward: time.Duration(tOut - tBuild), Downstream: time.Duration(tIn - tOut),
		WallIn: wall, EstErrorMicros: sync.EstErrorMicros, MaxErrorMicros: sync.MaxErrorMicros}
	if sync.Synced {
		src.Flags |= frame.RecSynced
	}
	if tcpErr == nil {
		src.Flags |= frame.RecTCPInfo
		src.TCP = srcTCP
	}
	if seq == 0 {
		src.Flags |= frame.RecDialed
		src.Connect = s.connect
	}
	s.decode(fr, seq, &smp, src)
	smp.Records[0].Return = time.Duration(o.Clock.Monotonic() - tIn)
	hops := make([]timing.Hop, len(smp.Records))
	for i, r := range smp.Records {
		hops[i] = timing.Hop{Name: r.Name, Forward: r.Forward, Downstream: r.Downstream, Return: r.Return, WallIn: r.WallIn,
			Synced: r.Flags&frame.RecSynced != 0, MaxError: time.Duration(r.MaxErrorMicros) * time.Microsecond}
	}
	smp.Breakdown = timing.Compute(hops)
	if len(smp.Records) > 1 {
		s.firstHop = smp.Records[1].Name
		o.Names.put(o.Target, s.firstHop)
	}
	return smp
}

func (s *session) read() ([]byte, int64, error) {
	if err := s.rd.Fill(); err != nil {
		return nil, 0, err
	}
	tIn := s.o.Clock.Monotonic()
	fr, err := s.rd.Next()
	if err != nil {
		return nil, 0, err
	}
	return fr, tIn, nil
}

func reasonOr(err error, fallback frame.Reason) frame.Reason {
	if r := relay.Classify(err); r != frame.ReasonUnknown {
		return r
	}
	return fallback
}

// decode fills smp from a reply frame; src is the source's own record.
func (s *session) decode(fr []byte, seq uint64, smp *Sample, src frame.HopRecord) {
	o := s.o
	smp.Records = []frame.HopRecord{src}
	firstHop := o.Names.get(o.Target)
	bad := func(reason frame.Reason, format string, args ...any) {
		smp.Failure = &Failure{From: o.Source, To: firstHop, Reason: reason, Message: fmt.Sprintf(format, args...)}
	}
	if err := s.sign.Verify(fr); err != nil {
		if rec, perr := frame.ParseErrorFrame(fr, o.maxFrame()); perr == nil {
			// The first hop refused us and signs with another key (or none).
			smp.Failure = &Failure{From: o.Source, To: rec.Name, Reason: frame.ReasonAuth,
				Message: fmt.Sprintf("%v; the unverified error frame from %s said: %s", err, rec.Name, rec.Message)}
			return
		}
		bad(relay.Classify(err), "reply from %s: %v", o.Target, err)
		return
	}
	h, _ := frame.ParseHeader(fr, o.maxFrame())
	if h.Kind == frame.KindError {
		rec, err := frame.ParseErrorFrame(fr, o.maxFrame())
		if err != nil {
			bad(frame.ReasonBadFrame, "error frame from %s: %v", o.Target, err)
			return
		}
		smp.Failure = &Failure{From: o.Source, To: rec.Name, Reason: rec.Reason, Message: rec.Message}
		return
	}
	v, err := frame.Parse(fr, o.maxFrame(), frame.MaxHopsLimit)
	if err != nil {
		bad(frame.ReasonBadFrame, "reply from %s: %v", o.Target, err)
		return
	}
	if v.Header.Kind != frame.KindProbeReply || v.Probe.Seq != seq {
		bad(frame.ReasonBadFrame, "reply from %s: %s seq %d does not answer probe %d", o.Target, v.Header.Kind, v.Probe.Seq, seq)
		return
	}
	recs, err := frame.ParseRecords(v.Tail(fr), int(v.Probe.Count))
	if err != nil {
		bad(frame.ReasonBadFrame, "reply from %s: %v", o.Target, err)
		return
	}
	for i, r := range recs {
		switch r.Kind {
		case frame.RecordHop:
			smp.Records = append(smp.Records, r.Hop)
		case frame.RecordError:
			if i != len(recs)-1 {
				bad(frame.ReasonBadFrame, "reply from %s has an error record before its last record", o.Target)
				return
			}
			smp.Failure = locate(smp.Records, r.Err)
		}
	}
	if smp.Failure != nil {
		// Error replies carry no padding: the hop that answered dropped it.
		return
	}
	if int(v.Probe.DataLen) != o.PayloadBytes {
		bad(frame.ReasonBadFrame, "reply from %s carries %d payload bytes, sent %d", o.Target, v.Probe.DataLen, o.PayloadBytes)
		return
	}
	last := smp.Records[len(smp.Records)-1]
	switch {
	case last.Flags&frame.RecEnd != 0:
	case last.Flags&frame.RecStripped != 0:
		smp.Records = append(smp.Records, frame.HopRecord{Name: HiddenHop, Flags: frame.RecEnd})
	default:
		bad(frame.ReasonBadFrame, "reply from %s ends without the end host's record", o.Target)
	}
}

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
		f.From, f.FromIndex, f.To = hops[prev].Name, prev, e.Name
	default:
		from := len(hops) - 1
		if rep > 0 {
			from = rep
		}
		f.From, f.FromIndex, f.To = hops[from].Name, from, e.Peer
	}
	return f
}
