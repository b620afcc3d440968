package continuous

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
)

// REVIEW-1 finding 10: a proxy that renames itself on every response
// fails every warm-up (http.hops names another proxy); a failed warm-up
// creates no series, so the entry keeps the series of its failures
// alone, whatever names the proxy makes up — where it made a pair of
// connect and rtt histograms per name, up to the entry's bound. Beside
// it, an entry whose warm-ups succeed still records their connects.
func TestFailedWarmUpsCreateNoSeries(t *testing.T) {
	var n atomic.Int64
	renaming := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Subsegment-Timing", fmt.Sprintf("proxy-%d;dur=0us", n.Add(1)))
		w.Header().Set("Connection", "close")
		_, _ = w.Write([]byte("ok\n"))
	}))
	t.Cleanup(renaming.Close)
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Subsegment-Timing", "proxy;dur=0us")
		_, _ = w.Write([]byte("ok\n"))
	}))
	t.Cleanup(healthy.Close)
	reg := prometheus.NewPedanticRegistry()
	m := NewManager(NewMetrics(reg), func(target string, mod *config.Module) prober.Options {
		o := sla.ProbeOptions(mod, target)
		o.Source, o.Timeout, o.Names = "a", time.Duration(mod.Timeout), names
		return o
	}, slog.New(slog.DiscardHandler))
	t.Cleanup(m.Stop)
	m.Apply(parse(t, fmt.Sprintf(`modules:
  web:
    prober: http
    targets: ["127.0.0.1:*"]
    http: {hops: [proxy]}
continuous:
  - {target: "%s/", module: web, interval: 10ms}
  - {target: "%s/", module: web, interval: 10ms}
`, renaming.URL, healthy.URL)))
	bad, good := map[string]string{"target": renaming.URL + "/"}, map[string]string{"target": healthy.URL + "/"}
	// The renaming entry reconnects with backoff (10 ms doubling): 6
	// warm-ups in well under a second.
	waitFor(t, "failed warm-ups", func() bool {
		return value(t, reg, "subsegment_continuous_probes_total", map[string]string{"target": bad["target"], "result": "failure"}) >= 6
	})
	waitFor(t, "the healthy entry's probes", func() bool {
		return value(t, reg, "subsegment_continuous_probes_total", map[string]string{"target": good["target"], "result": "success"}) >= 3
	})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "subsegment_continuous_segment_") {
			continue
		}
		for _, mt := range mf.Metric {
			labels := map[string]string{}
			for _, lp := range mt.Label {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["target"] == bad["target"] && strings.HasPrefix(labels["to"], "proxy-") {
				t.Errorf("%s%v: a series named by a failed warm-up", mf.GetName(), labels)
			}
		}
	}
	if v := value(t, reg, "subsegment_continuous_segment_failures_total", map[string]string{"target": bad["target"], "from": "a", "to": "proxy", "reason": "bad_header"}); v < 6 {
		t.Errorf("failures of the renaming entry on a -> proxy: %v, want every warm-up's", v)
	}
	if v := value(t, reg, "subsegment_continuous_segment_connect_seconds", map[string]string{"target": good["target"], "from": "a", "to": "proxy"}); v < 1 {
		t.Errorf("connects of the healthy entry: %v, want its warm-up's", v)
	}
}
