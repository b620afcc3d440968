package trace_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netlab"
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
