package trace_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netlab"
	"github.com/subsegment/subsegment_exporter/internal/testkit/nfqdelay"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// v6 maps a lab IPv4 address or prefix 10.N.X.Y[/24] to its IPv6 twin
// fdN:X::Y[/64] (ULA); 10.N.0.0/16 is fdN::/16.
func v6(a string) string {
	addr, bits, _ := strings.Cut(a, "/")
	p := strings.Split(addr, ".")
	if bits == "16" {
		return fmt.Sprintf("fd%s::/16", p[1])
	}
	s := fmt.Sprintf("fd%s:%s::", p[1], p[2])
	if p[3] != "0" {
		s += p[3]
	}
	if bits != "" {
		s += "/64"
	}
	return s
}

// both is an IPv4 address (CIDR) and its IPv6 twin, for netlab.Link.
func both(cidr string) string { return cidr + " " + v6(cidr) }

// route adds a route in IPv4 and IPv6.
func route(h *netlab.Host, prefix, via string) {
	h.Route("add", prefix, "via", via)
	h.Route("add", v6(prefix), "via", v6(via))
}

// chainLab is b — r1 — r2 — c, plus ra, another way from b to r2 for
// route changes (b — ra — r2), in IPv4 and IPv6:
//
//	b  eth1 10.61.1.1 — r1 eth1 10.61.1.2
//	r1 eth2 10.61.2.1 — r2 eth1 10.61.2.2
//	r2 eth2 10.61.3.1 — c  eth1 10.61.3.2
//	b  eth2 10.61.4.1 — ra eth1 10.61.4.2
//	ra eth2 10.61.5.1 — r2 eth3 10.61.5.2
type chainLab struct {
	*netlab.Lab
	b, r1, r2, ra, c *netlab.Host
}

func newChainLab(t *testing.T) *chainLab {
	l := &chainLab{Lab: netlab.New(t)}
	l.b, l.r1, l.r2, l.ra, l.c = l.Host("b"), l.Host("r1"), l.Host("r2"), l.Host("ra"), l.Host("c")
	l.Link(l.b, "eth1", both("10.61.1.1/24"), l.r1, "eth1", both("10.61.1.2/24"))
	l.Link(l.r1, "eth2", both("10.61.2.1/24"), l.r2, "eth1", both("10.61.2.2/24"))
	l.Link(l.r2, "eth2", both("10.61.3.1/24"), l.c, "eth1", both("10.61.3.2/24"))
	l.Link(l.b, "eth2", both("10.61.4.1/24"), l.ra, "eth1", both("10.61.4.2/24"))
	l.Link(l.ra, "eth2", both("10.61.5.1/24"), l.r2, "eth3", both("10.61.5.2/24"))
	for _, r := range []*netlab.Host{l.r1, l.r2, l.ra} {
		r.Router()
	}
	// c answers every UDP probe that reaches it (port unreachable is
	// otherwise rate-limited to one a second after a burst of six).
	l.c.Sysctl("net.ipv4.icmp_ratelimit", "0")
	l.c.Sysctl("net.ipv6.icmp.ratelimit", "0")
	route(l.b, "10.61.2.0/24", "10.61.1.2")
	route(l.b, "10.61.3.0/24", "10.61.1.2")
	route(l.b, "10.61.5.0/24", "10.61.4.2")
	route(l.r1, "10.61.3.0/24", "10.61.2.2")
	route(l.r2, "10.61.1.0/24", "10.61.2.1")
	route(l.r2, "10.61.4.0/24", "10.61.5.1")
	route(l.ra, "10.61.1.0/24", "10.61.4.1")
	route(l.ra, "10.61.3.0/24", "10.61.5.2")
	route(l.c, "10.61.0.0/16", "10.61.3.1")
	return l
}

// echo listens on addr in h and echoes every connection.
func echo(t *testing.T, h *netlab.Host, addr string) string {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
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
	return ln.Addr().String()
}

// dial opens a TCP connection from h.
func dial(t *testing.T, h *netlab.Host, addr string) *net.TCPConn {
	t.Helper()
	var c net.Conn
	if err := h.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// traceFrom traces conn from inside h (the trace's sockets are opened in
// the calling thread's namespace).
func traceFrom(t *testing.T, h *netlab.Host, tr *trace.Tracer, conn trace.Conn, opts trace.Options, budget time.Duration) *trace.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	var res *trace.Result
	err := h.Do(func() (err error) { res, err = tr.Trace(ctx, conn, opts); return err })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trace %v -> %v (%s, %s; %s): %v; %d packets in %v", res.Local, res.Remote, res.Flow.Protocol,
		res.Flow.Reason, res.Flow.Route, res, res.Packets, res.Duration.Round(time.Microsecond))
	return res
}

