package relay_test

import (
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
	"github.com/subsegment/subsegment_exporter/relay"
)

// traceMetrics counts what relays report of their traces.
type traceMetrics struct {
	mu    sync.Mutex
	paths []*frame.Path
}

func (m *traceMetrics) Traced(p *frame.Path) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.paths = append(m.paths, p)
}

func (m *traceMetrics) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.paths)
}

func newTracer(t testing.TB) *trace.Tracer {
	t.Helper()
	tr, err := trace.NewTracer(trace.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// roundTrip sends one request with flags on c and returns its reply's
// records and how long it took.
func roundTrip(t *testing.T, c net.Conn, seq uint64, flags uint16) ([]frame.Record, time.Duration) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	req := frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: seq, Flags: flags, BudgetMicros: 5_000_000}, nil, []uint64{1}, nil)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
	if err := r.Fill(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	fr, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := frame.CheckReply(fr, nil, frame.DefaultMaxFrameBytes, frame.Expect{Request: frame.KindProbeRequest, Seq: seq})
	if err != nil || rep.Refusal != nil {
		t.Fatalf("reply: %v %+v", err, rep.Refusal)
	}
	recs, err := frame.ParseRecords(rep.View.Tail(fr), int(rep.View.Probe.Count))
	if err != nil {
		t.Fatal(err)
	}
	return recs, took
}

func dialT(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A request asking for a trace and its path gets every relay's trace of
// its own next hop in its record (on loopback: the next hop answers the
// first TTL), the end host's record has none, and a request without the
// flags gets no path. Meanwhile a probe on another session through the
// same relays is not held: it comes back while the traces run.
func TestRelaysTraceTheirNextHop(t *testing.T) {
	chaintest.ForEachEngine(t, testRelaysTraceTheirNextHop)
}

func testRelaysTraceTheirNextHop(t *testing.T) {
	m := &traceMetrics{}
	tr := newTracer(t)
	first := chaintest.Chain(t, chaintest.ChainOptions{Template: relay.Config{Tracer: tr, TraceMetrics: m}}, "b", "c", "z")
	c, other := dialT(t, first), dialT(t, first)
	recs, _ := roundTrip(t, c, 1, frame.ProbeWarmup)
	for _, r := range recs {
		if r.Hop.Path != nil || r.Hop.Flags&frame.RecPath != 0 {
			t.Fatalf("a probe without the flags: %s has a path", r.Hop.Name)
		}
	}
	roundTrip(t, other, 1, frame.ProbeWarmup)

	var probeTook time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(100 * time.Millisecond) // while the traces run
		_, probeTook = roundTrip(t, other, 2, 0)
	}()
	recs, traceTook := roundTrip(t, c, 2, frame.ProbeTrace|frame.ProbePath)
	<-done
	if len(recs) != 3 {
		t.Fatalf("%d records", len(recs))
	}
	method := frame.PathUDP
	if os.Geteuid() == 0 {
		method = frame.PathTCP
	}
	for i, r := range recs[:2] {
		p := r.Hop.Path
		if p == nil || r.Hop.Flags&frame.RecPath == 0 {
			t.Fatalf("%s: no path", r.Hop.Name)
		}
		t.Logf("%s: %s %s (%s) %d packets in %v: %+v", r.Hop.Name, p.Method, p.Status, p.Reason, p.Packets, p.Duration, p.Hops)
		if p.Status != frame.PathReached || p.Method != method || len(p.Hops) != 1 || p.Hops[0].Address.String() != "127.0.0.1" {
			t.Errorf("record %d (%s): path %s %s with %d TTLs, want %s reaching 127.0.0.1 at TTL 1", i, r.Hop.Name, p.Method, p.Status, len(p.Hops), method)
		}
		if p.Remote.Port() == 0 || p.Local.Port() == 0 {
			t.Errorf("%s: flow %v -> %v without ports", r.Hop.Name, p.Local, p.Remote)
		}
	}
	if recs[2].Hop.Path != nil {
		t.Errorf("the end host reports a path")
	}
	if m.count() != 2 {
		t.Errorf("%d traces counted, want 2", m.count())
	}
	t.Logf("trace request %v, a probe on another session meanwhile %v", traceTook, probeTook)
	if probeTook*4 > traceTook {
		t.Errorf("a probe on another session took %v while the traced request took %v: it waited for the traces", probeTook, traceTook)
	}
	// Asked for the path again: the same traces, no new one.
	recs, _ = roundTrip(t, c, 3, frame.ProbePath)
	if p := recs[0].Hop.Path; p == nil || p.Status != frame.PathReached || m.count() != 2 {
		t.Errorf("path asked again: %+v, %d traces", p, m.count())
	}
}

// Without a Tracer a relay says it does not trace; a relay with
// --remove-perf-headers traces its own next hop but asks nothing of the
// hops beyond it.
func TestRelayTraceDisabledAndStripped(t *testing.T) {
	chaintest.ForEachEngine(t, func(t *testing.T) {
		m := &traceMetrics{}
		tr := newTracer(t)
		z := chaintest.StartRelay(t, relay.Config{Name: "z"})
		c := chaintest.StartRelay(t, relay.Config{Name: "c", ForwardTo: z, Tracer: tr, TraceMetrics: m})
		b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: c, RemovePerfHeaders: true, Tracer: tr, TraceMetrics: m})
		off := chaintest.StartRelay(t, relay.Config{Name: "off", ForwardTo: z})
		recs, _ := roundTrip(t, dialT(t, off), 1, frame.ProbeTrace|frame.ProbePath)
		if p := recs[0].Hop.Path; p == nil || p.Status != frame.PathDisabled || p.Reason == "" {
			t.Errorf("a relay without a tracer: %+v", p)
		}
		recs, _ = roundTrip(t, dialT(t, b), 1, frame.ProbeTrace|frame.ProbePath)
		if p := recs[0].Hop.Path; len(recs) != 1 || p == nil || p.Status != frame.PathReached {
			t.Errorf("stripping relay: %d records, path %+v", len(recs), p)
		}
		if m.count() != 1 {
			t.Errorf("%d traces, want only the stripping relay's own", m.count())
		}
		// Only the path asked for, no trace started on this connection.
		recs, _ = roundTrip(t, dialT(t, c), 1, frame.ProbePath)
		if p := recs[0].Hop.Path; p == nil || p.Status != frame.PathNotStarted {
			t.Errorf("path without a trace: %+v", p)
		}
	})
}

// BenchmarkProbeThroughTracingRelay is BenchmarkProbeThroughRelay with
// relays that can trace: a probe that asks for no trace costs what it
// did, and allocates nothing.
func BenchmarkProbeThroughTracingRelay(b *testing.B) {
	tr := newTracer(b)
	for _, engine := range []string{relay.EngineEpoll, relay.EngineGoroutines} {
		b.Run(engine, func(b *testing.B) {
			z := chaintest.StartRelay(b, relay.Config{Name: "z", Engine: engine, Tracer: tr})
			r1 := chaintest.StartRelay(b, relay.Config{Name: "b", ForwardTo: z, Engine: engine, Tracer: tr})
			c, err := net.Dial("tcp", r1)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			rd := frame.NewReader(c, frame.DefaultMaxFrameBytes)
			var req []byte
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req = frame.AppendZeroRequest(req[:0], frame.KindProbeRequest, frame.ProbeHeader{Seq: uint64(i), BudgetMicros: 5_000_000}, 0, []uint64{42}, nil)
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if err := rd.Fill(); err != nil {
					b.Fatal(err)
				}
				if _, err := rd.Next(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
