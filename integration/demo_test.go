package integration

import (
	"net"
	"os"
	"regexp"
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
		for _, off := range []int{1, 2, 3, 12, 100, 101, 102, 103} {
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

func TestDemo(t *testing.T) {
	base := freeBase(t)
	p := start(t, "demo", binary, "demo", "--demo.base-port", itoa(base), "--demo.delay", "20ms")
	p.waitOutput(t, regexp.MustCompile(`Press Ctrl-C to stop`), 60*time.Second)
	out := p.out.String()
	for _, want := range []string{"b -> c *", "slowest segment: b -> c", "a -> b", "c -> z", "/probe?target=", "curl -s"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	// The slow segment's median is the 20 ms the proxy adds, give or take.
	m := regexp.MustCompile(`slowest segment: b -> c, median ([0-9.]+)ms`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no median for b -> c in:\n%s", out)
	}
	if ms, _ := strconv.ParseFloat(m[1], 64); ms < 19.5 || ms > 25 {
		t.Errorf("b -> c median %vms, want about 20ms", ms)
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
	// Ctrl-C stops the demo and every process it started.
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("demo did not stop within 15s of SIGINT")
	}
	if p.err != nil {
		t.Errorf("demo exit: %v\n%s", p.err, p.out.String())
	}
	for _, off := range []int{1, 2, 3, 12, 100} {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+itoa(base+off), time.Second); err == nil {
			c.Close()
			t.Errorf("port %d still answers after the demo stopped", base+off)
		}
	}
}
