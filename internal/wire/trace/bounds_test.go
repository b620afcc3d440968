package trace_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netlab"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// lineLab is b — r1 — r2 — r3 — c: three routers, 10.63.k.0/24 on link k.
type lineLab struct {
	*netlab.Lab
	b, c    *netlab.Host
	routers []*netlab.Host
}

func newLineLab(t *testing.T) *lineLab {
	l := &lineLab{Lab: netlab.New(t)}
	hosts := []*netlab.Host{l.Host("b"), l.Host("r1"), l.Host("r2"), l.Host("r3"), l.Host("c")}
	l.b, l.c, l.routers = hosts[0], hosts[4], hosts[1:4]
	for k := 1; k < len(hosts); k++ {
		l.Link(hosts[k-1], "eth2", fmt.Sprintf("10.63.%d.1/24", k), hosts[k], "eth1", fmt.Sprintf("10.63.%d.2/24", k))
	}
	// Router k (1..3) sits between links k and k+1.
	for i, r := range l.routers {
		k := i + 1
		r.Router()
		for j := 1; j <= len(hosts)-1; j++ {
			switch {
			case j < k:
				r.Route("add", fmt.Sprintf("10.63.%d.0/24", j), "via", fmt.Sprintf("10.63.%d.1", k))
			case j > k+1:
				r.Route("add", fmt.Sprintf("10.63.%d.0/24", j), "via", fmt.Sprintf("10.63.%d.2", k+1))
			}
		}
	}
	// c answers every UDP probe (its port unreachable is rate-limited to
	// one a second after a burst of six otherwise).
	l.c.Sysctl("net.ipv4.icmp_ratelimit", "0")
	l.b.Route("add", "10.63.0.0/16", "via", "10.63.1.2")
	l.c.Route("add", "10.63.0.0/16", "via", "10.63.4.1")
	// Every probe passes r1's PREROUTING, those that expire there too.
	for _, p := range []string{"tcp", "udp"} {
		l.routers[0].Run("iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "eth1", "-s", "10.63.1.1", "-p", p,
			"-m", "comment", "--comment", "probes-"+p)
	}
	return l
}

// probesSeen is the probe packets r1 received from b so far (TCP probes
// and the connection's own packets are told apart by the SYN flag).
func (l *lineLab) probesSeen(t *testing.T, proto string) uint64 {
	return l.routers[0].Packets(false, "mangle", "PREROUTING", "probes-"+proto)
}

var lineHops = []string{"10.63.1.2", "10.63.2.2", "10.63.3.2", "10.63.4.2"}

// A trace of a three-router path: what it costs in packets, time and
// memory, and that the routers' counters agree with its count.
func TestTraceCost(t *testing.T) {
	l := newLineLab(t)
	l.routers[0].Run("iptables", "-t", "mangle", "-I", "PREROUTING", "-i", "eth1", "-p", "tcp", "--syn", "-m", "comment", "--comment", "syn")
	conn := dial(t, l.b, echo(t, l.c, "10.63.4.2:9000"))
	for _, m := range []trace.Method{trace.MethodTCP, trace.MethodUDP} {
		tr := newTracer(t, trace.Config{})
		before := l.probesSeen(t, "udp") + l.routers[0].Packets(false, "mangle", "PREROUTING", "syn")
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		res := traceFrom(t, l.b, tr, conn, trace.Options{Method: m}, 10*time.Second)
		runtime.ReadMemStats(&ms1)
		wantPath(t, res, lineHops...)
		seen := l.probesSeen(t, "udp") + l.routers[0].Packets(false, "mangle", "PREROUTING", "syn") - before
		t.Logf("%s: %d packets (r1 saw %d) in %v; %d bytes allocated", m, res.Packets, seen, res.Duration.Round(time.Millisecond), ms1.TotalAlloc-ms0.TotalAlloc)
		if seen != uint64(res.Packets) || tr.Packets() != uint64(res.Packets) {
			t.Errorf("%s: the trace counted %d packets, the tracer %d, r1 saw %d", m, res.Packets, tr.Packets(), seen)
		}
		// Three probes per TTL, and for TCP two more spaced ones to the far
		// end, which answers one SYN per half second.
		want := 3 * len(lineHops)
		if m == trace.MethodTCP {
			want += 2
		}
		if res.Packets != want {
			t.Errorf("%s: %d packets, want %d", m, res.Packets, want)
		}
	}
}

