package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/demo/delayproxy"
	"github.com/subsegment/subsegment_exporter/internal/testkit/certtest"
)

// The proxies' lines, as docs/http-chains.md gives them (docs/docs_test.go
// checks that the page's lines are these).
const (
	haproxyStamp = `  http-request set-var(txn.subsegment_in) date(0,us)
  http-after-response add-header Subsegment-Timing "%s;dur=%%[date(0,us),sub(txn.subsegment_in)]us"`
	nginxStamp  = `add_header Subsegment-Timing "%s;dur=${request_time}s" always;`
	apacheStamp = `Header add Subsegment-Timing "%s;dur=%%Dus"`
)

// startBackend is the application behind the proxies: it answers every
// request with a small body.
func startBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// waitListening waits (bounded) until something accepts on addr.
func waitListening(t *testing.T, p *proc, addr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v):\n%s", p.name, p.err, tail(p.out.String(), 4000))
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s does not accept on %s:\n%s", p.name, addr, tail(p.out.String(), 4000))
}

// startNginx runs nginx as a reverse proxy to upstream, stamping as hop
// (no stamp when hop is empty).
func startNginx(t *testing.T, hop, upstream string) (*proc, string) {
	t.Helper()
	bin := requireTool(t, "nginx", "/usr/sbin/nginx")
	dir := t.TempDir()
	addr := "127.0.0.1:" + itoa(freePort(t))
	stamp := ""
	if hop != "" {
		stamp = fmt.Sprintf(nginxStamp, hop)
	}
	conf := fmt.Sprintf(`daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s; uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;
  upstream app { server %[3]s; keepalive 8; }
  server {
    listen %[2]s;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      %[4]s
    }
  }
}
`, dir, addr, upstream, stamp)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, "nginx "+hop, bin, "-c", path, "-e", "stderr")
	waitListening(t, p, addr)
	return p, addr
}

// startHAProxy runs HAProxy in http mode to upstream, stamping as hop;
// with pem, it serves TLS.
func startHAProxy(t *testing.T, hop, upstream, pem string) string {
	t.Helper()
	bin := requireTool(t, "haproxy", "/usr/sbin/haproxy")
	addr := "127.0.0.1:" + itoa(freePort(t))
	bind := addr
	if pem != "" {
		bind += " ssl crt " + pem
	}
	conf := fmt.Sprintf(`global
  maxconn 256
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind %s
%s
  default_backend b
backend b
  server s1 %s
`, bind, fmt.Sprintf(haproxyStamp, hop), upstream)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, "haproxy "+hop, bin, "-f", path, "-db")
	waitListening(t, p, addr)
	return addr
}

