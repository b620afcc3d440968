package continuous

import (
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// names is what the exporter's /probe and continuous probes share: the
// first hop's name, for failures before it answers.
var names = &prober.NameCache{}

func testOptions(target string, m *config.Module) prober.Options {
	return prober.Options{Target: target, Source: "a", Timeout: time.Duration(m.Timeout), Names: names}
}

func newTestManager(t *testing.T) (*Manager, *prometheus.Registry) {
	t.Helper()
	return newTestManagerOn(t, engines[0])
}

// newTestManagerOn is a manager running its entries on engine e.
func newTestManagerOn(t *testing.T, e engine) (*Manager, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m := NewManager(NewMetrics(reg), testOptions, slog.New(slog.DiscardHandler))
	if e.runners {
		m.RunAllOnRunners()
	}
	t.Cleanup(m.Stop)
	return m, reg
}

func parse(t *testing.T, text string) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(text), "test.yml", config.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// counter reads a counter or the count of a histogram from reg.
func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	for _, m := range matching(t, reg, name, labels) {
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	return -1
}

// sumOf is the sum of the counters of family name whose labels include
// labels.
func sumOf(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	var sum float64
	for _, m := range matching(t, reg, name, labels) {
		sum += m.GetCounter().GetValue()
	}
	return sum
}

// matching is the series of family name in reg whose labels agree with
// labels (a label they lack is no disagreement).
func matching(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var out []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
			}
			out = append(out, m)
		}
	}
	return out
}

// waitFor polls f (bounded) until it is true.
func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if f() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// (on both engines)
func TestEntriesProbeAndReloadKeepsUnchangedHistograms(t *testing.T) {
	forEachEngine(t, testEntriesProbeAndReloadKeepsUnchangedHistograms)
}

func testEntriesProbeAndReloadKeepsUnchangedHistograms(t *testing.T, e engine) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "c", "z")
	other := chaintest.Chain(t, chaintest.ChainOptions{}, "x", "y")
	m, reg := newTestManagerOn(t, e)
	cfg := fmt.Sprintf(`modules:
  default: {targets: ["127.0.0.1:*"], sla: {default: 5ms}}
  slow: {targets: ["127.0.0.1:*"]}
continuous:
  - {target: "%s", module: default, interval: 20ms}
  - {target: "%s", module: default, interval: 20ms}
`, target, other)
	m.Apply(parse(t, cfg))
	bc := map[string]string{"target": target, "module": "default", "from": "b", "to": "c"}
	waitFor(t, "probes on both entries", func() bool {
		return value(t, reg, "subsegment_continuous_segment_rtt_seconds", bc) >= 5 &&
			value(t, reg, "subsegment_continuous_segment_rtt_seconds", map[string]string{"target": other, "from": "x", "to": "y"}) >= 5
	})
	for _, name := range []string{"subsegment_continuous_hop_residence_seconds", "subsegment_continuous_hop_wait_seconds"} {
		if v := value(t, reg, name, map[string]string{"target": target, "hop": "c"}); v < 1 {
			t.Errorf("%s of hop c: %v", name, v)
		}
	}
	if v := value(t, reg, "subsegment_continuous_segment_sla_seconds", bc); v != 0.005 {
		t.Errorf("segment SLA %v, want 0.005", v)
	}
	if v := value(t, reg, "subsegment_continuous_segment_connect_seconds", bc); v != 1 {
		t.Errorf("connects of b -> c: %v, want 1 (one warm-up)", v)
	}

	// Reload: the first entry unchanged, the second with another
	// interval (restarts: its histograms start again), a third new.
	before := value(t, reg, "subsegment_continuous_segment_rtt_seconds", bc)
	cfg2 := fmt.Sprintf(`modules:
  default: {targets: ["127.0.0.1:*"], sla: {default: 5ms}}
  slow: {targets: ["127.0.0.1:*"]}
continuous:
  - {target: "%s", module: default, interval: 20ms}
  - {target: "%s", module: default, interval: 30ms}
  - {target: "%s", module: slow, interval: 20ms}
`, target, other, target)
	m.Apply(parse(t, cfg2))
	xy := map[string]string{"target": other, "from": "x", "to": "y"}
	if after := value(t, reg, "subsegment_continuous_segment_rtt_seconds", bc); after < before {
		t.Errorf("unchanged entry's histogram went from %v to %v over a reload", before, after)
	}
	if v := value(t, reg, "subsegment_continuous_segment_connect_seconds", bc); v != 1 {
		t.Errorf("unchanged entry reconnected over a reload: %v connects", v)
	}
	if v := value(t, reg, "subsegment_continuous_segment_rtt_seconds", xy); v > 3 {
		t.Errorf("changed entry kept its histogram: %v samples", v)
	}
	waitFor(t, "the new entry", func() bool {
		return value(t, reg, "subsegment_continuous_segment_rtt_seconds", map[string]string{"module": "slow", "from": "b", "to": "c"}) >= 2
	})

	// Removed from the file: its series go.
	m.Apply(parse(t, "modules:\n  default: {targets: [\"127.0.0.1:*\"]}\n"))
	if n := testutil.CollectAndCount(m.metrics); n != 0 {
		t.Errorf("%d series left after every entry was removed", n)
	}
}

