package integration

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// exporterProc is the binary as a pure source exporter.
type exporterProc struct {
	*proc
	web string
}

// startExporter runs the binary with a config file, HTTP on a kernel-picked port.
func startExporter(t *testing.T, name, cfg string, extra ...string) *exporterProc {
	t.Helper()
	path := filepath.Join(t.TempDir(), "subsegment.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--relay.name", name, "--config.file", path, "--web.listen-address", "127.0.0.1:0", "--log.level", "debug"}, extra...)
	p := start(t, "exporter "+name, binary, args...)
	return &exporterProc{proc: p, web: p.waitOutput(t, webListening, 10*time.Second)[1]}
}

// slowChainProcs is b -> [delay proxy in this test] -> c -> z, relays as processes.
func slowChainProcs(t *testing.T, oneWay time.Duration, extra ...string) (b, c, z *hop) {
	t.Helper()
	z = startHop(t, "z", "", extra...)
	c = startHop(t, "c", z.addr, extra...)
	px := startDelay(t, c.addr, oneWay)
	b = startHop(t, "b", px.Addr(), extra...)
	return b, c, z
}

// promServer is a Prometheus started by the test.
type promServer struct {
	*proc
	url string
}

func startPrometheus(t *testing.T, config string, extra ...string) *promServer {
	t.Helper()
	bin := requireTool(t, "prometheus", "/usr/bin/prometheus")
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	addr := "127.0.0.1:" + itoa(port)
	args := append([]string{"--config.file", cfgPath, "--storage.tsdb.path", filepath.Join(dir, "data"), "--web.listen-address", addr}, extra...)
	p := start(t, "prometheus", bin, args...)
	p.waitOutput(t, regexp.MustCompile(`Server is ready to receive web requests`), 60*time.Second)
	return &promServer{proc: p, url: "http://" + addr}
}

type promSample struct {
	Labels map[string]string
	Value  float64
}

// query runs an instant query and returns the samples.
func (p *promServer) query(t *testing.T, q string) ([]promSample, error) {
	t.Helper()
	body := httpGet(t, p.url+"/api/v1/query?query="+url.QueryEscape(q))
	var resp struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil {
		return nil, fmt.Errorf("query %q: %v: %s", q, err, body)
	}
	var out []promSample
	for _, r := range resp.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %q: value %v", q, r.Value)
		}
		out = append(out, promSample{Labels: r.Metric, Value: v})
	}
	return out, nil
}

// waitValue waits (bounded) until q returns exactly one sample that ok accepts.
func (p *promServer) waitValue(t *testing.T, q string, timeout time.Duration, ok func(float64) bool) float64 {
	t.Helper()
	var got float64
	eventually(t, timeout, "Prometheus query "+q, func() error {
		s, err := p.query(t, q)
		if err != nil {
			return err
		}
		if len(s) != 1 {
			return fmt.Errorf("%d samples", len(s))
		}
		got = s[0].Value
		if !ok(got) {
			return fmt.Errorf("value %v", got)
		}
		return nil
	})
	return got
}

// blackboxScrapeConfig is the relabeling every blackbox-style exporter uses.
func blackboxScrapeConfig(exporter string, targets ...string) string {
	return fmt.Sprintf(`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: subsegment
    metrics_path: /probe
    params:
      module: [default]
    static_configs:
      - targets: ['%s']
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: '%s'
  - job_name: subsegment_exporter
    static_configs:
      - targets: ['%s']
`, strings.Join(targets, "', '"), exporter, exporter)
}

const promModule = `
modules:
  default:
    timeout: 5s
    probes: 3
    interval: 20ms
    targets: ["127.0.0.1:*"]
    sla:
      default: 100ms
      segments:
        - {from: b, to: c, rtt: 10ms}
`

func TestPrometheusScrapesTheSlowSegment(t *testing.T) {
	b, _, _ := slowChainProcs(t, 10*time.Millisecond)
	ex := startExporter(t, "a", promModule)
	prom := startPrometheus(t, blackboxScrapeConfig(ex.web, b.addr))

	rtt := prom.waitValue(t, `subsegment_segment_rtt_seconds{job="subsegment",from="b",to="c"}`, 60*time.Second, func(v float64) bool { return v > 0 })
	if rtt < 0.019 {
		t.Errorf("b -> c rtt in Prometheus %v, under the 20ms the proxy adds", rtt)
	}
	// The other segments stay far below it (a relation, not a window).
	prom.waitValue(t, `max(subsegment_segment_rtt_seconds{job="subsegment",from!="b"})`, 30*time.Second, func(v float64) bool { return v > 0 && v < rtt/4 })
	prom.waitValue(t, `subsegment_segment_sla_exceeded{job="subsegment",from="b",to="c"}`, 30*time.Second, func(v float64) bool { return v == 1 })
	prom.waitValue(t, `subsegment_segment_sla_exceeded{job="subsegment",from="a",to="b"}`, 30*time.Second, func(v float64) bool { return v == 0 })
	prom.waitValue(t, `probe_success{job="subsegment",instance="`+b.addr+`"}`, 30*time.Second, func(v float64) bool { return v == 1 })
	// The exporter's own metrics count the scrapes.
	prom.waitValue(t, `sum(subsegment_exporter_probes_total{job="subsegment_exporter",module="default",result="success"})`, 30*time.Second, func(v float64) bool { return v >= 1 })

	// The relays' own /metrics say what they relayed.
	body := httpGet(t, "http://"+b.web+"/metrics")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`subsegment_relay_frames_total\{kind="probe",result="ok"\} [1-9]`),
		regexp.MustCompile(`subsegment_relay_residence_seconds_count [1-9]`),
		regexp.MustCompile(`subsegment_relay_errors_total\{reason="refused"\} 0`),
		regexp.MustCompile(`subsegment_relay_connections \d`),
		regexp.MustCompile(`subsegment_exporter_build_info\{`),
		regexp.MustCompile(`process_resident_memory_bytes`),
	} {
		if !want.MatchString(body) {
			t.Errorf("relay b /metrics lacks %s", want)
		}
	}
}