// startApache runs Apache httpd as a reverse proxy to upstream, stamping as hop.
func startApache(t *testing.T, hop, upstream string) string {
	t.Helper()
	bin := requireTool(t, "apache2", "/usr/sbin/apache2")
	dir := t.TempDir()
	addr := "127.0.0.1:" + itoa(freePort(t))
	mods := "/usr/lib/apache2/modules"
	conf := fmt.Sprintf(`ServerRoot %[1]s
PidFile %[1]s/apache.pid
ErrorLog /dev/stderr
Mutex file:%[1]s
Listen %[2]s
LoadModule mpm_event_module %[4]s/mod_mpm_event.so
LoadModule authz_core_module %[4]s/mod_authz_core.so
LoadModule proxy_module %[4]s/mod_proxy.so
LoadModule proxy_http_module %[4]s/mod_proxy_http.so
LoadModule headers_module %[4]s/mod_headers.so
ServerName localhost
ProxyPass / http://%[3]s/
%[5]s
`, dir, addr, upstream, mods, fmt.Sprintf(apacheStamp, hop))
	path := filepath.Join(dir, "apache.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, "apache "+hop, bin, "-f", path, "-DFOREGROUND")
	waitListening(t, p, addr)
	return addr
}

// probeJSON runs `probe URL --output json` and decodes it.
func probeURLJSON(t *testing.T, url string, extra ...string) (map[string]any, string) {
	t.Helper()
	args := append([]string{"probe", url, "--relay.name", "a", "--output", "json", "--count", "10", "--interval", "0.02"}, extra...)
	cmd := exec.Command(binary, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var doc map[string]any
	if jerr := json.Unmarshal(out, &doc); jerr != nil {
		t.Fatalf("probe %s: %v %v\n%s\n%s", url, err, jerr, out, stderr.String())
	}
	return doc, stderr.String()
}

// segmentMedians maps "from>to" to the median rtt in seconds.
func segmentMedians(doc map[string]any) map[string]float64 {
	out := map[string]float64{}
	segs, _ := doc["segments"].([]any)
	for _, s := range segs {
		m := s.(map[string]any)
		rtt, _ := m["rtt_seconds"].(map[string]any)
		med, _ := rtt["median"].(float64)
		out[m["from"].(string)+">"+m["to"].(string)] = med
	}
	return out
}

func segmentOrder(doc map[string]any) []string {
	var out []string
	segs, _ := doc["segments"].([]any)
	for _, s := range segs {
		m := s.(map[string]any)
		out = append(out, m["from"].(string)+">"+m["to"].(string))
	}
	return out
}

// echoRTT is the median round trip of small messages through a delaying
// proxy with oneWay each way to a plain echo: the reference for what the
// same delay should add to a segment.
func echoRTT(t *testing.T, oneWay time.Duration) time.Duration {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	px, err := delayproxy.Start("127.0.0.1:0", ln.Addr().String(), oneWay, oneWay)
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	c, err := net.Dial("tcp", px.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	var rtts []time.Duration
	for range 11 {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		t0 := time.Now()
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(t0))
		time.Sleep(20 * time.Millisecond)
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2]
}

// TestHTTPChainThroughHAProxyAndNginx: source -> HAProxy (h1) -> 20 ms
// delay -> nginx (n1) -> backend. The delay shows on h1 -> n1 as it shows
// on a plain echo through the same delaying proxy; nginx stopped names the
// broken segment; a proxy that does not stamp is reported.
func TestHTTPChainThroughHAProxyAndNginx(t *testing.T) {
	backend := startBackend(t)
	nginx, n1 := startNginx(t, "n1", backend)
	const oneWay = 10 * time.Millisecond
	px := startDelay(t, n1, oneWay)
	h1 := startHAProxy(t, "h1", px.Addr(), "")
	url := "http://" + h1 + "/health"

	doc, stderr := probeURLJSON(t, url)
	if doc["success"] != true {
		t.Fatalf("probe failed: %v\n%s", doc["failure"], stderr)
	}
	if got, want := segmentOrder(doc), []string{"a>h1", "h1>n1", "n1>backend"}; !slices.Equal(got, want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
	med := segmentMedians(doc)
	ref := echoRTT(t, oneWay).Seconds()
	tol := max(0.0015, 0.05*ref)
	t.Logf("h1>n1 %.4fs, plain echo through the same delay %.4fs (tolerance %.4fs); a>h1 %.6fs, n1>backend %.3fs", med["h1>n1"], ref, tol, med["a>h1"], med["n1>backend"])
	if d := med["h1>n1"] - ref; d > tol || d < -tol {
		t.Errorf("h1>n1 median %.4fs, want the plain echo's %.4fs within %.4fs", med["h1>n1"], ref, tol)
	}
	// The undelayed segments stay well under the delayed one (a relation,
	// not a time window: the machine may be busy).
	if med["a>h1"] > med["h1>n1"]/4 || med["n1>backend"] > med["h1>n1"]/4 {
		t.Errorf("undelayed segments a>h1 %.4fs, n1>backend %.4fs: want each under a quarter of h1>n1's %.4fs", med["a>h1"], med["n1>backend"], med["h1>n1"])
	}
	segs := doc["segments"].([]any)
	if res := segs[1].(map[string]any)["resolution_seconds"]; res != 0.001 {
		t.Errorf("h1>n1 resolution %v, want 0.001 (nginx stamps milliseconds)", res)
	}

	// The Nagios check of the same URL: h1 -> n1 over the warning range.
	stdout, _, code := runBinary(t, nil, "check", url, "--relay.name", "a", "-w", "10", "-c", "100")
	if code != 1 || !strings.HasPrefix(stdout, "SUBSEGMENT WARNING") || !strings.Contains(stdout, "'h1_n1_rtt'=") {
		t.Errorf("check %s: exit %d\n%s", url, code, stdout)
	}

	// nginx stopped: HAProxy answers with its own error page, which it
	// stamps; an exporter that saw the chain before names the broken
	// segment h1 -> n1.
	e := startExporter(t, "a", "modules:\n  web:\n    prober: http\n    targets: [\"127.0.0.1:*\"]\n")
	probe := "http://" + e.web + "/probe?module=web&target=" + url
	if body := httpGet(t, probe); !strings.Contains(body, "probe_success 1") {
		t.Fatalf("/probe before nginx stopped:\n%s", body)
	}
	nginx.stop(t)
	body := httpGet(t, probe)
	if !strings.Contains(body, "probe_success 0") || !strings.Contains(body, `subsegment_probe_failed_segment_info{from="h1",reason="http_status",to="n1"} 1`) {
		t.Fatalf("with nginx stopped, /probe does not name h1 -> n1:\n%s", body)
	}
	// A one-shot probe that never saw n1 names what h1 stands in front of.
	doc, _ = probeURLJSON(t, url, "--timeout", "3")
	f, _ := doc["failure"].(map[string]any)
	if doc["success"] != false || f == nil || f["from"] != "h1" || f["reason"] != "http_status" {
		t.Fatalf("with nginx stopped: failure %v, want h1 -> its next hop (http_status)", f)
	}
	t.Logf("nginx stopped: %v", f["message"])
}

// TestHTTPProxyThatDoesNotStamp: an nginx without the line, with the
// module's hops saying it should stamp: /probe names it (bad_header).
func TestHTTPProxyThatDoesNotStamp(t *testing.T) {
	backend := startBackend(t)
	_, n1 := startNginx(t, "", backend)
	h1 := startHAProxy(t, "h1", n1, "")
	e := startExporter(t, "a", `modules:
  web:
    prober: http
    targets: ["127.0.0.1:*"]
    http: {hops: [h1, n1]}
`)
	body := httpGet(t, "http://"+e.web+"/probe?module=web&target=http://"+h1+"/")
	if !strings.Contains(body, "probe_success 0") || !strings.Contains(body, `subsegment_probe_failed_segment_info{from="h1",reason="bad_header",to="n1"} 1`) {
		t.Fatalf("/probe does not report n1 missing:\n%s", body)
	}
	debug := httpGet(t, "http://"+e.web+"/probe?module=web&target=http://"+h1+"/&debug=true")
	if !strings.Contains(debug, "n1 did not stamp the response") {
		t.Errorf("debug output does not say which proxy did not stamp:\n%s", debug)
	}
}

// TestHTTPSToTheFirstProxy: HAProxy serves TLS; the module verifies it
// against the test's CA; the handshake goes to a -> h1's connect time.
func TestHTTPSToTheFirstProxy(t *testing.T) {
	backend := startBackend(t)
	_, n1 := startNginx(t, "n1", backend)
	ca := certtest.New(t, t.TempDir(), "web")
	cert, key := ca.Issue(t, "h1")
	pem := filepath.Join(t.TempDir(), "h1.pem")
	c, _ := os.ReadFile(cert)
	k, _ := os.ReadFile(key)
	if err := os.WriteFile(pem, append(c, k...), 0o600); err != nil {
		t.Fatal(err)
	}
	h1 := startHAProxy(t, "h1", n1, pem)
	e := startExporter(t, "a", fmt.Sprintf(`modules:
  web:
    prober: http
    targets: ["127.0.0.1:*"]
    http:
      tls: {ca_file: %s}
  untrusted:
    prober: http
    targets: ["127.0.0.1:*"]
`, ca.CAFile))
	body := httpGet(t, "http://"+e.web+"/probe?module=web&target=https://"+h1+"/")
	for _, want := range []string{"probe_success 1", `subsegment_segment_rtt_seconds{from="h1",to="n1"}`, `subsegment_segment_connect_seconds{from="a",to="h1"}`} {
		if !strings.Contains(body, want) {
			t.Fatalf("https /probe lacks %q:\n%s", want, body)
		}
	}
	body = httpGet(t, "http://"+e.web+"/probe?module=untrusted&target=https://"+h1+"/")
	// The exporter saw the chain through the other module: it names h1.
	if !strings.Contains(body, `subsegment_probe_failed_segment_info{from="a",reason="auth",to="h1"} 1`) {
		t.Fatalf("a certificate the module does not trust is not an auth failure of a -> h1:\n%s", body)
	}
}

// TestHTTPChainThroughApache: Apache httpd's line, in front of nginx.
func TestHTTPChainThroughApache(t *testing.T) {
	backend := startBackend(t)
	_, n1 := startNginx(t, "n1", backend)
	a1 := startApache(t, "a1", n1)
	doc, stderr := probeURLJSON(t, "http://"+a1+"/")
	if doc["success"] != true {
		t.Fatalf("probe failed: %v\n%s", doc["failure"], stderr)
	}
	if got, want := segmentOrder(doc), []string{"a>a1", "a1>n1", "n1>backend"}; !slices.Equal(got, want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
}