// (on both engines)
func TestBrokenChainFailsThenRecovers(t *testing.T) {
	forEachEngine(t, testBrokenChainFailsThenRecovers)
}

func testBrokenChainFailsThenRecovers(t *testing.T, e engine) {
	// A first hop that stops answering for a while: failures on its
	// segment, reconnects with backoff, then probes again.
	var down atomic.Bool
	z := chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		if down.Load() {
			return []byte("not a frame header, garbage")
		}
		rec := chaintest.EndRecord("z")
		return chaintest.Reply(v, req, frame.AppendHop(nil, &rec), 1)
	})
	m, reg := newTestManagerOn(t, e)
	m.Apply(parse(t, fmt.Sprintf("modules:\n  default: {targets: [\"127.0.0.1:*\"]}\ncontinuous:\n  - {target: \"%s\", module: default, interval: 10ms}\n", z)))
	ok := map[string]string{"result": "success"}
	waitFor(t, "successes", func() bool { return value(t, reg, "subsegment_continuous_probes_total", ok) >= 3 })
	down.Store(true)
	waitFor(t, "failures on a -> z", func() bool {
		return value(t, reg, "subsegment_continuous_segment_failures_total", map[string]string{"from": "a", "to": "z", "reason": "bad_frame"}) >= 2
	})
	if v := value(t, reg, "subsegment_continuous_probes_total", map[string]string{"result": "failure"}); v < 2 {
		t.Errorf("failures counted %v", v)
	}
	down.Store(false)
	n := value(t, reg, "subsegment_continuous_probes_total", ok)
	waitFor(t, "recovery", func() bool { return value(t, reg, "subsegment_continuous_probes_total", ok) >= n+3 })
	snap := m.Snapshot()
	if len(snap) != 1 || snap[0].Failure != nil || len(snap[0].Segments) != 1 {
		t.Errorf("page state after recovery: %+v", snap)
	}
}

// (on both engines)
func TestRenamingChainIsBounded(t *testing.T) { forEachEngine(t, testRenamingChainIsBounded) }

func testRenamingChainIsBounded(t *testing.T, e engine) {
	// A hostile end host with a new name on every reply.
	var n atomic.Int64
	z := chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		rec := chaintest.EndRecord(fmt.Sprintf("z%d", n.Add(1)))
		return chaintest.Reply(v, req, frame.AppendHop(nil, &rec), 1)
	})
	m, reg := newTestManagerOn(t, e)
	m.Apply(parse(t, fmt.Sprintf("modules:\n  default: {targets: [\"127.0.0.1:*\"]}\ncontinuous:\n  - {target: \"%s\", module: default, interval: 10ms}\n", z)))
	waitFor(t, "series dropped", func() bool { return value(t, reg, "subsegment_continuous_series_dropped_total", nil) >= 20 })
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if len(mf.Metric) > 2*maxSeriesKeys {
			t.Errorf("%s has %d series", mf.GetName(), len(mf.Metric))
		}
		if strings.HasSuffix(mf.GetName(), "_rtt_seconds") && len(mf.Metric) > maxSeriesKeys {
			t.Errorf("%s has %d series, bound %d", mf.GetName(), len(mf.Metric), maxSeriesKeys)
		}
	}
}
