package integration

import (
	"html"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// freeBase finds a base port with the demo's ports free (bounded tries).
func freeBase(t *testing.T) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		base := 20000 + (os.Getpid()*7+try*397)%30000
		ok := true
		for _, off := range []int{1, 2, 3, 12, 20, 21, 22, 100, 101, 102, 103} {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+off))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range for the demo")
	return 0
}

// newDemoDirs lists the demo's temp directories that were not there before.
func newDemoDirs(before []string) []string {
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), "subsegment-demo-*"))
	var out []string
	for _, d := range after {
		if !slices.Contains(before, d) {
			out = append(out, d)
		}
	}
	return out
}

// A demo that cannot start (a port taken) says why and leaves nothing.
func TestDemoFailedStartLeavesNothing(t *testing.T) {
	base := freeBase(t)
	ln, err := net.Listen("tcp", "127.0.0.1:"+itoa(base+2))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), "subsegment-demo-*"))
	_, errOut, code := runBinary(t, nil, "demo", "--demo.base-port", itoa(base))
	if code != 1 || !strings.Contains(errOut, "is in use") || !strings.Contains(errOut, "--demo.base-port") {
		t.Errorf("demo with a taken port: exit %d\n%s", code, errOut)
	}
	if left := newDemoDirs(before); len(left) > 0 {
		t.Errorf("a failed demo left %v", left)
	}
}

func TestDemo(t *testing.T) {
	base := freeBase(t)
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), "subsegment-demo-*"))
	p := start(t, "demo", binary, "demo", "--demo.base-port", itoa(base), "--demo.delay", "20ms")
	p.waitOutput(t, regexp.MustCompile(`Press Ctrl-C to stop`), 60*time.Second)
	out := p.out.String()
	for _, want := range []string{"b -> c *", "slowest segment: b -> c", "a -> b", "c -> z", "/probe?target=", "curl -s"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	// The slow segment's median holds the 20 ms the proxy adds (a floor).
	m := regexp.MustCompile(`slowest segment: b -> c, median ([0-9.]+)ms`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no median for b -> c in:\n%s", out)
	}
	if ms, _ := strconv.ParseFloat(m[1], 64); ms < 19.5 {
		t.Errorf("b -> c median %vms, under the 20ms the proxy adds", ms)
	}
	// The printed one-shot command names the source a, as the chain does.
	if !regexp.MustCompile(`probe 127\.0\.0\.1:\d+ --relay\.name a\n`).MatchString(out) {
		t.Errorf("the printed probe command does not name the source a:\n%s", out)
	}
	dir := regexp.MustCompile(`removes their logs`).FindString(out)
	if dir == "" {
		t.Errorf("the demo does not say it removes its logs:\n%s", out)
	}
	// The landing page's example link works (it used to point at port 9000).
	landing := httpGet(t, "http://127.0.0.1:"+itoa(base+100)+"/")
	link := regexp.MustCompile(`href="/?(probe\?[^"]+)"`).FindStringSubmatch(landing)
	if link == nil {
		t.Fatalf("landing page has no example probe link:\n%s", landing)
	}
	example := httpGet(t, "http://127.0.0.1:"+itoa(base+100)+"/"+html.UnescapeString(link[1]))
	if !strings.Contains(example, "probe_success 1") {
		t.Errorf("the landing page's example probe %s:\n%s", link[1], example)
	}
	// The chain is up: probe it from outside the demo.
	stdout, _, code := runBinary(t, nil, "probe", "127.0.0.1:"+itoa(base+1), "--count", "2", "--relay.name", "x")
	if code != 0 || !strings.Contains(stdout, "b -> c") {
		t.Errorf("probe of the demo chain: exit %d\n%s", code, stdout)
	}
	// The exporter answers the printed /probe URL with the slow segment over its SLA.
	body := httpGet(t, "http://127.0.0.1:"+itoa(base+100)+"/probe?target=127.0.0.1:"+itoa(base+1)+"&module=default")
	for _, want := range []string{"probe_success 1", `subsegment_segment_sla_exceeded{from="b",to="c"} 1`, `subsegment_sla_violation_info{from="b",hop="c",load1="`} {
		if !strings.Contains(body, want) {
			t.Errorf("demo /probe lacks %q:\n%s", want, body)
		}
	}
	// With HAProxy and nginx installed (make test installs them), the
	// HTTP chain runs too, its slow segment h1 -> n1 over its SLA.
	requireTool(t, "haproxy", "/usr/sbin/haproxy")
	requireTool(t, "nginx", "/usr/sbin/nginx")
	if !strings.Contains(out, "slowest segment: h1 -> n1") || !strings.Contains(out, "module=web") {
		t.Errorf("demo output lacks the HTTP chain:\n%s", out)
	}
	body = httpGet(t, "http://127.0.0.1:"+itoa(base+100)+"/probe?target=http://127.0.0.1:"+itoa(base+20)+"/&module=web")
	for _, want := range []string{"probe_success 1", `subsegment_segment_sla_exceeded{from="h1",to="n1"} 1`, `subsegment_segment_resolution_seconds{from="h1",to="n1"} 0.001`} {
		if !strings.Contains(body, want) {
			t.Errorf("demo HTTP /probe lacks %q:\n%s", want, body)
		}
	}
	// The chain page is the first thing the demo prints, and draws both chains.
	if !strings.HasPrefix(out, "subsegment demo: the chain page will be at http://127.0.0.1:"+itoa(base+100)+"/") {
		t.Errorf("the demo does not print the chain page's URL first:\n%s", out)
	}
	demoScreenshot(t, "http://127.0.0.1:"+itoa(base+100)+"/")
	// Ctrl-C in a terminal reaches the whole foreground process group: the
	// demo alone must act on it (its children have their own groups).
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("demo did not stop within 15s of SIGINT")
	}
	if p.err != nil || !strings.Contains(p.out.String(), "subsegment demo: stopping") {
		t.Errorf("demo exit after Ctrl-C: %v\n%s", p.err, p.out.String())
	}
	if left := newDemoDirs(before); len(left) > 0 {
		t.Errorf("left behind after the demo stopped: %v", left)
	}
	for _, off := range []int{1, 2, 3, 12, 20, 21, 22, 100} {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+itoa(base+off), time.Second); err == nil {
			c.Close()
			t.Errorf("port %d still answers after the demo stopped", base+off)
		}
	}
}
