package continuous

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
	"github.com/subsegment/subsegment_exporter/relay"
)

// An entry traces its segments every trace_interval on its own
// connections: their paths are on /metrics (the change counter at 0 from
// the first trace on), and the page unfolds a segment over its SLA into
// its routers; probes go on meanwhile.
// (on both engines)
func TestEntryTracesItsSegments(t *testing.T) { forEachEngine(t, testEntryTracesItsSegments) }

func testEntryTracesItsSegments(t *testing.T, e engine) {
	tr, err := trace.NewTracer(trace.Config{})
	if err != nil {
		t.Fatal(err)
	}
	target := chaintest.Chain(t, chaintest.ChainOptions{Template: relay.Config{Tracer: tr}, Front: func(name, addr string) string {
		if name != "c" {
			return addr
		}
		return chaintest.DelayProxy(t, addr, time.Millisecond, time.Millisecond).Addr()
	}}, "b", "c", "z")
	reg := prometheus.NewPedanticRegistry()
	options := func(target string, m *config.Module) prober.Options {
		o := testOptions(target, m)
		o.Trace = &prober.TraceOptions{Tracer: tr}
		return o
	}
	m := NewManager(NewMetrics(reg), options, slog.New(slog.DiscardHandler))
	if e.runners {
		m.RunAllOnRunners()
	}
	t.Cleanup(m.Stop)
	m.Apply(parse(t, `modules:
  default:
    timeout: 2s
    targets: ["127.0.0.1:*"]
    sla: {segments: [{from: b, to: c, rtt: 1ms}]}
continuous:
  - {target: "`+target+`", module: default, interval: 100ms, trace_interval: 1s}
`))
	entry := map[string]string{"target": target, "module": "default"}
	seg := func(from, to string) map[string]string {
		return map[string]string{"target": target, "module": "default", "from": from, "to": to}
	}
	waitFor(t, "a trace of every segment", func() bool {
		return value(t, reg, "subsegment_continuous_segment_path_hops", seg("a", "b")) == 1 &&
			value(t, reg, "subsegment_continuous_segment_path_hops", seg("b", "c")) == 1 &&
			value(t, reg, "subsegment_continuous_segment_path_hops", seg("c", "z")) == 1
	})
	probes := value(t, reg, "subsegment_continuous_probes_total", map[string]string{"target": target, "result": "success"})
	if probes < 10 {
		t.Errorf("%v probes while the traces ran (every 100ms for over 2s)", probes)
	}
	if v := value(t, reg, "subsegment_continuous_segment_path_changes_total", seg("b", "c")); v != 0 {
		t.Errorf("path changes %v on a path that did not change", v)
	}
	if v := value(t, reg, "subsegment_continuous_segment_path_hop_info", map[string]string{"from": "b", "to": "c", "ttl": "1", "address": "127.0.0.1"}); v != 1 {
		t.Errorf("hop info %v", v)
	}
	if v := value(t, reg, "subsegment_continuous_segment_path_fingerprint", seg("b", "c")); v <= 0 {
		t.Errorf("fingerprint %v", v)
	}
	states := m.Snapshot()
	var bc *SegmentState
	for i := range states[0].Segments {
		if s := &states[0].Segments[i]; s.From == "b" && s.To == "c" {
			bc = s
		}
	}
	if bc == nil || bc.SLA != SLAExceeded || len(bc.Path) != 1 || bc.Path[0].Address != "127.0.0.1" || bc.PathFlow == "" {
		t.Errorf("b -> c on the page: %+v", bc)
	}
	for _, s := range states[0].Segments {
		if s.SLA != SLAExceeded && s.Path != nil {
			t.Errorf("%s -> %s within its SLA unfolded", s.From, s.To)
		}
	}
	// A removed entry takes its path series with it.
	m.Apply(parse(t, "modules: {default: {targets: [\"127.0.0.1:*\"]}}\n"))
	if v := value(t, reg, "subsegment_continuous_segment_path_hops", entry); v != -1 {
		t.Errorf("path series left after the entry was removed: %v", v)
	}
}

