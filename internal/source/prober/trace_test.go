package prober

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
	"github.com/subsegment/subsegment_exporter/relay"
)

func newTracer(t *testing.T) *trace.Tracer {
	t.Helper()
	tr, err := trace.NewTracer(trace.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func wantMethod() string {
	if os.Geteuid() == 0 {
		return "tcp"
	}
	return "udp"
}

// Every segment of a traced run has its path, traced by its near end on
// its own connection: on loopback the far end answers the first TTL. A
// stripping relay's segment to what it hides has its own trace too.
func TestRunTracesEverySegment(t *testing.T) { chaintest.ForEachEngine(t, testRunTracesEverySegment) }

func testRunTracesEverySegment(t *testing.T) {
	tr := newTracer(t)
	target := chaintest.Chain(t, chaintest.ChainOptions{Template: relay.Config{Tracer: tr}, Configure: func(name string, cfg *relay.Config) {
		cfg.RemovePerfHeaders = name == "c"
	}}, "b", "c", "d", "z")
	o := opts(target)
	o.Count = 2
	o.Trace = &TraceOptions{Tracer: tr}
	r := run(t, o)
	if !r.Success {
		t.Fatalf("probe failed: %+v", r.Failure)
	}
	if r.Probes != 2 {
		t.Errorf("%d probes counted: the trace request must not count", r.Probes)
	}
	for _, s := range r.Segments {
		f := s.PathFlow
		if f == nil {
			t.Fatalf("%s -> %s: no path", s.From, s.To)
		}
		t.Logf("%s -> %s: %+v %+v", s.From, s.To, *f, s.Path)
		if f.Protocol != wantMethod() || f.Status != "reached" || !f.Reached || len(s.Path) != 1 || s.Path[0].Address == nil ||
			*s.Path[0].Address != "127.0.0.1" || s.Path[0].RTT == nil || s.Path[0].LossRatio != 0 || f.RemotePort == 0 || f.Fingerprint == "" {
			t.Errorf("%s -> %s: flow %+v, path %+v", s.From, s.To, f, s.Path)
		}
		if s.WirePath() == nil {
			t.Errorf("%s -> %s: no wire path", s.From, s.To)
		}
	}

	// When says no: nothing is traced.
	o.Trace.When = func(*Result) bool { return false }
	r = run(t, o)
	for _, s := range r.Segments {
		if s.PathFlow != nil || s.Path != nil {
			t.Errorf("%s -> %s traced though When said no", s.From, s.To)
		}
	}
}

// A relay without a tracer says so; a relay that does not know the path
// extension (it answers without a path) is named, and the run still
// succeeds; a trace request that fails says where, per segment.
func TestRunTraceFailuresAreClear(t *testing.T) {
	tr := newTracer(t)
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	off := chaintest.StartRelay(t, relay.Config{Name: "off", ForwardTo: z})
	o := opts(off)
	o.Count = 1
	o.Trace = &TraceOptions{Tracer: tr}
	r := run(t, o)
	if f := r.Segment("off", "z").PathFlow; f == nil || f.Status != "disabled" || f.Protocol != "none" || !strings.Contains(f.Reason, "does not trace") {
		t.Errorf("a relay without a tracer: %+v", f)
	}
	if f := r.Segment("a", "off").PathFlow; f == nil || f.Status != "reached" {
		t.Errorf("the source's own segment: %+v", f)
	}

	// An older relay: it answers with its record and the end host's, and
	// no path.
	old := chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		rec := frame.HopRecord{ID: 0x01d, Name: "old", Forward: time.Microsecond, Downstream: time.Microsecond, Return: time.Microsecond}
		end := chaintest.EndRecord("z")
		recs := frame.AppendHop(frame.AppendHop(nil, &rec), &end)
		return chaintest.Reply(v, req, recs, 2)
	})
	r = run(t, Options{Target: old, Source: "a", Count: 1, Timeout: 3 * time.Second, Trace: &TraceOptions{Tracer: tr}})
	if !r.Success {
		t.Fatalf("run through an older relay failed: %+v", r.Failure)
	}
	if f := r.Segment("old", "z").PathFlow; f == nil || f.Status != "failed" || !strings.Contains(f.Reason, "old reported no path: it does not know traces") {
		t.Errorf("an older relay: %+v", f)
	}

	// A trace request refused on the way (an older relay refusing a
	// record with a path: bad_frame).
	refusing := chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		if v.Probe.Flags&frame.ProbePath != 0 {
			er := frame.ErrorRecord{ID: 0x01d, Name: "old", Peer: "c", Reason: 8, Message: "old got a bad reply from c: record 0: unknown flags 0x0100"}
			rec := frame.HopRecord{ID: 0x01d, Name: "old", Forward: time.Microsecond}
			return chaintest.Reply(v, req, frame.AppendError(frame.AppendHop(nil, &rec), &er), 2)
		}
		rec := frame.HopRecord{ID: 0x01d, Name: "old", Forward: time.Microsecond, Downstream: time.Microsecond, Return: time.Microsecond}
		end := chaintest.EndRecord("c")
		return chaintest.Reply(v, req, frame.AppendHop(frame.AppendHop(nil, &rec), &end), 2)
	})
	r = run(t, Options{Target: refusing, Source: "a", Count: 1, Timeout: 3 * time.Second, Trace: &TraceOptions{Tracer: tr}})
	if !r.Success {
		t.Fatalf("a failed trace request failed the run: %+v", r.Failure)
	}
	if f := r.Segment("old", "c").PathFlow; f == nil || f.Status != "failed" || !strings.Contains(f.Reason, "trace request failed at old -> c (bad_frame)") {
		t.Errorf("a refused trace request: %+v", f)
	}
	if f := r.Segment("a", "old").PathFlow; f == nil || f.Status != "reached" {
		t.Errorf("the source's own segment after a refused request: %+v", f)
	}
}

