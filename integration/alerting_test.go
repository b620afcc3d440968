package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// renderMixin renders the mixin's alerts and rules with config overrides,
// the way `make mixins` does.
func renderMixin(t *testing.T, overrides string) (alerts, rules string) {
	t.Helper()
	jsonnet := requireTool(t, "jsonnet", "/usr/bin/jsonnet")
	dir := t.TempDir()
	for _, part := range []string{"prometheusAlerts", "prometheusRules"} {
		expr := fmt.Sprintf(`std.manifestYamlDoc(((import "mixin.libsonnet") + {_config+:: %s}).%s)`, overrides, part)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, jsonnet, "-J", "../mixins", "-S", "-e", expr).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("jsonnet %s: %v\n%s", part, err, out)
		}
		path := filepath.Join(dir, part+".yaml")
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		if part == "prometheusAlerts" {
			alerts = path
		} else {
			rules = path
		}
	}
	return alerts, rules
}

// slackSink receives what Alertmanager's Slack notifier posts.
type slackSink struct {
	mu    sync.Mutex
	posts []string
	srv   *httptest.Server
}

func newSlackSink(t *testing.T) *slackSink {
	s := &slackSink{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.posts = append(s.posts, string(body))
		s.mu.Unlock()
		fmt.Fprint(w, "ok")
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *slackSink) texts() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, p := range s.posts {
		var msg struct {
			Attachments []struct {
				Title string `json:"title"`
				Text  string `json:"text"`
			} `json:"attachments"`
		}
		if json.Unmarshal([]byte(p), &msg) == nil {
			for _, a := range msg.Attachments {
				out = append(out, a.Title+"\n"+a.Text)
			}
		}
	}
	return out
}

// startAlertmanager runs the example configuration of the mixin, with its
// Slack receivers pointed at sink and short grouping delays.
func startAlertmanager(t *testing.T, sink *slackSink) string {
	t.Helper()
	bin := requireTool(t, "prometheus-alertmanager", "/usr/bin/prometheus-alertmanager")
	dir := t.TempDir()
	cfg, err := os.ReadFile("../mixins/alertmanager/alertmanager.yml")
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := os.ReadFile("../mixins/alertmanager/subsegment.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	c := strings.ReplaceAll(string(cfg), "https://hooks.slack.com/services/REPLACE/ME", sink.srv.URL+"/slack")
	c = strings.Replace(c, "group_wait: 30s", "group_wait: 1s", 1)
	c = strings.Replace(c, "group_interval: 5m", "group_interval: 2s", 1)
	os.WriteFile(filepath.Join(dir, "alertmanager.yml"), []byte(c), 0o600)
	os.WriteFile(filepath.Join(dir, "subsegment.tmpl"), tmpl, 0o600)
	addr := "127.0.0.1:" + itoa(freePort(t))
	start(t, "alertmanager", bin, "--config.file", filepath.Join(dir, "alertmanager.yml"), "--storage.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr, "--cluster.listen-address", "")
	eventually(t, 30*time.Second, "Alertmanager ready", func() error {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	return addr
}

type amAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	Status      struct {
		State string `json:"state"`
	} `json:"status"`
}

func TestAlertmanagerGetsTheSLAAlertWithSNMPContext(t *testing.T) {
	agent := startSNMPD(t, "7.25", "3.10")
	b, _, _ := slowChainProcs(t, 10*time.Millisecond)
	ex := startExporter(t, "a", fmt.Sprintf(`
modules:
  default:
    timeout: 5s
    probes: 3
    interval: 10ms
    targets: ["127.0.0.1:*"]
    sla:
      default: 100ms
      segments: [{from: b, to: c, rtt: 5ms}]
    snmp:
      hops: {c: {target: "%s", auth: v2}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
auths:
  v2: {version: 2, community: public}
`, agent.addr))
	alerts, rules := renderMixin(t, `{slaExceededFor: "5s", chainBrokenFor: "5s", probeFailingFor: "5s"}`)
	sink := newSlackSink(t)
	am := startAlertmanager(t, sink)
	prom := startPrometheus(t, blackboxScrapeConfig(ex.web, b.addr)+fmt.Sprintf(`
rule_files: ['%s', '%s']
alerting:
  alertmanagers:
    - static_configs:
        - targets: ['%s']
`, rules, alerts, am))

	// The recording rule the alert uses is there.
	prom.waitValue(t, `from_to:subsegment_segment_rtt_seconds:avg5m{from="b",to="c"}`, 60*time.Second, func(v float64) bool { return v > 0.015 })

	var got amAlert
	eventually(t, 120*time.Second, "SubsegmentSLAExceeded in Alertmanager", func() error {
		body := httpGet(t, "http://"+am+"/api/v2/alerts?filter=alertname%3D%22SubsegmentSLAExceeded%22")
		var list []amAlert
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			return fmt.Errorf("%v: %s", err, body)
		}
		for _, a := range list {
			if a.Labels["from"] == "b" && a.Labels["to"] == "c" && a.Status.State == "active" {
				got = a
				return nil
			}
		}
		return fmt.Errorf("no active alert for b -> c among %d", len(list))
	})
	if got.Labels["severity"] != "warning" || got.Labels["instance"] != b.addr {
		t.Errorf("alert labels %v", got.Labels)
	}
	if got.Annotations["context"] != "load1 on c was 7.25" {
		t.Errorf("context annotation %q, want %q", got.Annotations["context"], "load1 on c was 7.25")
	}
	if !regexp.MustCompile(`^The 5m average rtt of segment b -> c \(chain .+\) is [0-9.]+ms, over its SLA of 5ms\. Context: load1 on c was 7\.25\.$`).MatchString(got.Annotations["description"]) {
		t.Errorf("description %q", got.Annotations["description"])
	}
	// Segments within their SLA raise nothing.
	body := httpGet(t, "http://"+am+"/api/v2/alerts")
	if strings.Contains(body, `"from":"a"`) || strings.Contains(body, `"from":"c"`) {
		t.Errorf("alerts for segments within their SLA:\n%s", body)
	}
	// The notification, rendered by the example template, carries the context.
	eventually(t, 60*time.Second, "Slack notification", func() error {
		for _, text := range sink.texts() {
			if strings.Contains(text, "SubsegmentSLAExceeded") && strings.Contains(text, "segment b -> c") && strings.Contains(text, "SNMP context: load1 on c was 7.25") {
				return nil
			}
		}
		return fmt.Errorf("notifications so far: %q", sink.texts())
	})
}