// A new trace replaces exactly the series the segment's previous trace
// made, and removing an entry deletes exactly its own: another entry's
// series stay, whatever their labels share (found by label values kept
// per segment, not by searching every series of every entry).
func TestPathSeriesReplacedAndRemovedExactly(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := newPathMetrics(reg)
	log := slog.New(slog.DiscardHandler)
	path := func(ttls ...uint8) *frame.Path {
		p := &frame.Path{Method: frame.PathTCP, Status: frame.PathReached}
		for _, ttl := range ttls {
			p.Hops = append(p.Hops, frame.PathHop{TTL: ttl, Sent: 3, Answered: 3, Address: netip.AddrFrom4([4]byte{10, 0, 0, ttl}), Median: time.Millisecond})
		}
		return p
	}
	seg := &prober.SegmentResult{From: "a", To: "b", PathDelay: &prober.PathDelayResult{TTL: 2, Delay: 0.01}}
	m.observe("t1", "m", seg, path(1, 2, 3), log)
	m.observe("t1", "m2", seg, path(1, 2, 3), log)
	count := func(name string) int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				return len(mf.Metric)
			}
		}
		return 0
	}
	for name, want := range map[string]int{"subsegment_continuous_segment_path_loss_ratio": 6, "subsegment_continuous_segment_path_hop_info": 6, "subsegment_continuous_segment_path_delay_seconds": 2} {
		if got := count(name); got != want {
			t.Errorf("two entries traced: %d series of %s, want %d", got, name, want)
		}
	}
	// t1/m's route now has one router fewer, and no delay
	m.observe("t1", "m", &prober.SegmentResult{From: "a", To: "b"}, path(1, 2), log)
	for name, want := range map[string]int{"subsegment_continuous_segment_path_loss_ratio": 5, "subsegment_continuous_segment_path_rtt_seconds": 5, "subsegment_continuous_segment_path_hop_info": 5,
		"subsegment_continuous_segment_path_delay_seconds": 1, "subsegment_continuous_segment_path_info": 2, "subsegment_continuous_segment_path_changes_total": 2} {
		if got := count(name); got != want {
			t.Errorf("after a shorter trace of one entry: %d series of %s, want %d", got, name, want)
		}
	}
	m.remove("t1", "m")
	for name, want := range map[string]int{"subsegment_continuous_segment_path_loss_ratio": 3, "subsegment_continuous_segment_path_hop_info": 3, "subsegment_continuous_segment_path_delay_seconds": 1,
		"subsegment_continuous_segment_path_info": 1, "subsegment_continuous_segment_path_changes_total": 1, "subsegment_continuous_segment_path_hops": 1, "subsegment_continuous_segment_path_fingerprint": 1} {
		if got := count(name); got != want {
			t.Errorf("after removing one entry: %d series of %s, want %d (the other entry's)", got, name, want)
		}
	}
}

// BenchmarkPathObserveAmong10000 is one entry's new trace recorded while
// 10 000 entries have paths of 10 routers on /metrics (each trace result
// is recorded on the continuous loop: it must not cost in proportion to
// the other entries' series).
func BenchmarkPathObserveAmong10000(b *testing.B) {
	m := newPathMetrics(prometheus.NewRegistry())
	log := slog.New(slog.DiscardHandler)
	p := &frame.Path{Method: frame.PathTCP, Status: frame.PathReached}
	for ttl := uint8(1); ttl <= 10; ttl++ {
		p.Hops = append(p.Hops, frame.PathHop{TTL: ttl, Sent: 3, Answered: 3, Address: netip.AddrFrom4([4]byte{10, 0, 0, ttl}), Median: time.Millisecond})
	}
	seg := &prober.SegmentResult{From: "a", To: "b"}
	for i := range 10000 {
		m.observe("127.0.0.1:9000", fmt.Sprintf("m%d", i), seg, p, log)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		m.observe("127.0.0.1:9000", fmt.Sprintf("m%d", i%10000), seg, p, log)
	}
}
