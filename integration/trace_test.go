package integration

import (
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/continuous"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/netlab"
	"github.com/subsegment/subsegment_exporter/internal/testkit/nfqdelay"
)

// traceLab is the chain a — b — r1 — r2 — c, with a second way
// from b to r2 through ra (route changes, equal-cost multipath):
//
//	a  eth1 10.91.0.1 — b  eth0 10.91.0.2
//	b  eth1 10.91.1.1 — r1 eth1 10.91.1.2
//	r1 eth2 10.91.2.1 — r2 eth1 10.91.2.2
//	r2 eth2 10.91.3.1 — c  eth1 10.91.3.2
//	b  eth2 10.91.4.1 — ra eth1 10.91.4.2
//	ra eth2 10.91.5.1 — r2 eth3 10.91.5.2
//
// The relays are the built binary: b at 10.91.0.2:9000 forwarding to c at
// 10.91.3.2:9000; the source a runs `probe` (or serves) inside its host.
type traceLab struct {
	*netlab.Lab
	t                   *testing.T
	a, b, r1, r2, ra, c *netlab.Host
}

const (
	labB = "10.91.0.2:9000"
	labC = "10.91.3.2:9000"
	// The routers' addresses as they answer b.
	addrR1 = "10.91.1.2"
	addrR2 = "10.91.2.2"
	addrRA = "10.91.4.2"
	addrC  = "10.91.3.2"
)

func newTraceLab(t *testing.T) *traceLab {
	l := &traceLab{Lab: netlab.New(t), t: t}
	l.a, l.b, l.r1, l.r2, l.ra, l.c = l.Host("a"), l.Host("b"), l.Host("r1"), l.Host("r2"), l.Host("ra"), l.Host("c")
	l.Link(l.a, "eth1", "10.91.0.1/24", l.b, "eth0", "10.91.0.2/24")
	l.Link(l.b, "eth1", "10.91.1.1/24", l.r1, "eth1", "10.91.1.2/24")
	l.Link(l.r1, "eth2", "10.91.2.1/24", l.r2, "eth1", "10.91.2.2/24")
	l.Link(l.r2, "eth2", "10.91.3.1/24", l.c, "eth1", "10.91.3.2/24")
	l.Link(l.b, "eth2", "10.91.4.1/24", l.ra, "eth1", "10.91.4.2/24")
	l.Link(l.ra, "eth2", "10.91.5.1/24", l.r2, "eth3", "10.91.5.2/24")
	for _, r := range []*netlab.Host{l.r1, l.r2, l.ra} {
		r.Router()
	}
	// c answers every UDP probe that reaches it (the unprivileged
	// fallback): port unreachable is otherwise rate-limited.
	l.c.Sysctl("net.ipv4.icmp_ratelimit", "0")
	l.b.Route("add", "10.91.2.0/24", "via", addrR1)
	l.b.Route("add", "10.91.3.0/24", "via", addrR1)
	l.b.Route("add", "10.91.5.0/24", "via", addrRA)
	l.r1.Route("add", "10.91.3.0/24", "via", addrR2)
	l.r2.Route("add", "10.91.1.0/24", "via", "10.91.2.1")
	l.r2.Route("add", "10.91.4.0/24", "via", "10.91.5.1")
	l.ra.Route("add", "10.91.3.0/24", "via", "10.91.5.2")
	l.ra.Route("add", "10.91.1.0/24", "via", "10.91.4.1")
	l.c.Route("add", "10.91.0.0/16", "via", "10.91.3.1")
	return l
}

// relay starts the binary as a relay in h, behind prefix (setpriv, or
// nothing), with its HTTP on the namespace's own loopback.
func (l *traceLab) relay(h *netlab.Host, listen, forward string, prefix []string, extra ...string) *proc {
	l.t.Helper()
	argv := append([]string{"netns", "exec", h.NS}, prefix...)
	argv = append(argv, binary, "--listen", listen, "--relay.name", h.Name, "--web.listen-address", "127.0.0.1:9717")
	if forward != "" {
		argv = append(argv, "--forward-to", forward)
	}
	p := start(l.t, "relay "+h.Name, "ip", append(argv, extra...)...)
	p.waitOutput(l.t, relayListening, 10*time.Second)
	return p
}

