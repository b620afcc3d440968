package nfqdelay_test

import (
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netlab"
	"github.com/subsegment/subsegment_exporter/internal/testkit/nfqdelay"
)

// pair is two hosts, x (10.70.1.1) and y (10.70.1.2), on one link, with an
// echo server on y.
type pair struct {
	lab  *netlab.Lab
	x, y *netlab.Host
	echo string
}

func newPair(t *testing.T) *pair {
	l := netlab.New(t)
	p := &pair{lab: l, x: l.Host("x"), y: l.Host("y")}
	l.Link(p.x, "eth0", "10.70.1.1/24", p.y, "eth0", "10.70.1.2/24")
	var ln net.Listener
	if err := p.y.Do(func() (err error) { ln, err = net.Listen("tcp", "10.70.1.2:0"); return err }); err != nil {
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
	p.echo = ln.Addr().String()
	return p
}

// roundTrips measures n TCP round trips of one byte from x to y's echo
// server, on one connection, and returns them sorted.
func (p *pair) roundTrips(t *testing.T, n int) []time.Duration {
	t.Helper()
	var c net.Conn
	if err := p.x.Do(func() (err error) { c, err = net.DialTimeout("tcp", p.echo, 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := []byte{1}
	rtts := make([]time.Duration, 0, n)
	for range n + 3 {
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
	rtts = rtts[3:] // the first round trips warm up the path
	slices.Sort(rtts)
	return rtts
}

func median(d []time.Duration) time.Duration { return d[len(d)/2] }

// start binds a delayer in h and queues h's outgoing packets on eth0.
func start(t *testing.T, h *netlab.Host, queue uint16, delay time.Duration, maxQueued int) *nfqdelay.Delayer {
	t.Helper()
	d, err := nfqdelay.Start(nfqdelay.Config{Queue: queue, Delay: delay, MaxQueued: maxQueued, Namespace: h.NS})
	if err != nil {
		t.Fatal(err)
	}
	q := fmt.Sprint(queue)
	h.Run("iptables", "-A", "OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", q)
	t.Cleanup(func() {
		_, _ = h.Try("iptables", "-D", "OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", q)
		if err := d.Close(); err != nil {
			t.Errorf("delayer in %s: %v", h.Name, err)
		}
	})
	return d
}

// within: the measured increase is the stated delay within max(1 ms, 10%).
func within(increase, want time.Duration) bool {
	tol := max(time.Millisecond, want/10)
	return increase >= want-tol && increase <= want+tol
}

// The delay shows on a TCP round trip between the same two namespaces:
// +D with x's outgoing packets queued, +2D with both directions queued.
func TestDelayAddsStatedDelay(t *testing.T) {
	p := newPair(t)
	const delay = 20 * time.Millisecond
	base := p.roundTrips(t, 30)

	dx := start(t, p.x, 7, delay, 0)
	one := p.roundTrips(t, 30)
	dy := start(t, p.y, 8, delay, 0)
	both := p.roundTrips(t, 30)

	t.Logf("median rtt: %v without, %v with x -> y delayed, %v with both directions (min %v, %v, %v)",
		median(base), median(one), median(both), base[0], one[0], both[0])
	if inc := median(one) - median(base); !within(inc, delay) {
		t.Errorf("one direction: rtt rose by %v, want %v within max(1ms, 10%%)", inc, delay)
	}
	if inc := median(both) - median(base); !within(inc, 2*delay) {
		t.Errorf("both directions: rtt rose by %v, want %v within max(1ms, 10%%)", inc, 2*delay)
	}
	// The connection's last packets may still be held: wait for them.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if s := dx.Stats(); s.Received == s.Accepted {
			break
		}
	}
	if s := dx.Stats(); s.Received == 0 || s.Received != s.Accepted {
		t.Errorf("x: %+v, want every received packet accepted", s)
	}
	t.Logf("x: %+v, y: %+v", dx.Stats(), dy.Stats())
	if s := dy.Stats(); s.Received == 0 {
		t.Errorf("y: %+v, want packets", s)
	}
}

// udpBurst sends n numbered datagrams from x to y at once and returns the
// numbers y received, in arrival order.
func (p *pair) udpBurst(t *testing.T, n int, wait time.Duration) []int {
	t.Helper()
	var rx, tx net.PacketConn
	if err := p.y.Do(func() (err error) { rx, err = net.ListenPacket("udp", "10.70.1.2:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	// Room for the whole burst: the delayer releases it at once.
	if err := rx.(*net.UDPConn).SetReadBuffer(4 << 20); err != nil {
		t.Fatal(err)
	}
	if err := p.x.Do(func() (err error) { tx, err = net.ListenPacket("udp", "10.70.1.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	for i := range n {
		if _, err := tx.WriteTo([]byte(fmt.Sprint(i)), rx.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	var got []int
	buf := make([]byte, 64)
	for len(got) < n {
		_ = rx.SetReadDeadline(time.Now().Add(wait))
		m, _, err := rx.ReadFrom(buf)
		if err != nil {
			break
		}
		var v int
		_, _ = fmt.Sscan(string(buf[:m]), &v)
		got = append(got, v)
	}
	return got
}

// Packets leave in the order they came, and none is lost below the bound.
func TestDelayKeepsOrder(t *testing.T) {
	p := newPair(t)
	start(t, p.x, 9, 10*time.Millisecond, 0)
	got := p.udpBurst(t, 500, time.Second)
	if len(got) != 500 {
		t.Fatalf("received %d of 500 datagrams", len(got))
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("datagram %d arrived in place %d: order not kept", v, i)
		}
	}
}

// At most MaxQueued packets are held: a burst beyond it is tail-dropped by
// the kernel, and what passes is the head of the burst, in order.
func TestDelayBoundsQueue(t *testing.T) {
	p := newPair(t)
	const bound = 16
	d := start(t, p.x, 10, 200*time.Millisecond, bound)
	got := p.udpBurst(t, 300, time.Second)
	if len(got) == 0 || len(got) > bound {
		t.Fatalf("received %d datagrams of a burst of 300 with a queue of %d", len(got), bound)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("datagram %d arrived in place %d", v, i)
		}
	}
	if s := d.Stats(); s.Received > bound {
		t.Errorf("held %d packets, bound %d", s.Received, bound)
	}
	t.Logf("a burst of 300 through a queue of %d: %d passed", bound, len(got))
}
