package exporter

import (
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/subsegment/subsegment_exporter/collector"
	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/relay"
)

// testExporter serves the routes with a config written from text.
type testExporter struct {
	srv    *httptest.Server
	path   string
	source *collector.Source
	reg    *prometheus.Registry
	holder *ConfigHolder
	probe  *ProbeHandler
}

func newTestExporter(t *testing.T, cfgText string, configure func(*ProbeHandler)) *testExporter {
	t.Helper()
	dir := t.TempDir()
	path := ""
	if cfgText != "" {
		path = filepath.Join(dir, "subsegment.yml")
		if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	source := collector.NewSource(reg)
	log := slog.New(slog.DiscardHandler)
	holder, err := NewConfigHolder(path, KeyFile{}, config.Limits{}, source, log)
	if err != nil {
		t.Fatal(err)
	}
	probe := &ProbeHandler{Config: holder, Source: "a", TimeoutOffset: DefaultTimeoutOffset, Metrics: source, Names: &prober.NameCache{}, Logger: log, History: NewHistory(3)}
	if configure != nil {
		configure(probe)
	}
	mux, err := Routes(reg, holder, probe, log, RouteOptions{History: probe.History})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &testExporter{srv: srv, path: path, source: source, reg: reg, holder: holder, probe: probe}
}

type answer struct {
	code int
	body string
	took time.Duration
	mfs  map[string]*dto.MetricFamily
}

func (e *testExporter) get(t *testing.T, path string, header map[string]string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	a := answer{code: resp.StatusCode, body: string(body), took: time.Since(start)}
	if a.code == 200 && !strings.Contains(path, "debug=true") && (strings.HasPrefix(path, "/probe?") || strings.HasPrefix(path, "/metrics")) {
		p := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := p.TextToMetricFamilies(strings.NewReader(a.body))
		if err != nil {
			t.Fatalf("parse answer: %v\n%s", err, a.body)
		}
		a.mfs = mfs
	}
	return a
}

// value returns the gauge with exactly these labels, or ok=false.
func (a answer) value(name string, labels ...string) (float64, bool) {
	mf := a.mfs[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		if matches(m, labels) {
			return m.GetGauge().GetValue() + m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

func matches(m *dto.Metric, labels []string) bool {
	got := map[string]string{}
	for _, lp := range m.GetLabel() {
		got[lp.GetName()] = lp.GetValue()
	}
	if len(got) != len(labels)/2 {
		return false
	}
	for i := 0; i+1 < len(labels); i += 2 {
		if got[labels[i]] != labels[i+1] {
			return false
		}
	}
	return true
}

func (a answer) must(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, ok := a.value(name, labels...)
	if !ok {
		t.Fatalf("answer lacks %s%v:\n%s", name, labels, a.body)
	}
	return v
}

const slaConfig = `
modules:
  default:
    timeout: 5s
    probes: 3
    interval: 5ms
    targets: ["127.0.0.1:*"]
    sla:
      default: 100ms
      segments:
        - {from: b, to: c, rtt: 10ms}
  short:
    timeout: 300ms
    probes: 2
    targets: ["127.0.0.1:*"]
`

// slowChain is b -> [proxy: delay each way] -> c -> z.
func slowChain(t *testing.T, oneWay time.Duration) string {
	target, _ := slowChainProxy(t, oneWay)
	return target
}

func slowChainProxy(t *testing.T, oneWay time.Duration) (string, interface{ SetDelay(f, b time.Duration) }) {
	var p interface{ SetDelay(f, b time.Duration) }
	target := chaintest.Chain(t, chaintest.ChainOptions{Front: func(name, addr string) string {
		if name != "c" {
			return addr
		}
		px := chaintest.DelayProxy(t, addr, oneWay, oneWay)
		p = px
		return px.Addr()
	}}, "b", "c", "z")
	return target, p
}

func TestProbeAnswers(t *testing.T) {
	target := slowChain(t, 10*time.Millisecond)
	e := newTestExporter(t, slaConfig, nil)
	a := e.get(t, "/probe?module=default&target="+target, nil)
	if a.code != 200 {
		t.Fatalf("status %d: %s", a.code, a.body)
	}
	if a.must(t, "probe_success") != 1 || a.must(t, "subsegment_probe_hops_reached") != 3 || a.must(t, "probe_duration_seconds") <= 0 {
		t.Errorf("probe_success/hops_reached/duration wrong:\n%s", a.body)
	}
	for _, seg := range [][2]string{{"a", "b"}, {"b", "c"}, {"c", "z"}} {
		l := []string{"from", seg[0], "to", seg[1]}
		med := a.must(t, "subsegment_segment_rtt_seconds", l...)
		mn, mx := a.must(t, "subsegment_segment_rtt_min_seconds", l...), a.must(t, "subsegment_segment_rtt_max_seconds", l...)
		if !(mn <= med && med <= mx && mn > 0) {
			t.Errorf("%v: min %v median %v max %v", seg, mn, med, mx)
		}
		for _, name := range []string{"subsegment_segment_jitter_seconds", "subsegment_segment_connect_seconds", "subsegment_segment_tcp_rtt_seconds",
			"subsegment_segment_tcp_min_rtt_seconds", "subsegment_segment_retransmits", "subsegment_segment_pmtu_bytes", "subsegment_segment_sla_seconds", "subsegment_segment_sla_exceeded"} {
			a.must(t, name, l...)
		}
		if _, ok := a.value("subsegment_segment_one_way_delay_seconds", append(l, "direction", "forward")...); ok {
			t.Errorf("%v: one-way delay without synchronised clocks", seg)
		}
	}
	// Relations, not windows: the 20 ms the proxy adds is a floor, and the
	// other segments stay far below it however loaded the machine is.
	bc := a.must(t, "subsegment_segment_rtt_seconds", "from", "b", "to", "c")
	if bc < 0.019 {
		t.Errorf("b->c rtt %v, under the 20ms the proxy adds", bc)
	}
	for _, seg := range [][2]string{{"a", "b"}, {"c", "z"}} {
		if v := a.must(t, "subsegment_segment_rtt_seconds", "from", seg[0], "to", seg[1]); v > bc/4 {
			t.Errorf("%s->%s rtt %v, over a quarter of b->c's %v", seg[0], seg[1], v, bc)
		}
	}
	if a.must(t, "subsegment_segment_sla_seconds", "from", "b", "to", "c") != 0.01 || a.must(t, "subsegment_segment_sla_exceeded", "from", "b", "to", "c") != 1 {
		t.Errorf("b->c SLA 10ms should be exceeded")
	}
	if a.must(t, "subsegment_segment_sla_seconds", "from", "a", "to", "b") != 0.1 || a.must(t, "subsegment_segment_sla_exceeded", "from", "a", "to", "b") != 0 {
		t.Errorf("a->b default SLA 100ms should hold")
	}
	for _, hop := range []string{"a", "b", "c", "z"} {
		a.must(t, "subsegment_hop_residence_seconds", "hop", hop)
		a.must(t, "subsegment_hop_clock_synced", "hop", hop)
	}
	if _, ok := a.value("subsegment_probe_failed_segment_info", "from", "a", "to", "b", "reason", "refused"); ok || a.mfs["subsegment_probe_failed_segment_info"] != nil {
		t.Errorf("failed segment info on a working chain")
	}
}

func TestProbeBrokenChain(t *testing.T) {
	end := chaintest.FreeAddr(t)
	c := chaintest.StartRelay(t, relay.Config{Name: "c", ForwardTo: end})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: c})
	e := newTestExporter(t, slaConfig, nil)
	a := e.get(t, "/probe?target="+b, nil)
	if a.code != 200 || a.must(t, "probe_success") != 0 {
		t.Fatalf("broken chain: status %d success %v", a.code, a.must(t, "probe_success"))
	}
	if a.must(t, "subsegment_probe_failed_segment_info", "from", "c", "to", end, "reason", "refused") != 1 {
		t.Errorf("failed segment not c -> %s (refused)", end)
	}
	// The segments before the break were measured.
	a.must(t, "subsegment_segment_rtt_seconds", "from", "a", "to", "b")
	a.must(t, "subsegment_segment_rtt_seconds", "from", "b", "to", "c")
	if _, ok := a.value("subsegment_segment_rtt_seconds", "from", "c", "to", end); ok {
		t.Errorf("rtt for the broken segment")
	}
	if a.must(t, "subsegment_segment_sla_exceeded", "from", "c", "to", end) != 1 {
		t.Errorf("a broken segment must count as out of SLA")
	}
}

func TestProbeTimeoutShorterThanChainDelay(t *testing.T) {
	target, proxy := slowChainProxy(t, time.Millisecond)
	e := newTestExporter(t, slaConfig, nil)
	// A first scrape through the healthy chain: b learns c's name.
	if a := e.get(t, "/probe?module=short&target="+target, nil); a.must(t, "probe_success") != 1 {
		t.Fatalf("healthy chain failed:\n%s", a.body)
	}
	// A probe now needs 6 s to come back; the module allows 300 ms. The
	// answer must come with the module's deadline, long before the probe
	// could (a relation that holds however loaded the machine is).
	const slow = 3 * time.Second
	proxy.SetDelay(slow, slow)
	a := e.get(t, "/probe?module=short&target="+target, nil)
	if a.code != 200 || a.must(t, "probe_success") != 0 {
		t.Fatalf("status %d, success %v", a.code, a.must(t, "probe_success"))
	}
	if a.must(t, "subsegment_probe_failed_segment_info", "from", "b", "to", "c", "reason", "timeout") != 1 {
		t.Errorf("the slow segment b -> c is not the one reported:\n%s", a.body)
	}
	if a.took >= slow {
		t.Errorf("answer after %v: the 300ms module timeout did not cut the probe short", a.took)
	}
	// Prometheus' scrape timeout header cuts the module's 5s down: 0.7s - 0.5s offset.
	start := time.Now()
	a = e.get(t, "/probe?module=default&target="+target, map[string]string{"X-Prometheus-Scrape-Timeout-Seconds": "0.7"})
	if took := time.Since(start); a.must(t, "probe_success") != 0 || took >= slow {
		t.Errorf("with a 0.7s scrape timeout: success %v after %v, the scrape timeout did not cut the 5s module short", a.must(t, "probe_success"), took)
	}
}

func TestProbeRejects(t *testing.T) {
	var accepted atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skip("127.0.0.2 not usable:", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	e := newTestExporter(t, slaConfig, nil)
	none := newTestExporter(t, "", nil)
	for _, tc := range []struct {
		name   string
		e      *testExporter
		path   string
		header map[string]string
		want   string
	}{
		{"disallowed target", e, "/probe?target=" + ln.Addr().String(), nil, "is not in the module's targets"},
		{"unknown module", e, "/probe?module=nope&target=127.0.0.1:9000", nil, `unknown module "nope": known modules are default, short`},
		{"missing target", e, "/probe", nil, "target parameter is missing"},
		{"target without port", e, "/probe?target=127.0.0.1", nil, "has no port: add one, e.g. 127.0.0.1:9000"},
		{"bad scrape timeout header", e, "/probe?target=127.0.0.1:9000", map[string]string{"X-Prometheus-Scrape-Timeout-Seconds": "soon"}, "X-Prometheus-Scrape-Timeout-Seconds"},
		{"scrape timeout below offset", e, "/probe?target=127.0.0.1:9000", map[string]string{"X-Prometheus-Scrape-Timeout-Seconds": "0.2"}, "leaves no time"},
		{"no config", none, "/probe?target=127.0.0.1:9000", nil, "--config.file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.e.get(t, tc.path, tc.header)
			if a.code != 400 || !strings.Contains(a.body, tc.want) {
				t.Errorf("status %d body %q, want 400 with %q", a.code, a.body, tc.want)
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if n := accepted.Load(); n != 0 {
		t.Errorf("a rejected target got %d connections", n)
	}
	m := e.get(t, "/metrics", nil)
	if m.must(t, "subsegment_exporter_probes_total", "module", "default", "result", "rejected") < 5 {
		t.Errorf("rejections not counted:\n%s", m.body)
	}
}

func TestProbeDebug(t *testing.T) {
	target := slowChain(t, time.Millisecond)
	cfg := `
modules:
  default:
    targets: ["127.0.0.1:*"]
    snmp:
      hops: {c: {target: "127.0.0.1:16161", auth: v2}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
auths:
  v2: {version: 2, community: "very-secret-community"}
`
	e := newTestExporter(t, cfg, nil)
	a := e.get(t, "/probe?debug=true&target="+target, nil)
	for _, want := range []string{"Logs for the probe:", "msg=probing", "msg=\"probe done\"", "Metrics that would have been returned:", "probe_success 1",
		"subsegment_segment_rtt_seconds{from=\"b\",to=\"c\"}", "Module configuration (secrets redacted):", "community: <secret>", "load1"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("debug output lacks %q:\n%s", want, a.body)
		}
	}
	if strings.Contains(a.body, "very-secret-community") {
		t.Errorf("debug output shows the community:\n%s", a.body)
	}
}

func TestProbeOneWayWithSyncedClocks(t *testing.T) {
	synced := clock.Sync{Synced: true, MaxErrorMicros: 100}
	base := clock.NewSystem()
	target := chaintest.Chain(t, chaintest.ChainOptions{
		Template: relay.Config{Clock: clock.Skewed{Base: base, State: &synced}},
		Front: func(name, addr string) string {
			if name != "c" {
				return addr
			}
			return chaintest.DelayProxy(t, addr, 5*time.Millisecond, 5*time.Millisecond).Addr()
		},
	}, "b", "c", "z")
	e := newTestExporter(t, slaConfig, func(p *ProbeHandler) { p.Clock = clock.Skewed{Base: base, State: &synced} })
	a := e.get(t, "/probe?target="+target, nil)
	fwd := a.must(t, "subsegment_segment_one_way_delay_seconds", "from", "b", "to", "c", "direction", "forward")
	ret := a.must(t, "subsegment_segment_one_way_delay_seconds", "from", "b", "to", "c", "direction", "return")
	bound := a.must(t, "subsegment_segment_one_way_delay_error_bound_seconds", "from", "b", "to", "c")
	rtt := a.must(t, "subsegment_segment_rtt_seconds", "from", "b", "to", "c")
	// Each direction holds the proxy's 5 ms (a floor); together they are
	// the segment's rtt (medians of the same probes, so about it).
	if fwd < 0.0049 || ret < 0.0049 || math.Abs(fwd+ret-rtt) > rtt/10 || bound != 0.0002 {
		t.Errorf("one-way b->c forward %v return %v (rtt %v) bound %v, want 5ms or more each, adding up to the rtt, and 0.0002", fwd, ret, rtt, bound)
	}
	if a.must(t, "subsegment_hop_clock_synced", "hop", "c") != 1 {
		t.Errorf("hop c not reported synced")
	}
}

func TestReload(t *testing.T) {
	e := newTestExporter(t, slaConfig, nil)
	post := func() (int, string) {
		resp, err := http.Post(e.srv.URL+"/-/reload", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := post(); code != 200 {
		t.Fatalf("reload of a good file: %d", code)
	}
	if a := e.get(t, "/-/reload", nil); a.code != http.StatusMethodNotAllowed {
		t.Errorf("GET /-/reload: %d, want 405", a.code)
	}
	if err := os.WriteFile(e.path, []byte("modules:\n  default:\n    bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, body := post()
	if code != 500 || !strings.Contains(body, "modules.default.bogus") {
		t.Errorf("reload of a bad file: %d %q", code, body)
	}
	m := e.get(t, "/metrics", nil)
	if m.must(t, "subsegment_exporter_config_last_reload_successful") != 0 {
		t.Errorf("failed reload not reported")
	}
	// The previous configuration still serves.
	if a := e.get(t, "/probe?module=short&target=127.0.0.1:1", nil); a.code != 200 {
		t.Errorf("after a failed reload, the old modules are gone: %d %s", a.code, a.body)
	}
	if a := e.get(t, "/-/healthy", nil); a.code != 200 {
		t.Errorf("/-/healthy: %d", a.code)
	}
	if a := e.get(t, "/", nil); a.code != 200 || !strings.Contains(a.body, `name="target"`) {
		t.Errorf("landing page lacks the probe form: %d", a.code)
	}
}

func TestProbeLogDoesNotLeakAboveDebug(t *testing.T) {
	var probeLog, processLog strings.Builder
	probeLogger(&probeLog, slog.NewTextHandler(&processLog, nil)).Info("hello", "k", "v")
	if !strings.Contains(probeLog.String(), "hello") || processLog.Len() != 0 {
		t.Errorf("probe log %q, process log (info level) %q: probe logs go to the process log only at debug", probeLog.String(), processLog.String())
	}
	// A process logging at debug gets the probe's records, at debug.
	processLog.Reset()
	for _, debugLog := range []io.Writer{nil, &probeLog} {
		probeLogger(debugLog, slog.NewTextHandler(&processLog, &slog.HandlerOptions{Level: slog.LevelDebug})).Info("hello")
	}
	if got := strings.Count(processLog.String(), "level=DEBUG msg=hello"); got != 2 {
		t.Errorf("process log at debug: %q", processLog.String())
	}
}