// chain starts c and b (b with its extra flags and prefix).
func (l *traceLab) chain(bPrefix []string, bExtra ...string) *proc {
	l.relay(l.c, labC, "", nil)
	return l.relay(l.b, labB, labC, bPrefix, bExtra...)
}

// probe runs `probe` in a and returns its JSON.
func (l *traceLab) probe(args ...string) *prober.Result {
	l.t.Helper()
	argv := []string{"netns", "exec", l.a.NS, binary, "probe", labB, "--relay.name", "a", "--output", "json", "--interval", "20ms"}
	if !slices.Contains(args, "--count") {
		argv = append(argv, "--count", "10")
	}
	argv = append(argv, args...)
	out, err := exec.Command("ip", argv...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		l.t.Fatalf("probe %v: %v\n%s\n%s", args, err, out, stderr)
	}
	var r prober.Result
	if err := json.Unmarshal(out, &r); err != nil {
		l.t.Fatalf("probe JSON: %v\n%s", err, out)
	}
	if !r.Success {
		l.t.Fatalf("probe failed: %+v", r.Failure)
	}
	return &r
}

// metrics scrapes a relay's /metrics inside its namespace.
func (l *traceLab) metrics(h *netlab.Host) string {
	l.t.Helper()
	return h.Run("curl", "-sS", "--max-time", "10", "http://127.0.0.1:9717/metrics")
}

// seriesValue is the value of the series with this name and label text
// in an exposition (-1 when absent).
func seriesValue(text, name, labels string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		if labels != "" && !strings.Contains(m[1], labels) {
			continue
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err == nil {
			return v
		}
	}
	return -1
}