func newTracer(t *testing.T, cfg trace.Config) *trace.Tracer {
	t.Helper()
	tr, err := trace.NewTracer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// path is the addresses of a result's hops ("*" for none).
func path(r *trace.Result) []string {
	var p []string
	for _, h := range r.Hops {
		if h.Address.IsValid() {
			p = append(p, h.Address.String())
		} else {
			p = append(p, "*")
		}
	}
	return p
}

func wantPath(t *testing.T, r *trace.Result, want ...string) {
	t.Helper()
	if got := path(r); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("path %v, want %v", got, want)
	}
	if !r.Reached || r.Stop != trace.StopReached {
		t.Errorf("reached %v, stop %s: want the far end reached", r.Reached, r.Stop)
	}
	for _, h := range r.Hops {
		if _, ok := h.RTT(); h.Address.IsValid() && !ok {
			t.Errorf("TTL %d: an address without round trips", h.TTL)
		}
	}
}

// The trace of b -> c lists r1 and r2, then c, with round trips, on the
// connection's own TCP flow; a direct link has no router.
func TestTraceChain(t *testing.T) {
	l := newChainLab(t)
	tr := newTracer(t, trace.Config{})
	for _, v := range []struct {
		name string
		addr func(string) string
	}{{"ipv4", func(a string) string { return a }}, {"ipv6", v6}} {
		t.Run(v.name, func(t *testing.T) {
			target := echo(t, l.c, net.JoinHostPort(v.addr("10.61.3.2"), "9000"))
			conn := dial(t, l.b, target)
			res := traceFrom(t, l.b, tr, conn, trace.Options{}, 10*time.Second)
			wantPath(t, res, v.addr("10.61.1.2"), v.addr("10.61.2.2"), v.addr("10.61.3.2"))
			if res.Flow.Protocol != trace.MethodTCP || res.Flow.Local != res.Local || res.Flow.Remote != res.Remote {
				t.Errorf("flow %+v, want tcp on the connection's own addresses and ports", res.Flow)
			}
			direct := dial(t, l.b, echo(t, l.r1, net.JoinHostPort(v.addr("10.61.1.2"), "9000")))
			wantPath(t, traceFrom(t, l.b, tr, direct, trace.Options{}, 10*time.Second), v.addr("10.61.1.2"))
		})
	}
}

// acceptEcho listens on addr in h, echoes every connection, and hands the
// accepted connections to accepted.
func acceptEcho(t *testing.T, h *netlab.Host, addr string, accepted chan<- *net.TCPConn) string {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c.(*net.TCPConn)
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// pump keeps a connection to an echo server busy: it writes a known
// pattern and checks that every byte comes back, in order.
type pump struct {
	conn    *net.TCPConn
	stop    chan struct{}
	wrote   chan int64
	checked chan error
}

func pattern(off int64, b []byte) {
	for i := range b {
		b[i] = byte((off + int64(i)) % 251)
	}
}

func startPump(conn *net.TCPConn) *pump {
	p := &pump{conn: conn, stop: make(chan struct{}), wrote: make(chan int64, 1), checked: make(chan error, 1)}
	total := make(chan int64, 1)
	go func() {
		buf := make([]byte, 16<<10)
		var off int64
		defer func() { p.wrote <- off; total <- off }()
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			pattern(off, buf)
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			n, err := conn.Write(buf)
			off += int64(n)
			if err != nil {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	go func() {
		buf, want := make([]byte, 64<<10), make([]byte, 64<<10)
		var off int64
		limit := int64(-1)
		for limit < 0 || off < limit {
			select {
			case limit = <-total:
				continue
			default:
			}
			_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := conn.Read(buf)
			pattern(off, want[:n])
			if string(buf[:n]) != string(want[:n]) {
				p.checked <- fmt.Errorf("byte %d onwards differs from what was written", off)
				return
			}
			off += int64(n)
			if ne, ok := err.(net.Error); err != nil && (!ok || !ne.Timeout()) {
				p.checked <- fmt.Errorf("read after %d bytes: %w", off, err)
				return
			}
		}
		p.checked <- nil
	}()
	return p
}

// finish stops writing and waits until every byte written came back
// unchanged; it returns the bytes.
func (p *pump) finish(t *testing.T) int64 {
	t.Helper()
	close(p.stop)
	n := <-p.wrote
	select {
	case err := <-p.checked:
		if err != nil {
			t.Fatalf("connection data: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the %d bytes written did not all come back", n)
	}
	return n
}

// netstat reads the TcpExt counters of the host's namespace.
func netstat(t *testing.T, h *netlab.Host) map[string]int64 {
	t.Helper()
	var text []byte
	if err := h.Do(func() (err error) { text, err = os.ReadFile("/proc/thread-self/net/netstat"); return err }); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(text), "\n")
	m := map[string]int64{}
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) != len(values) || len(names) == 0 || names[0] != "TcpExt:" {
			continue
		}
		for k := 1; k < len(names); k++ {
			m[names[k]], _ = strconv.ParseInt(values[k], 10, 64)
		}
	}
	return m
}

func retransmits(t *testing.T, c *net.TCPConn) uint32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || ierr != nil {
		t.Fatal(err, ierr)
	}
	return info.Total_retrans
}