// Max TTL: no probe goes beyond it, and r1 counts exactly the probes sent.
func TestTraceMaxTTL(t *testing.T) {
	l := newLineLab(t)
	conn := dial(t, l.b, echo(t, l.c, "10.63.4.2:9000"))
	for _, m := range []trace.Method{trace.MethodTCP, trace.MethodUDP} {
		tr := newTracer(t, trace.Config{})
		proto := map[trace.Method]string{trace.MethodTCP: "tcp", trace.MethodUDP: "udp"}[m]
		before := l.probesSeen(t, proto)
		res := traceFrom(t, l.b, tr, conn, trace.Options{MaxTTL: 2, Method: m}, 10*time.Second)
		if got := path(res); len(got) != 2 || got[0] != lineHops[0] || got[1] != lineHops[1] || res.Stop != trace.StopMaxTTL || res.Reached {
			t.Errorf("%s: path %v stop %s, want the first two routers and max_ttl", m, got, res.Stop)
		}
		if seen := l.probesSeen(t, proto) - before; res.Packets != 6 || seen != 6 {
			t.Errorf("%s: %d packets counted, %d seen by r1, want 6", m, res.Packets, seen)
		}
	}
}

// silence makes every TTL of the line silent: r1 answers nothing and
// forwards no probe.
func (l *lineLab) silence() {
	r1 := l.routers[0]
	r1.Run("iptables", "-A", "OUTPUT", "-p", "icmp", "-j", "DROP")
	r1.Run("iptables", "-A", "FORWARD", "-s", "10.63.1.1", "-p", "tcp", "--syn", "-j", "DROP")
	r1.Run("iptables", "-A", "FORWARD", "-s", "10.63.1.1", "-p", "udp", "-j", "DROP")
}

// The deadline: on a path that never answers, a trace allowed 64 silent
// TTLs ends when its context does, and sends nothing after it.
func TestTraceDeadline(t *testing.T) {
	l := newLineLab(t)
	conn := dial(t, l.b, echo(t, l.c, "10.63.4.2:9000"))
	l.silence()
	tr := newTracer(t, trace.Config{})
	const budget = 700 * time.Millisecond
	for _, m := range []trace.Method{trace.MethodTCP, trace.MethodUDP} {
		ctx, cancel := context.WithTimeout(context.Background(), budget)
		deadline, _ := ctx.Deadline()
		var res *trace.Result
		err := l.b.Do(func() (err error) {
			res, err = tr.Trace(ctx, conn, trace.Options{Method: m, MaxTTL: 64, MaxSilent: 64, Wait: time.Second})
			return err
		})
		late := time.Since(deadline)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		sent := tr.Packets()
		time.Sleep(300 * time.Millisecond)
		t.Logf("%s: stop %s after %v, %d packets, returned %v after the deadline", m, res.Stop, res.Duration.Round(time.Millisecond), res.Packets, late.Round(time.Microsecond))
		if res.Stop != trace.StopDeadline {
			t.Errorf("%s: stop %s, want deadline", m, res.Stop)
		}
		// The trace returns as soon as its context ends; a busy machine
		// may take a scheduler slice to run it.
		if late > 100*time.Millisecond {
			t.Errorf("%s: returned %v after its deadline", m, late)
		}
		if tr.Packets() != sent {
			t.Errorf("%s: %d probes sent after the trace returned", m, tr.Packets()-sent)
		}
	}
}

