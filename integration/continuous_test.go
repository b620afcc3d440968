package integration

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metricValue reads one sample of a text exposition (the first line that
// starts with series), -1 when absent.
func metricValue(body, series string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, series+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, series)), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// TestContinuousProbingThroughPrometheus: a continuous entry on b -> [20
// ms] -> c -> z; Prometheus scrapes /metrics, and histogram_quantile over
// what it scraped puts the delay on b -> c. Then c is killed and
// restarted on its port: failures, then recovery, with the same exporter.
func TestContinuousProbingThroughPrometheus(t *testing.T) {
	z := startHop(t, "z", "")
	cPort := freePort(t)
	cAddr := "127.0.0.1:" + itoa(cPort)
	startC := func() *hop {
		p := start(t, "relay c", binary, "--listen", cAddr, "--forward-to", z.addr, "--relay.name", "c", "--web.listen-address", "127.0.0.1:0")
		h := &hop{proc: p}
		h.addr = p.waitOutput(t, relayListening, 10*time.Second)[1]
		return h
	}
	c := startC()
	px := startDelay(t, cAddr, 10*time.Millisecond)
	b := startHop(t, "b", px.Addr())
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  default:
    timeout: 2s
    targets: ["127.0.0.1:*"]
    sla:
      default: 5ms
      segments: [{from: b, to: c, rtt: 10ms}]
continuous:
  - {target: "%s", module: default, interval: 100ms}
`, b.addr))
	prom := startPrometheus(t, fmt.Sprintf(`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: subsegment_exporter
    static_configs:
      - targets: ['%s']
`, ex.web))
	quantile := func(q, from, to string) string {
		return fmt.Sprintf(`histogram_quantile(%s, sum by (le) (rate(subsegment_continuous_segment_rtt_seconds_bucket{from=%q,to=%q}[20s])))`, q, from, to)
	}
	// 20 ms falls in the default bucket (12.8 ms, 25.6 ms].
	bc := prom.waitValue(t, quantile("0.5", "b", "c"), 90*time.Second, func(v float64) bool { return v > 0.0128 && v <= 0.0256 })
	for _, seg := range [][2]string{{"a", "b"}, {"c", "z"}} {
		prom.waitValue(t, quantile("0.5", seg[0], seg[1]), 30*time.Second, func(v float64) bool { return v > 0 && v < bc/4 })
	}
	prom.waitValue(t, quantile("0.99", "b", "c"), 30*time.Second, func(v float64) bool { return v > 0.0128 })
	prom.waitValue(t, `subsegment_continuous_segment_sla_seconds{from="b",to="c"}`, 30*time.Second, func(v float64) bool { return v == 0.01 })
	prom.waitValue(t, `sum(subsegment_continuous_hop_residence_seconds_count{hop="c"})`, 30*time.Second, func(v float64) bool { return v > 0 })

	// c killed: failures on b -> c.
	metrics := func() string { return httpGet(t, "http://"+ex.web+"/metrics") }
	okSeries := fmt.Sprintf(`subsegment_continuous_probes_total{module="default",result="success",target=%q}`, b.addr)
	c.kill()
	eventually(t, 30*time.Second, "failures on b -> c after c was killed", func() error {
		body := metrics()
		re := regexp.MustCompile(`subsegment_continuous_segment_failures_total\{from="b",module="default",reason="[a-z_]+",target="[^"]+",to="(c|` + regexp.QuoteMeta(cAddr) + `)"\} ([0-9]+)`)
		if m := re.FindStringSubmatch(body); m == nil || m[2] == "0" {
			return fmt.Errorf("no failure of b -> c yet")
		}
		return nil
	})
	before := metricValue(metrics(), okSeries)
	// Restarted on its port: the same exporter recovers (with backoff).
	startC()
	eventually(t, 60*time.Second, "recovery after c restarted", func() error {
		if v := metricValue(metrics(), okSeries); v < before+5 {
			return fmt.Errorf("successes %v, were %v", v, before)
		}
		return nil
	})
}

// TestContinuousBadEntryIsALoadError: --config.check names file, line and key.
func TestContinuousBadEntryIsALoadError(t *testing.T) {
	path := t.TempDir() + "/bad.yml"
	mustWrite(t, path, "modules:\n  default: {targets: [\"127.0.0.1:*\"]}\ncontinuous:\n  - {target: \"10.9.9.9:9000\", module: default}\n")
	out, err := exec.Command(binary, "--config.check", "--config.file", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), path+":4: continuous[0].target: target \"10.9.9.9:9000\" is not in the module's targets") {
		t.Fatalf("--config.check of a bad continuous entry: %v\n%s", err, out)
	}
}

func mustWrite(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
