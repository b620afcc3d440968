package continuous

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
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
