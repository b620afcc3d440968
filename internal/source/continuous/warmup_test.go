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
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
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
	// REVIEW-2 F-C: a server (no http.hops) that names itself anew in a
	// Subsegment-Timing entry the source refuses: the failure names it,
	// and made connect and rtt histograms (and a failure counter) per
	// name.
	var k atomic.Int64
	refused := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Subsegment-Timing", fmt.Sprintf("p%d;dur=999999999s", k.Add(1)))
		w.Header().Set("Connection", "close")
		_, _ = w.Write([]byte("ok\n"))
	}))
	t.Cleanup(refused.Close)
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
  open:
    prober: http
    targets: ["127.0.0.1:*"]
continuous:
  - {target: "%s/", module: web, interval: 10ms}
  - {target: "%s/", module: web, interval: 10ms}
  - {target: "%s/", module: open, interval: 10ms}
`, renaming.URL, healthy.URL, refused.URL)))
	bad, good := map[string]string{"target": renaming.URL + "/"}, map[string]string{"target": healthy.URL + "/"}
	refusing := map[string]string{"target": refused.URL + "/"}
	// The renaming entry reconnects with backoff (10 ms doubling): 6
	// warm-ups in well under a second.
	waitFor(t, "failed warm-ups", func() bool {
		return value(t, reg, "subsegment_continuous_probes_total", map[string]string{"target": bad["target"], "result": "failure"}) >= 6
	})
	waitFor(t, "failed warm-ups of the refused server", func() bool {
		return value(t, reg, "subsegment_continuous_probes_total", map[string]string{"target": refusing["target"], "result": "failure"}) >= 6
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
			if labels["target"] == bad["target"] && strings.HasPrefix(labels["to"], "proxy-") ||
				labels["target"] == refusing["target"] && labels["to"] != strings.TrimPrefix(refused.URL, "http://") {
				t.Errorf("%s%v: a series named by a failed warm-up", mf.GetName(), labels)
			}
		}
	}
	if v := value(t, reg, "subsegment_continuous_segment_failures_total", map[string]string{"target": bad["target"], "from": "a", "to": "proxy", "reason": "bad_header"}); v < 6 {
		t.Errorf("failures of the renaming entry on a -> proxy: %v, want every warm-up's", v)
	}
	// The refused server's failures on the entry's first segment as
	// configured: to its address.
	if v := value(t, reg, "subsegment_continuous_segment_failures_total", map[string]string{"target": refusing["target"], "from": "a", "to": strings.TrimPrefix(refused.URL, "http://")}); v < 6 {
		t.Errorf("failures of the refused server's entry on its first segment: %v, want every warm-up's", v)
	}
	if v := value(t, reg, "subsegment_continuous_segment_connect_seconds", map[string]string{"target": good["target"], "from": "a", "to": "proxy"}); v < 1 {
		t.Errorf("connects of the healthy entry: %v, want its warm-up's", v)
	}
}

// REVIEW-2 F-C: a first hop that answers every warm-up with an error
// frame naming itself anew, verified (no keys) or not (the entry signs,
// the frame does not): on both engines the failures go to the entry's
// first segment as configured, and no series is named after the hop.
func TestFailedWarmUpsOfARenamingRelayCreateNoSeries(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		for _, tc := range []struct {
			name   string
			keys   frame.Keys
			reason string
		}{
			{"verified", nil, "unreachable"},
			{"unverified", frame.Keys{[]byte("0123456789abcdef0123456789abcdef")}, "auth"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var n atomic.Int64
				target := chaintest.Scripted(t, func([]byte, frame.View) []byte {
					rec := frame.ErrorRecord{ID: 7, Name: fmt.Sprintf("e%d", n.Add(1)), Peer: "next", Reason: peer.ReasonUnreachable, Message: "no next hop"}
					return frame.AppendErrorFrame(nil, &rec, nil)
				})
				reg := prometheus.NewPedanticRegistry()
				m := NewManager(NewMetrics(reg), func(target string, mod *config.Module) prober.Options {
					return prober.Options{Target: target, Source: "a", Timeout: time.Duration(mod.Timeout), Names: &prober.NameCache{}, Keys: tc.keys}
				}, slog.New(slog.DiscardHandler))
				if e.runners {
					m.RunAllOnRunners()
				}
				t.Cleanup(m.Stop)
				m.Apply(parse(t, slaModules+entry(target, "m")))
				waitFor(t, "failed warm-ups", func() bool {
					return value(t, reg, "subsegment_continuous_probes_total", map[string]string{"result": "failure"}) >= 5
				})
				s := shapeOf(t, reg)
				for _, k := range s.keys() {
					if strings.Contains(k, "to=e") {
						t.Errorf("%s: a series named by a failed warm-up's error frame", k)
					}
				}
				if v := s[fmt.Sprintf("segment_failures_total{from=a,reason=%s,to=%s}", tc.reason, target)]; v < 5 {
					t.Errorf("failures on a -> %s: %v, want every warm-up's: %v", target, v, s.keys())
				}
			})
		}
	})
}
