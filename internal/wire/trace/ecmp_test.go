package trace_test

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netlab"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// ecmpLab: equal-cost multipath from b to c over r1 or r2, chosen by b's
// kernel on the 5-tuple (fib_multipath_hash_policy=1):
//
//	b eth1 10.62.1.1 — r1 eth1 10.62.1.2;  r1 eth2 10.62.3.1 — c eth1 10.62.3.2
//	b eth2 10.62.2.1 — r2 eth1 10.62.2.2;  r2 eth2 10.62.4.1 — c eth2 10.62.4.2
//	c serves on 10.62.9.1; b: 10.62.9.0/24 nexthop via r1 nexthop via r2
//
// b's connections come from 10.62.8.1, an address of its loopback (a
// service address): this kernel picks among the nexthops by the source
// address when one matches it, and by the hash only when none does.
type ecmpLab struct {
	*netlab.Lab
	b, r1, r2, c *netlab.Host
}

func newECMPLab(t *testing.T) *ecmpLab {
	l := &ecmpLab{Lab: netlab.New(t)}
	l.b, l.r1, l.r2, l.c = l.Host("b"), l.Host("r1"), l.Host("r2"), l.Host("c")
	l.Link(l.b, "eth1", "10.62.1.1/24", l.r1, "eth1", "10.62.1.2/24")
	l.Link(l.b, "eth2", "10.62.2.1/24", l.r2, "eth1", "10.62.2.2/24")
	l.Link(l.r1, "eth2", "10.62.3.1/24", l.c, "eth1", "10.62.3.2/24")
	l.Link(l.r2, "eth2", "10.62.4.1/24", l.c, "eth2", "10.62.4.2/24")
	l.c.Run("ip", "addr", "add", "10.62.9.1/32", "dev", "lo")
	l.b.Run("ip", "addr", "add", "10.62.8.1/32", "dev", "lo")
	l.r1.Router()
	l.r2.Router()
	l.b.Sysctl("net.ipv4.fib_multipath_hash_policy", "1")
	l.b.Route("add", "10.62.9.0/24", "nexthop", "via", "10.62.1.2", "nexthop", "via", "10.62.2.2")
	l.r1.Route("add", "10.62.9.0/24", "via", "10.62.3.2")
	l.r2.Route("add", "10.62.9.0/24", "via", "10.62.4.2")
	l.r1.Route("add", "10.62.8.0/24", "via", "10.62.1.1")
	l.r2.Route("add", "10.62.8.0/24", "via", "10.62.2.1")
	l.c.Route("add", "10.62.8.0/24", "via", "10.62.3.1")
	return l
}

// ecmpConn is a connection of the ECMP lab and the branches that matter.
type ecmpConn struct {
	conn  *net.TCPConn
	name  string // the comment of its counting rules
	taken string // the branch its packets take (by the routers' counters)
	raw   string // the branch a raw socket's packets would take unpinned
}