// The rate limit: probes go no faster than the Tracer's rate, over all its
// traces together. A UDP trace of the line (no far-end spacing) with the
// default rate is the reference measured here.
func TestTraceRateLimit(t *testing.T) {
	l := newLineLab(t)
	target := echo(t, l.c, "10.63.4.2:9000")
	conn := dial(t, l.b, target)
	fast := traceFrom(t, l.b, newTracer(t, trace.Config{}), conn, trace.Options{Method: trace.MethodUDP}, 10*time.Second)

	const rate, burst = 20, 2
	tr := newTracer(t, trace.Config{Rate: rate, Burst: burst})
	slow := traceFrom(t, l.b, tr, conn, trace.Options{Method: trace.MethodUDP}, 10*time.Second)
	wantPath(t, slow, lineHops...)
	floor := time.Duration(float64(slow.Packets-burst) / rate * float64(time.Second))
	t.Logf("%d packets in %v at the default rate, in %v at %d/s (burst %d): at least %v", fast.Packets, fast.Duration, slow.Duration, rate, burst, floor)
	if slow.Duration < floor || fast.Duration >= floor {
		t.Errorf("%v with the limit, %v without: want at least %v with it and less without", slow.Duration, fast.Duration, floor)
	}

	// Two traces of two far ends at once share the rate.
	conn2 := dial(t, l.b, echo(t, l.routers[2], "10.63.3.2:9000"))
	time.Sleep(time.Second) // let the bucket fill
	sentBefore := tr.Packets()
	start := time.Now()
	var wg sync.WaitGroup
	for _, c := range []trace.Conn{conn, conn2} {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = l.b.Do(func() error { _, err := tr.Trace(ctx, c, trace.Options{Method: trace.MethodUDP}); return err })
		})
	}
	wg.Wait()
	elapsed, sent := time.Since(start), tr.Packets()-sentBefore
	allowed := burst + rate*elapsed.Seconds()
	t.Logf("two traces at once: %d packets in %v, at most %.1f allowed", sent, elapsed.Round(time.Millisecond), allowed)
	if float64(sent) > allowed+1 {
		t.Errorf("%d packets in %v: more than the %.1f the rate allows", sent, elapsed, allowed)
	}
}

// One trace per far end at a time: a second caller shares the running
// trace's result; one whose deadline comes first is refused.
func TestTraceOnePerFarEnd(t *testing.T) {
	l := newLineLab(t)
	conn := dial(t, l.b, echo(t, l.c, "10.63.4.2:9000"))
	tr := newTracer(t, trace.Config{})
	results := make([]*trace.Result, 2)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			time.Sleep(time.Duration(i) * 200 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := l.b.Do(func() (err error) { results[i], err = tr.Trace(ctx, conn, trace.Options{}); return err }); err != nil {
				t.Error(err)
			}
		})
	}
	// A third caller with a short deadline while they run.
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := tr.Trace(ctx, conn, trace.Options{})
	cancel()
	wg.Wait()
	if results[0] == nil || results[0] != results[1] {
		t.Fatalf("two concurrent callers got %p and %p, want one shared result", results[0], results[1])
	}
	if tr.Packets() != uint64(results[0].Packets) {
		t.Errorf("%d packets sent for two callers, one trace has %d", tr.Packets(), results[0].Packets)
	}
	if !errors.Is(err, trace.ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a caller whose deadline came first: %v, want ErrBusy and its deadline", err)
	}
}