// A continuous session starts the traces without waiting for them: the
// next measured probe comes back while they run; the paths are collected
// later, and no reply waits then either.
func TestSessionTraceStartAndPaths(t *testing.T) {
	chaintest.ForEachEngine(t, testSessionTraceStartAndPaths)
}

func testSessionTraceStartAndPaths(t *testing.T) {
	tr := newTracer(t)
	target := chaintest.Chain(t, chaintest.ChainOptions{Template: relay.Config{Tracer: tr}}, "b", "c", "z")
	o := opts(target)
	o.Trace = &TraceOptions{Tracer: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, res := Open(ctx, o)
	if s == nil {
		t.Fatalf("open: %+v", res.Failure)
	}
	defer s.Close()
	if s.TracePaths(ctx) != nil {
		t.Error("paths of a session that started no trace")
	}
	start := time.Now()
	if !s.TraceStart(ctx) {
		t.Fatal("TraceStart failed")
	}
	started := time.Since(start)
	// A measured probe while the traces run (after their first TTL: a
	// far end's answer that coincides with the connection's own traffic
	// may be missed, and then comes a TTL later).
	time.Sleep(200 * time.Millisecond)
	p := s.Probe(ctx)
	probed := time.Since(start) - 200*time.Millisecond
	if !p.Success || p.Segments[1].PathFlow != nil {
		t.Fatalf("measured probe: %+v", p.Failure)
	}
	// The traces (1.1 s on loopback: the far end's spacing) run meanwhile.
	time.Sleep(1500 * time.Millisecond)
	before := time.Now()
	paths := s.TracePaths(ctx)
	collected := time.Since(before)
	loopback := &frame.Path{Hops: []frame.PathHop{{TTL: 1, Flags: frame.PathHopFarEnd, Sent: 3, Answered: 3, Address: netip.MustParseAddr("127.0.0.1")}}}
	var traced time.Duration
	for _, seg := range paths.Segments {
		f := seg.PathFlow
		if f == nil || f.Status != "reached" || !trace.SamePath(seg.WirePath(), loopback) {
			t.Fatalf("%s -> %s: %+v %s", seg.From, seg.To, f, seg.PathText())
		}
		traced = max(traced, time.Duration(f.DurationSeconds*float64(time.Second)))
	}
	t.Logf("TraceStart %v, the next probe back after %v, paths collected in %v; the traces took %v", started, probed, collected, traced)
	if probed*4 > traced || collected*4 > traced {
		t.Errorf("a probe waited for the traces (%v): start %v, probe %v, collect %v", traced, started, probed, collected)
	}
	if s.TracePaths(ctx) != nil {
		t.Error("paths collected twice")
	}
}