// classify opens a connection, counts its packets in both routers, and
// asks b's kernel where an unpinned raw TCP socket's packets would go.
func (l *ecmpLab) classify(t *testing.T, target string) ecmpConn {
	t.Helper()
	var nc net.Conn
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("10.62.8.1")}, Timeout: 5 * time.Second}
	if err := l.b.Do(func() (err error) { nc, err = d.Dial("tcp", target); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	conn := nc.(*net.TCPConn)
	local := conn.LocalAddr().(*net.TCPAddr)
	sport := strconv.Itoa(local.Port)
	c := ecmpConn{conn: conn, name: "c" + sport}
	for _, r := range []*netlab.Host{l.r1, l.r2} {
		base := []string{"FORWARD", "-p", "tcp", "-d", "10.62.9.1", "--dport", "9000", "--sport", sport}
		r.Run(append(append([]string{"iptables", "-I"}, base...), "-m", "comment", "--comment", c.name)...)
		// The probes are SYNs: the connection sends none after its handshake.
		r.Run(append(append([]string{"iptables", "-I"}, base...), "--syn", "-m", "comment", "--comment", c.name+"syn")...)
	}
	roundTrip(t, conn, 10)
	n1, n2 := l.r1.Packets(false, "filter", "FORWARD", c.name), l.r2.Packets(false, "filter", "FORWARD", c.name)
	switch {
	case n1 > 0 && n2 == 0:
		c.taken = "r1"
	case n2 > 0 && n1 == 0:
		c.taken = "r2"
	default:
		t.Fatalf("connection from port %s: %d packets via r1, %d via r2: want one branch", sport, n1, n2)
	}
	out := l.b.Run("ip", "route", "get", "10.62.9.1", "from", local.IP.String(), "ipproto", "tcp")
	c.raw = "r1"
	if strings.Contains(out, "via 10.62.2.2") {
		c.raw = "r2"
	}
	return c
}

// For connections on each branch (the routers' packet counters of the
// connection's port say which), among them one whose probes an unpinned
// raw socket would send down the other branch, the trace names the
// connection's router, its probes crossed only that router (whose SYN
// counter rose by exactly the probes that went past TTL 1, while the
// other router saw none), and the delay on r1's branch shows only there.
func TestTraceFollowsTheConnectionsBranch(t *testing.T) {
	l := newECMPLab(t)
	delayLink(t, l.r1, "eth2", 31, 20*time.Millisecond)
	target := echo(t, l.c, "10.62.9.1:9000")
	routers := map[string]*netlab.Host{"r1": l.r1, "r2": l.r2}
	addrs := map[string]string{"r1": "10.62.1.2", "r2": "10.62.2.2"}

	// One connection whose raw probes would go astray, and one on the
	// other branch.
	var picked []ecmpConn
	for attempt := 0; attempt < 60 && len(picked) < 2; attempt++ {
		c := l.classify(t, target)
		switch {
		case len(picked) == 0 && c.raw != c.taken:
			picked = append(picked, c)
		case len(picked) == 1 && c.taken != picked[0].taken:
			picked = append(picked, c)
		default:
			c.conn.Close()
		}
	}
	if len(picked) < 2 {
		t.Fatalf("60 connections did not give one whose raw probes would go astray and one on the other branch (%d found)", len(picked))
	}
	tr := newTracer(t, trace.Config{})
	for _, c := range picked {
		here, other := routers[c.taken], routers["r1"]
		if c.taken == "r1" {
			other = routers["r2"]
		}
		before := here.Packets(false, "filter", "FORWARD", c.name+"syn")
		res := traceFrom(t, l.b, tr, c.conn, trace.Options{}, 10*time.Second)
		t.Logf("connection %s takes %s; unpinned, raw probes would take %s", c.name, c.taken, c.raw)
		wantPath(t, res, addrs[c.taken], "10.62.9.1")
		past := uint64(res.Packets - res.Hops[0].Sent)
		if d := here.Packets(false, "filter", "FORWARD", c.name+"syn") - before; d != past {
			t.Errorf("%s forwarded %d probes, want the %d that went past TTL 1", c.taken, d, past)
		}
		if n := other.Packets(false, "filter", "FORWARD", c.name); n != 0 {
			t.Errorf("the other branch forwarded %d packets of the flow: the probes left the connection's branch", n)
		}
		step, delayed := res.DelayStep(10 * time.Millisecond)
		if delayed != (c.taken == "r1") {
			t.Errorf("%s: delay step %+v (found %v), want one only on r1's branch", c.taken, step, delayed)
		}
		if delayed && (step.TTL != 2 || !within(step.Delay, 20*time.Millisecond)) {
			t.Errorf("r1's branch: step %+v, want 20ms at TTL 2 (c)", step)
		}
	}
}

// Two nexthops of b's multipath route on one interface (a LAN with two
// gateways): pinning the probes to the interface cannot tell them apart,
// and the result says so when the connection's nexthop is not the one the
// probes take.
func TestTraceSaysWhenNexthopsShareAnInterface(t *testing.T) {
	l := netlab.New(t)
	b, sw, r1, r2, c := l.Host("b"), l.Host("sw"), l.Host("r1"), l.Host("r2"), l.Host("c")
	sw.Run("ip", "link", "add", "br0", "type", "bridge")
	sw.Run("ip", "link", "set", "br0", "up")
	for _, h := range []struct {
		host *netlab.Host
		port string
		addr string
	}{{b, "pb", "10.64.1.1/24"}, {r1, "p1", "10.64.1.2/24"}, {r2, "p2", "10.64.1.3/24"}} {
		l.Link(h.host, "eth1", h.addr, sw, h.port, "")
		sw.Run("ip", "link", "set", h.port, "master", "br0")
	}
	l.Link(r1, "eth2", "10.64.2.1/24", c, "eth1", "10.64.2.2/24")
	l.Link(r2, "eth2", "10.64.3.1/24", c, "eth2", "10.64.3.2/24")
	b.Run("ip", "addr", "add", "10.64.8.1/32", "dev", "lo")
	c.Run("ip", "addr", "add", "10.64.9.1/32", "dev", "lo")
	r1.Router()
	r2.Router()
	b.Sysctl("net.ipv4.fib_multipath_hash_policy", "1")
	b.Route("add", "10.64.9.0/24", "nexthop", "via", "10.64.1.2", "nexthop", "via", "10.64.1.3")
	r1.Route("add", "10.64.9.0/24", "via", "10.64.2.2")
	r2.Route("add", "10.64.9.0/24", "via", "10.64.3.2")
	r1.Route("add", "10.64.8.0/24", "via", "10.64.1.1")
	r2.Route("add", "10.64.8.0/24", "via", "10.64.1.1")
	c.Route("add", "10.64.8.0/24", "via", "10.64.2.1")
	target := echo(t, c, "10.64.9.1:9000")
	tr := newTracer(t, trace.Config{})
	seen := map[bool]bool{}
	for attempt := 0; attempt < 40 && len(seen) < 2; attempt++ {
		var nc net.Conn
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("10.64.8.1")}, Timeout: 5 * time.Second}
		if err := b.Do(func() (err error) { nc, err = d.Dial("tcp", target); return err }); err != nil {
			t.Fatal(err)
		}
		sport := strconv.Itoa(nc.LocalAddr().(*net.TCPAddr).Port)
		r2.Run("iptables", "-A", "FORWARD", "-p", "tcp", "--sport", sport, "-m", "comment", "--comment", "c"+sport)
		roundTrip(t, nc, 3)
		viaR2 := r2.Packets(false, "filter", "FORWARD", "c"+sport) > 0
		if seen[viaR2] {
			nc.Close()
			continue
		}
		seen[viaR2] = true
		res := traceFrom(t, b, tr, nc.(*net.TCPConn), trace.Options{MaxTTL: 3}, 10*time.Second)
		warned := strings.Contains(res.Flow.Route, "two nexthops share its interface")
		if warned != viaR2 {
			t.Errorf("connection via r2 %v: route %q, want a warning exactly when it goes via r2 (the probes take r1, the first nexthop on eth1)", viaR2, res.Flow.Route)
		}
		nc.Close()
	}
	if len(seen) < 2 {
		t.Fatalf("40 connections took one gateway only (%v)", seen)
	}
}