// delay holds every packet r forwards out of dev for d (an NFQUEUE rule
// and a delayer in this process), until the test ends.
func (l *traceLab) delay(r *netlab.Host, dev string, queue uint16, d time.Duration) {
	l.t.Helper()
	dl, err := nfqdelay.Start(nfqdelay.Config{Queue: queue, Delay: d, Namespace: r.NS})
	if err != nil {
		l.t.Fatal(err)
	}
	rule := []string{"FORWARD", "-o", dev, "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(queue))}
	r.Run(append([]string{"iptables", "-A"}, rule...)...)
	l.t.Cleanup(func() {
		_, _ = r.Try(append([]string{"iptables", "-D"}, rule...)...)
		if err := dl.Close(); err != nil {
			l.t.Errorf("delay in %s: %v", r.Name, err)
		}
	})
}

func segmentOf(t *testing.T, r *prober.Result, from, to string) *prober.SegmentResult {
	t.Helper()
	for i := range r.Segments {
		if r.Segments[i].From == from && r.Segments[i].To == to {
			return &r.Segments[i]
		}
	}
	t.Fatalf("no segment %s -> %s in %+v", from, to, r.Segments)
	return nil
}

// addresses is a path's answering addresses in TTL order ("*": none).
func addresses(s *prober.SegmentResult) []string {
	var out []string
	for _, h := range s.Path {
		if h.Address == nil {
			out = append(out, "*")
		} else {
			out = append(out, *h.Address)
		}
	}
	return out
}

// wantPath checks a segment's path: these addresses in TTL order, the far
// end reached, round trips for every answered TTL, ascending along the
// path within noise.
func wantPath(t *testing.T, s *prober.SegmentResult, method string, want ...string) {
	t.Helper()
	if s.PathFlow == nil {
		t.Fatalf("%s -> %s: not traced", s.From, s.To)
	}
	got := strings.Join(addresses(s), " ")
	if got != strings.Join(want, " ") || !s.PathFlow.Reached || s.PathFlow.Protocol != method {
		t.Errorf("%s -> %s: path %s (%s, %s, %s), want %s by %s, reached", s.From, s.To, got, s.PathFlow.Protocol, s.PathFlow.Status, s.PathFlow.Reason,
			strings.Join(want, " "), method)
	}
	for _, h := range s.Path {
		if h.Address != nil && (h.RTT == nil || h.RTT.Median <= 0 || h.RTT.Min > h.RTT.Median || h.RTT.Median > h.RTT.Max) {
			t.Errorf("%s -> %s TTL %d: round trips %+v", s.From, s.To, h.TTL, h.RTT)
		}
	}
}

// within: got is want within max(1 ms, 10 %).
func withinTolerance(got, want float64) bool {
	return math.Abs(got-want) <= math.Max(0.001, want/10)
}

func logPath(t *testing.T, what string, s *prober.SegmentResult) {
	t.Helper()
	delay := "none"
	if s.PathDelay != nil {
		delay = s.PathDelay.String()
	}
	t.Logf("%s %s -> %s: %s | %s | delay appears %s; segment rtt %.3fms", what, s.From, s.To, s.PathText(), s.PathFlow, delay, s.RTT.Median*1e3)
}

// The trace of b -> c lists r1 and r2, then c, with round trips, on the
// chain's own TCP connection; a -> b has no router. 20 ms added at IP
// level on r1's link to r2: the delay first appears at r2, within
// max(1 ms, 10 %) of 20 ms, and b -> c keeps its rtt whether the run
// traces or not.
func TestNamespaceTraceChainAndDelay(t *testing.T) {
	l := newTraceLab(t)
	l.chain(nil)
	clean := l.probe("--trace")
	ab, bc := segmentOf(t, clean, "a", "b"), segmentOf(t, clean, "b", "c")
	logPath(t, "clean", ab)
	logPath(t, "clean", bc)
	wantPath(t, ab, "tcp", "10.91.0.2")
	wantPath(t, bc, "tcp", addrR1, addrR2, addrC)
	if bc.PathFlow.Remote != addrC || bc.PathFlow.RemotePort != 9000 || bc.PathFlow.Local != "10.91.1.1" || bc.PathFlow.LocalPort == 0 {
		t.Errorf("b -> c flow %+v: want the connection's own addresses and ports", bc.PathFlow)
	}
	if bc.PathDelay != nil {
		t.Errorf("a delay step without a delay: %s", bc.PathDelay)
	}

	const added = 0.020
	l.delay(l.r1, "eth2", 31, 20*time.Millisecond)
	plain := l.probe()
	slow := l.probe("--trace")
	bc = segmentOf(t, slow, "b", "c")
	logPath(t, "delayed", bc)
	wantPath(t, bc, "tcp", addrR1, addrR2, addrC)
	d := bc.PathDelay
	if d == nil {
		t.Fatalf("no delay step on the delayed path %s", bc.PathText())
	}
	t.Logf("localisation: the delay appears at TTL %d (%s), +%.3f ms for %.0f ms added: error %+.3f ms; the trace of b -> c cost %d packets in %.2f s, a -> b %d packets in %.2f s",
		d.TTL, d.Address, d.Delay*1e3, added*1e3, (d.Delay-added)*1e3, bc.PathFlow.Packets, bc.PathFlow.DurationSeconds,
		segmentOf(t, slow, "a", "b").PathFlow.Packets, segmentOf(t, slow, "a", "b").PathFlow.DurationSeconds)
	if d.TTL != 2 || d.Address != addrR2 {
		t.Errorf("the delay appears at TTL %d (%s), want TTL 2 (r2, %s)", d.TTL, d.Address, addrR2)
	}
	if !withinTolerance(d.Delay, added) {
		t.Errorf("step of %.3f ms, want %.0f ms within max(1 ms, 10%%)", d.Delay*1e3, added*1e3)
	}
	rise := bc.RTT.Median - segmentOf(t, clean, "b", "c").RTT.Median
	if !withinTolerance(rise, added) {
		t.Errorf("b -> c rtt rose by %.3f ms, want %.0f ms", rise*1e3, added*1e3)
	}
	if p := segmentOf(t, plain, "b", "c").RTT.Median; !withinTolerance(bc.RTT.Median, p) {
		t.Errorf("b -> c rtt %.3f ms in the traced run, %.3f ms without a trace", bc.RTT.Median*1e3, p*1e3)
	}
	if was, is := segmentOf(t, clean, "a", "b").RTT.Median, segmentOf(t, slow, "a", "b").RTT.Median; is > was+0.001 {
		t.Errorf("a -> b rose from %.3f to %.3f ms: the delay is on b -> c", was*1e3, is*1e3)
	}
	// The table says it the way a person reads it.
	out, err := exec.Command("ip", "netns", "exec", l.a.NS, binary, "probe", labB, "--relay.name", "a", "--count", "5", "--trace").Output()
	if err != nil {
		t.Fatalf("probe table: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`<- delay appears: \+(19|20|21)\.\d ms at 10\.91\.2\.2 \(TTL 2\)`).Match(out) ||
		!strings.Contains(string(out), "* slowest segment: b -> c") {
		t.Errorf("table:\n%s", out)
	}
	// b's own metrics count its traces.
	m := l.metrics(l.b)
	if seriesValue(m, "subsegment_relay_traces_total", `method="tcp",status="reached"`) < 3 || seriesValue(m, "subsegment_trace_method_info", `method="tcp"`) != 1 {
		t.Errorf("b's trace metrics:\n%s", grepLines(m, "trace"))
	}
}

// b's route moved to another router: the next trace shows the new path,
// with another fingerprint, and the chain's packets took it too.
func TestNamespaceTraceRouteChange(t *testing.T) {
	l := newTraceLab(t)
	l.chain(nil)
	before := segmentOf(t, l.probe("--trace"), "b", "c")
	wantPath(t, before, "tcp", addrR1, addrR2, addrC)
	l.ra.Run("iptables", "-A", "FORWARD", "-p", "tcp", "--dport", "9000", "-m", "comment", "--comment", "chain")
	l.b.Route("replace", "10.91.3.0/24", "via", addrRA)
	after := segmentOf(t, l.probe("--trace"), "b", "c")
	logPath(t, "before", before)
	logPath(t, "after", after)
	// A new run's connection takes its source address from the new
	// route (10.91.4.1), and r2 answers from its address towards it.
	wantPath(t, after, "tcp", addrRA, "10.91.5.2", addrC)
	if n := l.ra.Packets(false, "filter", "FORWARD", "chain"); n == 0 {
		t.Error("the chain's packets did not take the new route")
	}
	if before.PathFlow.Fingerprint == after.PathFlow.Fingerprint {
		t.Errorf("fingerprint %s before and after the route change", after.PathFlow.Fingerprint)
	}
}

// A router that does not answer (r2 drops its time exceeded) is an
// unanswered TTL, and the trace goes on to c.
func TestNamespaceTraceSilentRouter(t *testing.T) {
	l := newTraceLab(t)
	l.chain(nil)
	l.r2.Run("iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "time-exceeded", "-j", "DROP")
	bc := segmentOf(t, l.probe("--trace"), "b", "c")
	logPath(t, "silent r2", bc)
	wantPath(t, bc, "tcp", addrR1, "*", addrC)
	if h := bc.Path[1]; h.LossRatio != 1 || h.RTT != nil {
		t.Errorf("silent TTL 2: %+v", h)
	}
}

// Without CAP_NET_RAW (b under setpriv, its bounding set without it): b
// says at start that it uses the UDP fallback, its trace of b -> c uses
// UDP and says why, and still lists r1, r2 and c.
func TestNamespaceTraceUnprivileged(t *testing.T) {
	setpriv := requireTool(t, "setpriv")
	l := newTraceLab(t)
	b := l.chain([]string{setpriv, "--inh-caps=-all", "--bounding-set=-net_raw", "--"})
	b.waitOutput(t, regexp.MustCompile(`use the UDP fallback.*method=udp why="udp: no CAP_NET_RAW`), 10*time.Second)
	r := l.probe("--trace")
	bc := segmentOf(t, r, "b", "c")
	logPath(t, "unprivileged b", bc)
	wantPath(t, bc, "udp", addrR1, addrR2, addrC)
	if !strings.Contains(bc.PathFlow.Reason, "no CAP_NET_RAW") || bc.PathFlow.LocalPort == 0 {
		t.Errorf("b -> c flow %+v: want UDP saying CAP_NET_RAW is missing", bc.PathFlow)
	}
	if ab := segmentOf(t, r, "a", "b"); ab.PathFlow.Protocol != "tcp" {
		t.Errorf("the source (privileged) traced by %s", ab.PathFlow.Protocol)
	}
	if m := l.metrics(l.b); seriesValue(m, "subsegment_trace_method_info", `method="udp"`) != 1 {
		t.Errorf("b's method metric:\n%s", grepLines(m, "trace_method"))
	}
}

// Equal-cost multipath from b to c's prefix (through r1 or ra, hashed on
// ports), the delay on r1's branch only: every run's chain connection
// (a new one per run) takes one branch, and its trace follows the same
// one, as the routers' packet counters show: r1 and a 20 ms step, or ra
// and none. Both branches are seen within a bounded number of runs.
func TestNamespaceTraceECMP(t *testing.T) {
	l := newTraceLab(t)
	l.b.Sysctl("net.ipv4.fib_multipath_hash_policy", "1")
	// b's connections to c take source ports 41000-41015: a counter per
	// port in both routers says which branch each connection's SYN (its
	// handshake, and the trace's probes) took. Only SYNs: the last
	// segments of an earlier connection on the same port may still pass.
	l.b.Sysctl("net.ipv4.ip_local_port_range", "41000 41015")
	for port := 41000; port <= 41015; port++ {
		for _, r := range []*netlab.Host{l.r1, l.ra} {
			r.Run("iptables", "-t", "raw", "-A", "PREROUTING", "-i", "eth1", "-p", "tcp", "--sport", strconv.Itoa(port),
				"--tcp-flags", "SYN,ACK,RST", "SYN", "-m", "comment", "--comment", fmt.Sprint("p", port))
		}
	}
	l.b.Route("replace", "10.91.3.0/24", "nexthop", "via", addrR1, "dev", "eth1", "nexthop", "via", addrRA, "dev", "eth2")
	l.delay(l.r1, "eth2", 32, 20*time.Millisecond)
	l.chain(nil)
	seen := map[string]int{}
	for run := 0; run < 12 && (seen[addrR1] == 0 || seen[addrRA] == 0); run++ {
		bc := segmentOf(t, l.probe("--trace", "--count", "3"), "b", "c")
		port := strconv.Itoa(int(bc.PathFlow.LocalPort))
		viaR1, viaRA := l.r1.Packets(false, "raw", "PREROUTING", "p"+port), l.ra.Packets(false, "raw", "PREROUTING", "p"+port)
		logPath(t, fmt.Sprintf("run %d (port %s: %d SYNs through r1, %d through ra)", run, port, viaR1, viaRA), bc)
		if viaR1+viaRA != uint64(1+bc.PathFlow.Packets) {
			t.Errorf("port %s: %d SYNs counted, want the handshake's and the trace's %d", port, viaR1+viaRA, bc.PathFlow.Packets)
		}
		// r2 answers from its address towards the connection's source,
		// which the branch decides.
		branch, r2, step := addrRA, "10.91.5.2", bc.PathDelay
		switch {
		case viaR1 > 0 && viaRA > 0:
			t.Fatalf("port %s: packets through both branches (%d via r1, %d via ra): the trace left the connection's branch", port, viaR1, viaRA)
		case viaR1 > 0:
			branch, r2 = addrR1, addrR2
			if step == nil || step.TTL != 2 || !withinTolerance(step.Delay, 0.020) {
				t.Errorf("through r1: delay step %v, want +20 ms at r2 (TTL 2)", step)
			}
		case viaRA > 0:
			if step != nil {
				t.Errorf("through ra: a delay step %s on the undelayed branch", step)
			}
		default:
			t.Fatalf("port %s counted in neither router", port)
		}
		wantPath(t, bc, "tcp", branch, r2, addrC)
		seen[branch]++
		// Reuse no counter: a later connection on the same port would
		// add to it.
		for _, r := range []*netlab.Host{l.r1, l.ra} {
			r.Run("iptables", "-t", "raw", "-Z", "PREROUTING")
		}
	}
	t.Logf("runs through r1: %d, through ra: %d", seen[addrR1], seen[addrRA])
	if seen[addrR1] == 0 || seen[addrRA] == 0 {
		t.Errorf("in 12 runs the connections took only one branch: %v", seen)
	}
}

// Bounds: b's traces never probe beyond --trace.max-ttl, never outlive
// the request's budget, and never send more than the rate allows.
func TestNamespaceTraceBounds(t *testing.T) {
	l := newTraceLab(t)
	// r1 and r2 silent, max TTL 2, a rate of 4 packets a second.
	l.r1.Run("iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "time-exceeded", "-j", "DROP")
	l.r2.Run("iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "time-exceeded", "-j", "DROP")
	l.r1.Run("iptables", "-t", "raw", "-A", "PREROUTING", "-i", "eth1", "-p", "tcp", "--dport", "9000", "--tcp-flags", "SYN,ACK,RST", "SYN", "-m", "comment", "--comment", "syn")
	l.chain(nil, "--trace.max-ttl", "2", "--trace.max-packets-per-second", "4")
	start := time.Now()
	bc := segmentOf(t, l.probe("--trace", "--count", "1"), "b", "c")
	logPath(t, "max TTL 2", bc)
	if bc.PathFlow.Status != "max_ttl" || len(bc.Path) != 2 || bc.PathFlow.Packets != 6 {
		t.Errorf("max TTL 2: %s with %d TTLs and %d packets, want max_ttl, 2 TTLs, 6 packets", bc.PathFlow.Status, len(bc.Path), bc.PathFlow.Packets)
	}
	// A short budget: the trace ends within it, at its deadline.
	short := segmentOf(t, l.probe("--trace", "--count", "1", "--timeout", "400ms"), "b", "c")
	logPath(t, "400 ms budget", short)
	if short.PathFlow.Status != "deadline" || short.PathFlow.DurationSeconds > 0.4*7/8*3/4+0.05 {
		t.Errorf("a 400 ms budget: %s after %.3f s, want the deadline within %.3f s", short.PathFlow.Status, short.PathFlow.DurationSeconds, 0.4*7/8*3/4)
	}
	// Back to back: no more packets than the rate and burst allow.
	for range 3 {
		l.probe("--trace", "--count", "1")
	}
	elapsed := time.Since(start).Seconds()
	sent := l.r1.Packets(false, "raw", "PREROUTING", "syn") - 5 // the chain's own handshakes: one per run
	m := l.metrics(l.b)
	counted := seriesValue(m, "subsegment_relay_trace_packets_total", "")
	t.Logf("rate bound: %d SYN probes reached r1, %v counted by b, in %.1f s at 4/s with bursts of 10 (at most %.0f)", sent, counted, elapsed, 10+4*elapsed)
	if float64(sent) > 10+4*elapsed || counted > 10+4*elapsed || float64(sent) != counted {
		t.Errorf("%d probes reached r1 and b counted %v in %.1f s: over the rate's %.0f", sent, counted, elapsed, 10+4*elapsed)
	}
}

// A continuous entry traces b -> c every trace_interval on its own
// connections; b's route moved through ra mid-run: the next trace shows
// it, the path change counter goes up by one (and stays there), and the
// chain page's API unfolds the segment (over its SLA) into the new path.
func TestNamespaceTraceContinuousPathChange(t *testing.T) {
	l := newTraceLab(t)
	l.chain(nil)
	cfg := l.a.Run("mktemp", "/tmp/subsegment-trace-XXXXXX.yml")
	cfg = strings.TrimSpace(cfg)
	t.Cleanup(func() { _, _ = exec.Command("rm", "-f", cfg).CombinedOutput() })
	body := `modules:
  default:
    timeout: 3s
    targets: ["10.91.0.2:9000"]
    sla: {segments: [{from: b, to: c, rtt: 1us}]}
continuous:
  - {target: "10.91.0.2:9000", module: default, interval: 200ms, trace_interval: 2s}
`
	if out, err := exec.Command("sh", "-c", "cat > "+cfg+" <<'EOF'\n"+body+"EOF\n").CombinedOutput(); err != nil {
		t.Fatalf("write %s: %v\n%s", cfg, err, out)
	}
	ex := start(t, "exporter a", "ip", "netns", "exec", l.a.NS, binary, "--relay.name", "a", "--web.listen-address", "127.0.0.1:9717", "--config.file", cfg)
	ex.waitOutput(t, webListening, 10*time.Second)
	const seg = `target="10.91.0.2:9000",to="c"`
	hopAt := func(m, ttl, addr string) bool {
		return seriesValue(m, "subsegment_continuous_segment_path_hop_info", `address="`+addr+`",from="b",module="default",`+seg+`,ttl="`+ttl+`"`) == 1
	}
	var m string
	eventually(t, 30*time.Second, "b -> c traced through r1", func() error {
		if m = l.metrics(l.a); !hopAt(m, "1", addrR1) || !hopAt(m, "2", addrR2) || !hopAt(m, "3", addrC) {
			return fmt.Errorf("path series:\n%s", grepLines(m, "segment_path_hop_info"))
		}
		return nil
	})
	if v := seriesValue(m, "subsegment_continuous_segment_path_changes_total", `from="b"`); v != 0 {
		t.Fatalf("path changes %v before the route moved", v)
	}
	before := seriesValue(m, "subsegment_continuous_segment_path_fingerprint", `from="b"`)
	l.b.Route("replace", "10.91.3.0/24", "via", addrRA)
	eventually(t, 30*time.Second, "b -> c traced through ra", func() error {
		if m = l.metrics(l.a); !hopAt(m, "1", addrRA) {
			return fmt.Errorf("path series:\n%s", grepLines(m, "segment_path_hop_info"))
		}
		return nil
	})
	// The same connection: its source stays 10.91.1.1, and r2 answers it
	// from its address towards r1.
	if !hopAt(m, "2", addrR2) || !hopAt(m, "3", addrC) || hopAt(m, "1", addrR1) {
		t.Errorf("new path series:\n%s", grepLines(m, "segment_path_hop_info"))
	}
	if v := seriesValue(m, "subsegment_continuous_segment_path_changes_total", `from="b"`); v != 1 {
		t.Errorf("path changes %v after one route change, want 1", v)
	}
	if after := seriesValue(m, "subsegment_continuous_segment_path_fingerprint", `from="b"`); after == before {
		t.Errorf("fingerprint %v before and after", after)
	}
	// Another trace of the same path counts nothing more.
	time.Sleep(5 * time.Second)
	m = l.metrics(l.a)
	if v := seriesValue(m, "subsegment_continuous_segment_path_changes_total", `from="b"`); v != 1 {
		t.Errorf("path changes %v on a path that stayed, want 1", v)
	}
	if v := seriesValue(m, "subsegment_continuous_probes_total", `result="success"`); v < 20 {
		t.Errorf("%v probes came back while the entry traced", v)
	}
	api := l.a.Run("curl", "-sS", "--max-time", "10", "http://127.0.0.1:9717/api/v1/chains")
	var chains struct{ Chains []continuous.EntryState }
	if err := json.Unmarshal([]byte(api), &chains); err != nil || len(chains.Chains) != 1 {
		t.Fatalf("chains API: %v\n%s", err, api)
	}
	var path []string
	for _, s := range chains.Chains[0].Segments {
		for _, h := range s.Path {
			if s.From == "b" {
				path = append(path, h.Address)
			}
		}
	}
	if strings.Join(path, " ") != strings.Join([]string{addrRA, addrR2, addrC}, " ") {
		t.Errorf("the chains API unfolds b -> c into %v:\n%s", path, api)
	}
	t.Logf("after the route change: %s", grepLines(m, "segment_path_hop_info"))
}