// A trace never disturbs the connection it follows: while traces run, the
// connection carries data both ways byte-exact and neither end
// retransmits; the probes did reach the far end (its kernel counted the
// SYNs it answered with a challenge ACK) and this host's TCP saw their
// ICMP errors and left them out (out-of-window ICMPs).
func TestTraceDoesNotDisturbTheConnection(t *testing.T) {
	l := newChainLab(t)
	tr := newTracer(t, trace.Config{})
	for _, v := range []struct {
		name string
		addr func(string) string
	}{{"ipv4", func(a string) string { return a }}, {"ipv6", v6}} {
		t.Run(v.name, func(t *testing.T) {
			accepted := make(chan *net.TCPConn, 1)
			target := acceptEcho(t, l.c, net.JoinHostPort(v.addr("10.61.3.2"), "9000"), accepted)
			conn := dial(t, l.b, target)
			far := <-accepted
			cBefore, bBefore := netstat(t, l.c), netstat(t, l.b)
			p := startPump(conn)
			const traces = 3
			for range traces {
				res := traceFrom(t, l.b, tr, conn, trace.Options{}, 10*time.Second)
				wantPath(t, res, v.addr("10.61.1.2"), v.addr("10.61.2.2"), v.addr("10.61.3.2"))
			}
			n := p.finish(t)
			cAfter, bAfter := netstat(t, l.c), netstat(t, l.b)
			challenged := cAfter["TCPSYNChallenge"] - cBefore["TCPSYNChallenge"]
			ignored := bAfter["OutOfWindowIcmps"] - bBefore["OutOfWindowIcmps"]
			t.Logf("%d bytes echoed byte-exact during %d traces; far end: %d SYN challenges, %d challenge ACKs sent; here: %d ICMP errors left out by TCP",
				n, traces, challenged, cAfter["TCPChallengeACK"]-cBefore["TCPChallengeACK"], ignored)
			if n == 0 {
				t.Error("no data went through the connection")
			}
			// What a probe could cause is a retransmission triggered by
			// duplicate ACKs (fast retransmit, SACK recovery) or a reset;
			// a tail loss probe or a timeout is the bulk pump on a busy
			// machine (the race detector slows the echo), so it is
			// reported, not failed on.
			for _, h := range []struct {
				name          string
				before, after map[string]int64
			}{{"here", bBefore, bAfter}, {"far end", cBefore, cAfter}} {
				for _, k := range []string{"TCPFastRetrans", "TCPSackRecovery", "TCPRenoRecovery", "TCPAbortOnData"} {
					if d := h.after[k] - h.before[k]; d != 0 {
						t.Errorf("%s: %s went up by %d during the traces: the probes disturbed the connection", h.name, k, d)
					}
				}
			}
			if r1, r2 := retransmits(t, conn), retransmits(t, far); r1 != 0 || r2 != 0 {
				t.Logf("retransmissions: %d here, %d at the far end (loss probes %d, timeouts %d here): none from duplicate ACKs",
					r1, r2, bAfter["TCPLossProbes"]-bBefore["TCPLossProbes"], bAfter["TCPTimeouts"]-bBefore["TCPTimeouts"])
			}
			if challenged < traces {
				t.Errorf("the far end answered %d SYN probes in %d traces: the probes did not reach it", challenged, traces)
			}
			if ignored < 2*traces {
				t.Errorf("this host's TCP saw %d of the routers' ICMP errors; want the %d of at least two routers per trace", ignored, 2*traces)
			}
		})
	}
}