// Memory stays bounded over many traces: the heap after a forced GC is the
// same after 200 traces as after the first few (the Tracer keeps nothing
// per trace once it ended).
func TestTraceMemoryStaysBounded(t *testing.T) {
	l := newLineLab(t)
	conn := dial(t, l.b, echo(t, l.c, "10.63.4.2:9000"))
	tr := newTracer(t, trace.Config{Rate: 5000, Burst: 50})
	run := func(n int) {
		for range n {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := l.b.Do(func() error {
				res, err := tr.Trace(ctx, conn, trace.Options{Method: trace.MethodUDP})
				if err == nil && !res.Reached {
					err = fmt.Errorf("not reached: %v", res)
				}
				return err
			})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	run(10)
	before := heap()
	run(200)
	after := heap()
	t.Logf("heap after a forced GC: %d bytes after 10 traces, %d after 210 (%+d)", before, after, int64(after)-int64(before))
	if after > before+256<<10 {
		t.Errorf("heap grew by %d bytes over 200 traces", after-before)
	}
}

// floodICMP sends forged ICMP time exceeded from h to the flow's local
// address, quoting the flow with random sequence numbers, until stop; it
// returns how many it sent.
func floodICMP(t *testing.T, h *netlab.Host, local, remote netip.AddrPort, stop <-chan struct{}) <-chan int {
	t.Helper()
	var fd int
	if err := h.Do(func() (err error) { fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP); return err }); err != nil {
		t.Fatal(err)
	}
	sent := make(chan int, 1)
	go func() {
		defer unix.Close(fd)
		msg := make([]byte, 8+20+8)
		msg[0] = 11
		q := msg[8:]
		q[0], q[8], q[9] = 0x45, 1, 6
		binary.BigEndian.PutUint16(q[2:], 40)
		copy(q[12:], local.Addr().AsSlice())
		copy(q[16:], remote.Addr().AsSlice())
		binary.BigEndian.PutUint16(q[20:], local.Port())
		binary.BigEndian.PutUint16(q[22:], remote.Port())
		to := &unix.SockaddrInet4{Addr: local.Addr().As4()}
		n := 0
		for ; n < 600000; n++ {
			select {
			case <-stop:
				sent <- n
				return
			default:
			}
			binary.BigEndian.PutUint32(q[24:], rand.Uint32())
			binary.BigEndian.PutUint16(msg[2:], 0)
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
			_ = unix.Sendto(fd, msg, 0, to)
		}
		sent <- n
	}()
	return sent
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// A flood of forged ICMP errors that quote the flow (as an attacker on the
// path could send) neither confuses a trace nor grows its memory: answers
// whose sequence number is not one of the trace's probes are dropped by
// the reader, and the trace finds the path. A flood faster than a starved
// reader drains (the sender is a goroutine of this process; CI runs
// stress-ng beside it) can overflow the socket and lose a router's true
// answer: a hop then shows "*", which is no confusion. Such a trace is
// tried again, at most floodTraces times; a wrong address fails at once.
func TestTraceUnderForgedICMPFlood(t *testing.T) {
	const floodTraces = 3
	l := newLineLab(t)
	conn := dial(t, l.b, echo(t, l.c, "10.63.4.2:9000"))
	local := netip.MustParseAddrPort(conn.LocalAddr().String())
	remote := netip.MustParseAddrPort(conn.RemoteAddr().String())
	tr := newTracer(t, trace.Config{})
	stop := make(chan struct{})
	stopFlood := sync.OnceFunc(func() { close(stop) })
	t.Cleanup(stopFlood) // also when an attempt fails the test
	sent := floodICMP(t, l.routers[1], local, remote, stop)
	var res *trace.Result
	for attempt := 1; attempt <= floodTraces; attempt++ {
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		res = traceFrom(t, l.b, tr, conn, trace.Options{}, 10*time.Second)
		runtime.ReadMemStats(&ms1)
		if alloc := ms1.TotalAlloc - ms0.TotalAlloc; alloc > 1<<20 {
			t.Errorf("%d bytes allocated during the trace under the flood", alloc)
		}
		got := path(res)
		for i, hop := range got {
			if hop != "*" && (i >= len(lineHops) || hop != lineHops[i]) {
				t.Fatalf("attempt %d: path %v, want %v: a forged answer confused the trace", attempt, got, lineHops)
			}
		}
		if !slices.Contains(got, "*") || attempt == floodTraces {
			break
		}
		t.Logf("attempt %d: path %v: a true answer was lost under the flood; tracing again", attempt, got)
	}
	stopFlood()
	n := <-sent
	t.Logf("%d forged ICMP errors during the traces", n)
	wantPath(t, res, lineHops...)
	if n < 1000 {
		t.Errorf("only %d forged errors sent", n)
	}
}