// roundTrip is the median of n one-byte round trips on an echo connection.
func roundTrip(t *testing.T, c net.Conn, n int) time.Duration {
	t.Helper()
	b := []byte{7}
	rtts := make([]time.Duration, 0, n)
	for range n {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	return rtts[n/2]
}

// delayLink holds every packet r sends out of dev for d (nfqdelay on the
// FORWARD chain), until the test ends.
func delayLink(t *testing.T, r *netlab.Host, dev string, queue uint16, d time.Duration) {
	t.Helper()
	dl, err := nfqdelay.Start(nfqdelay.Config{Queue: queue, Delay: d, Namespace: r.NS})
	if err != nil {
		t.Fatal(err)
	}
	rule := []string{"FORWARD", "-o", dev, "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(queue))}
	for _, tool := range []string{"iptables", "ip6tables"} {
		r.Run(append([]string{tool, "-A"}, rule...)...)
	}
	t.Cleanup(func() {
		for _, tool := range []string{"iptables", "ip6tables"} {
			_, _ = r.Try(append([]string{tool, "-D"}, rule...)...)
		}
		if err := dl.Close(); err != nil {
			t.Errorf("delay in %s: %v", r.Name, err)
		}
	})
}

// within: got is want within max(1 ms, 10%).
func within(got, want time.Duration) bool {
	tol := max(time.Millisecond, want/10)
	return got >= want-tol && got <= want+tol
}

// 20 ms added at IP level on the r1 -> r2 link: the delay first appears at
// r2, by the stated 20 ms, and the connection's own round trip shows it.
func TestTraceDelayAppearsWhereItIsAdded(t *testing.T) {
	l := newChainLab(t)
	tr := newTracer(t, trace.Config{})
	conn := dial(t, l.b, echo(t, l.c, "10.61.3.2:9000"))
	before := roundTrip(t, conn, 20)
	clean := traceFrom(t, l.b, tr, conn, trace.Options{}, 10*time.Second)
	if s, ok := clean.DelayStep(5 * time.Millisecond); ok {
		t.Errorf("without the delay a step of %v at TTL %d", s.Delay, s.TTL)
	}

	const added = 20 * time.Millisecond
	delayLink(t, l.r1, "eth2", 21, added)
	after := roundTrip(t, conn, 20)
	res := traceFrom(t, l.b, tr, conn, trace.Options{}, 10*time.Second)
	wantPath(t, res, "10.61.1.2", "10.61.2.2", "10.61.3.2")
	step, ok := res.DelayStep(added / 2)
	if !ok {
		t.Fatalf("no step of %v or more in %v", added/2, res)
	}
	t.Logf("delay appears at TTL %d (%s): +%v (path %v -> %v); stated %v, error %v; the connection's rtt %v -> %v (+%v)",
		step.TTL, step.Address, step.Delay, step.Before, step.At, added, step.Delay-added, before, after, after-before)
	if step.TTL != 2 || step.Address.String() != "10.61.2.2" {
		t.Errorf("delay appears at TTL %d (%s), want TTL 2 (r2, 10.61.2.2)", step.TTL, step.Address)
	}
	if !within(step.Delay, added) {
		t.Errorf("step %v, want %v within max(1ms, 10%%)", step.Delay, added)
	}
	if !within(after-before, added) {
		t.Errorf("the connection's rtt rose by %v, want %v within max(1ms, 10%%)", after-before, added)
	}
}

// b's route moved to another router between two traces: the next trace
// shows the new path, with another fingerprint, and the connection's
// packets took it too.
func TestTraceFollowsARouteChange(t *testing.T) {
	l := newChainLab(t)
	tr := newTracer(t, trace.Config{})
	conn := dial(t, l.b, echo(t, l.c, "10.61.3.2:9000"))
	first := traceFrom(t, l.b, tr, conn, trace.Options{}, 10*time.Second)
	wantPath(t, first, "10.61.1.2", "10.61.2.2", "10.61.3.2")

	sport := strconv.Itoa(int(first.Local.Port()))
	l.ra.Run("iptables", "-A", "FORWARD", "-p", "tcp", "--sport", sport, "-m", "comment", "--comment", "conn")
	l.b.Route("replace", "10.61.3.0/24", "via", "10.61.4.2")
	roundTrip(t, conn, 5)
	if n := l.ra.Packets(false, "filter", "FORWARD", "conn"); n == 0 {
		t.Fatal("the connection's packets did not take the new route")
	}
	second := traceFrom(t, l.b, tr, conn, trace.Options{}, 10*time.Second)
	// r2 answers from the address of its way back to b (via r1).
	wantPath(t, second, "10.61.4.2", "10.61.2.2", "10.61.3.2")
	if first.Fingerprint() == second.Fingerprint() {
		t.Errorf("fingerprint %s before and after the route change", first.Fingerprint())
	}
	if !strings.Contains(second.Flow.Route, "via 10.61.4.2") {
		t.Errorf("probes' route %q, want the new one via 10.61.4.2", second.Flow.Route)
	}
	third := traceFrom(t, l.b, tr, conn, trace.Options{}, 10*time.Second)
	if third.Fingerprint() != second.Fingerprint() {
		t.Errorf("fingerprint changed from %s to %s on the same path", second.Fingerprint(), third.Fingerprint())
	}
}

// A router that does not answer (its ICMP time exceeded dropped) is an
// unanswered TTL, and the trace goes on to the far end.
func TestTraceGoesPastASilentRouter(t *testing.T) {
	l := newChainLab(t)
	tr := newTracer(t, trace.Config{})
	l.r2.Run("iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "time-exceeded", "-j", "DROP")
	l.r2.Run("ip6tables", "-A", "OUTPUT", "-p", "ipv6-icmp", "--icmpv6-type", "time-exceeded", "-j", "DROP")
	for _, m := range []trace.Method{trace.MethodTCP, trace.MethodUDP} {
		for _, addr := range []func(string) string{func(a string) string { return a }, v6} {
			conn := dial(t, l.b, echo(t, l.c, net.JoinHostPort(addr("10.61.3.2"), "0")))
			res := traceFrom(t, l.b, tr, conn, trace.Options{Method: m}, 10*time.Second)
			wantPath(t, res, addr("10.61.1.2"), "*", addr("10.61.3.2"))
			if h := res.Hops[1]; h.Sent != 3 || h.Answered != 0 || h.LossRatio() != 1 {
				t.Errorf("%s: silent TTL 2: %d sent, %d answered, loss %v", m, h.Sent, h.Answered, h.LossRatio())
			}
		}
	}
}

// Asked for UDP (the unprivileged method), as root: the same path, and
// the result says so.
func TestTraceUDP(t *testing.T) {
	l := newChainLab(t)
	tr := newTracer(t, trace.Config{})
	for _, addr := range []func(string) string{func(a string) string { return a }, v6} {
		conn := dial(t, l.b, echo(t, l.c, net.JoinHostPort(addr("10.61.3.2"), "0")))
		res := traceFrom(t, l.b, tr, conn, trace.Options{Method: trace.MethodUDP}, 10*time.Second)
		wantPath(t, res, addr("10.61.1.2"), addr("10.61.2.2"), addr("10.61.3.2"))
		if res.Flow.Protocol != trace.MethodUDP || res.Flow.Reason != "udp: asked for" ||
			res.Flow.Local != res.Local || res.Flow.Remote != res.Remote {
			t.Errorf("flow %+v, want udp with the connection's addresses and port numbers", res.Flow)
		}
	}
}

// A connection over loopback (a chain on one host) has no router: the far
// end answers the first TTL, in both methods and both families.
func TestTraceLoopback(t *testing.T) {
	l := netlab.New(t)
	a := l.Host("a")
	tr := newTracer(t, trace.Config{})
	for _, addr := range []string{"127.0.0.1", "::1"} {
		conn := dial(t, a, echo(t, a, net.JoinHostPort(addr, "0")))
		for _, m := range []trace.Method{trace.MethodTCP, trace.MethodUDP} {
			res := traceFrom(t, a, tr, conn, trace.Options{Method: m}, 10*time.Second)
			wantPath(t, res, addr)
		}
	}
}
