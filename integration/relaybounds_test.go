package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// The bounds a relay on the open internet keeps against what one
// connection sends (issue 20, items 1 and 2): a frame must arrive whole
// within --timeout, and a connection cannot keep others' sessions alive;
// the buffer budget is held by bytes that arrived, not by headers' claims.

// churn runs n short connections against addr from workers goroutines:
// valid probes (read back), garbage (answered with an error frame) and
// connections that close without a word. Every connection is bounded in time.
func churn(t *testing.T, addr string, n, workers int, seed uint64) {
	t.Helper()
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * time.Minute)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := next.Add(1); i <= int64(n) && time.Now().Before(deadline); i = next.Add(1) {
				if !churnOne(addr, int(i%3), rng) {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if next.Load() <= int64(n) {
		t.Fatalf("only %d of %d connections churned within 3 minutes", next.Load()-1, n)
	}
	if f := failed.Load(); f > int64(n)/100 {
		t.Fatalf("%d of %d churned probes got no reply", f, n)
	}
}

// churnOne is one connection of churn; false when a valid probe got no reply.
func churnOne(addr string, kind int, rng *rand.Rand) bool {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return kind != 0
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	switch kind {
	case 0: // a valid probe, answered
		if _, err := conn.Write(benign(rng)); err != nil {
			return false
		}
		r := frame.NewReader(conn, frame.DefaultMaxFrameBytes)
		defer r.Release()
		if err := r.Fill(); err != nil {
			return false
		}
		fr, err := r.Next()
		return err == nil && fr != nil
	case 1: // garbage, refused with an error frame
		conn.Write(garbage(rng))
		conn.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, conn)
	}
	return true // case 2: connected, closed without a word
}

// trickle sends a valid probe one byte every interval until the relay
// closes the connection; it returns when the relay closed it, measured
// from the connect.
func trickle(t *testing.T, addr string, interval time.Duration) <-chan time.Duration {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	opened := time.Now()
	fr := frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: 1, BudgetMicros: 1_000_000}, make([]byte, 200), []uint64{7}, nil)
	closed := make(chan time.Duration, 1)
	go func() {
		io.Copy(io.Discard, conn) // returns when the relay closes (or the test does)
		closed <- time.Since(opened)
	}()
	go func() {
		for i := 0; i < len(fr)-1; i++ { // never the last byte: the frame stays partial
			if _, err := conn.Write(fr[i : i+1]); err != nil {
				return
			}
			time.Sleep(interval)
		}
	}()
	return closed
}

// A connection that trickles one byte of a frame every 0.3 s is closed
// within 2 × --timeout, and 3000 connections that come and go meanwhile
// leave no memory behind: none of them is kept alive by the trickler.
func TestTricklerKeepsNothingAlive(t *testing.T) {
	// Long enough that the churn runs while the trickler lives, even on a
	// busy machine (the log line says whether it did).
	const timeout = 5 * time.Second
	for _, engine := range []string{"epoll", "goroutines"} {
		t.Run(engine, func(t *testing.T) {
			z := startHop(t, "z", "", "--relay.engine", engine, "--log.level", "info")
			b := startHop(t, "b", z.addr, "--relay.engine", engine, "--log.level", "info", "--web.enable-pprof", "--timeout", timeout.String())
			churn(t, b.addr, 300, 4, 1) // pools and maps at their working size
			heap0 := heapAfterGC(t, b.web)

			closed := trickle(t, b.addr, 300*time.Millisecond)
			started := time.Now()
			churn(t, b.addr, 3000, 4, 2)
			churnTime := time.Since(started)
			heap1 := heapAfterGC(t, b.web)
			growth := heap1 - heap0
			var lived time.Duration
			select {
			case lived = <-closed:
			default:
			}
			t.Logf("heap after GC %.2f MiB before, %.2f MiB after 3000 connections (%+.2f MiB) churned in %v next to a trickler (still open when measured: %v)",
				heap0/(1<<20), heap1/(1<<20), growth/(1<<20), churnTime.Round(time.Millisecond), lived == 0)
			if growth >= 1<<20 {
				t.Errorf("heap grew by %.2f MiB over 3000 connections next to a trickling one (want under 1 MiB)", growth/(1<<20))
			}
			if lived == 0 {
				select {
				case lived = <-closed:
				case <-time.After(max(3*timeout-time.Since(started), 0)):
					t.Fatalf("trickler still open after %v (--timeout %v): a partial frame keeps a connection alive", time.Since(started).Round(time.Millisecond), timeout)
				}
			}
			t.Logf("trickler closed after %v (--timeout %v)", lived.Round(time.Millisecond), timeout)
			if lived > 2*timeout {
				t.Errorf("trickler lived %v, over 2 × --timeout %v", lived, timeout)
			}
			if r := probeOK(context.Background(), b.addr); !r.Success {
				t.Errorf("probe after the churn: %+v", r.Failure)
			}
		})
	}
}

// Eight unsigned connections that send only a header claiming a 1.9 MiB
// frame hold nothing of the buffer budget: a signed stream of 300 KiB
// blocks passes byte-exact beside them.
func TestHeaderClaimsDoNotLockTheBudget(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("budget-0123456789abcdef0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bounds := []string{"--relay.auth-key-file", key, "--relay.max-frame-bytes", "2097152", "--relay.buffer-budget-bytes", "8388608"}
	for _, engine := range []string{"epoll", "goroutines"} {
		t.Run(engine, func(t *testing.T) {
			z := startHop(t, "z", "", append([]string{"--relay.engine", engine, "--log.level", "info"}, bounds...)...)
			b := startHop(t, "b", z.addr, append([]string{"--relay.engine", engine, "--log.level", "info"}, bounds...)...)
			claim := make([]byte, frame.HeaderLen)
			frame.PutHeader(claim, frame.Header{Kind: frame.KindStreamRequest, Length: 1900<<10 - frame.HeaderLen})
			for i := 0; i < 8; i++ {
				conn, err := net.Dial("tcp", b.addr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				if _, err := conn.Write(claim); err != nil {
					t.Fatal(err)
				}
			}
			// The claims are read at once; a moment lets the relay do so
			// before the stream starts (the stream must pass either way).
			time.Sleep(500 * time.Millisecond)

			in := make([]byte, 3*300<<10)
			rng := rand.New(rand.NewPCG(20, 2))
			for i := range in {
				in[i] = byte(rng.Uint32())
			}
			out, errOut, code := runBinary(t, bytes.NewReader(in), append([]string{"send", "-f", b.addr, "-s", fmt.Sprint(300 << 10), "-t", "10s", "--relay.name", "a"}, bounds[:4]...)...)
			if code != 0 || out != string(in) {
				t.Fatalf("stream of 300 KiB blocks beside 8 header-only claims: exit %d, %d of %d bytes back byte-exact=%v\n%s",
					code, len(out), len(in), out == string(in), tail(errOut, 2000))
			}
			if strings.Contains(b.out.String(), "budget") {
				t.Errorf("relay b logged a budget refusal:\n%s", tail(b.out.String(), 2000))
			}
		})
	}
}

// holdBudget is an unproven connection that sends a header claiming a
// frame of claim bytes and body bytes of it, then nothing more; reply
// gets what the relay answered before it closed the connection (nothing
// when the test ended first).
func holdBudget(t *testing.T, addr string, claim, body int) (conn net.Conn, reply <-chan []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, nil
	}
	t.Cleanup(func() { c.Close() })
	data := make([]byte, frame.HeaderLen+body)
	frame.PutHeader(data, frame.Header{Kind: frame.KindStreamRequest, Length: uint32(claim)})
	got := make(chan []byte, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(data); err != nil {
		c.Close()
	}
	return c, got
}

// refusedOverloaded reports whether what a relay answered is an error
// frame with reason overloaded.
func refusedOverloaded(b []byte) bool {
	e, err := frame.ParseErrorFrame(b, frame.DefaultMaxFrameBytes)
	return err == nil && e.Reason.String() == "overloaded"
}

// Real bytes from unproven connections do not lock the budget either
// (REVIEW-1 finding 2): eight unsigned connections that sent 256 KiB each
// of a frame claiming 1.9 MiB (the unproven half of an 8 MiB budget),
// and an attacker that reconnects as soon as one of its connections is
// closed, do not keep a 300 KiB stream block on a new connection out:
// the idlest holders are closed with an overloaded error frame instead.
// Both engines, with a shared key and without.
func TestRealBytesDoNotLockTheBudget(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("budget-0123456789abcdef0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bounds := []string{"--relay.max-frame-bytes", "2097152", "--relay.buffer-budget-bytes", "8388608"}
	for _, engine := range []string{"epoll", "goroutines"} {
		for _, signed := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/signed=%v", engine, signed), func(t *testing.T) {
				args := append([]string{"--relay.engine", engine, "--log.level", "info"}, bounds...)
				auth := []string{}
				if signed {
					auth = []string{"--relay.auth-key-file", key}
				}
				z := startHop(t, "z", "", append(args, auth...)...)
				b := startHop(t, "b", z.addr, append(args, auth...)...)
				var replies []<-chan []byte
				for i := 0; i < 8; i++ {
					if _, got := holdBudget(t, b.addr, 1992294, 262144); got != nil {
						replies = append(replies, got)
					}
				}
				time.Sleep(500 * time.Millisecond) // the relay reads them all
				stop, reconnects := reconnectingHolders(t, b.addr, 8)
				time.Sleep(200 * time.Millisecond)

				in := make([]byte, 3*300<<10)
				rng := rand.New(rand.NewPCG(20, 5))
				for i := range in {
					in[i] = byte(rng.Uint32())
				}
				send := []string{"send", "-f", b.addr, "-s", fmt.Sprint(300 << 10), "-t", "10s", "--relay.name", "a", "--relay.max-frame-bytes", "2097152"}
				out, errOut, code := runBinary(t, bytes.NewReader(in), append(send, auth...)...)
				stop()
				if code != 0 || out != string(in) {
					t.Fatalf("stream of 300 KiB blocks beside 8 holders of 256 KiB and a reconnecting attacker (%d reconnects): exit %d, %d of %d bytes back byte-exact=%v\n%s",
						reconnects.Load(), code, len(out), len(in), out == string(in), tail(errOut, 2000))
				}
				overloaded := countOverloaded(replies, 5*time.Second)
				t.Logf("stream passed; %d of %d first holders closed with an overloaded error frame, %d attacker connections closed meanwhile",
					overloaded, len(replies), reconnects.Load())
				if overloaded == 0 {
					t.Errorf("no holder was answered with an overloaded error frame")
				}
			})
		}
	}
}

// reconnectingHolders is the attacker: workers connections at a time,
// each holding 256 KiB of a frame claiming 1.9 MiB and replaced as soon
// as the relay closes it (10 000 times each at most). stop ends them and
// waits; reconnects counts the connections the relay closed.
func reconnectingHolders(t *testing.T, addr string, workers int) (stop func(), reconnects *atomic.Int64) {
	ctx, cancel := context.WithCancel(context.Background())
	var attackers sync.WaitGroup
	reconnects = new(atomic.Int64)
	for range workers {
		attackers.Add(1)
		go func() {
			defer attackers.Done()
			for i := 0; i < 10000 && ctx.Err() == nil; i++ {
				c, got := holdBudget(t, addr, 1992294, 262144)
				if c == nil {
					return
				}
				select {
				case <-got:
					reconnects.Add(1)
				case <-ctx.Done():
				}
				c.Close()
			}
		}()
	}
	return func() { cancel(); attackers.Wait() }, reconnects
}

// countOverloaded counts the holders answered with an overloaded error
// frame, waiting up to wait for each.
func countOverloaded(replies []<-chan []byte, wait time.Duration) int {
	n := 0
	for _, got := range replies {
		select {
		case r := <-got:
			if refusedOverloaded(r) {
				n++
			}
		case <-time.After(wait):
		}
	}
	return n
}

// An evicted reader's buffer leaves memory when its charge leaves the
// budget (REVIEW-2 F-A): twelve unsigned connections, each sending 1.9
// MiB of a frame it never completes, evict each other one by one, and
// every evicted one stays open through its drain (up to 2 s, the client
// never closes). Measured while they are all open, the relay's heap after
// a forced GC grows by no more than the budget plus what as many
// connections holding a partial frame under 64 KiB (never budgeted) cost,
// measured first: not by 12 × the 4 MiB buffer each evicted reader had.
// Both engines, as the end host and as a relay with a next hop.
func TestEvictedBuffersLeaveDuringTheDrain(t *testing.T) {
	const budget, holders = 8 << 20, 12
	bounds := []string{"--relay.max-frame-bytes", "2097152", "--relay.buffer-budget-bytes", fmt.Sprint(budget), "--log.level", "info", "--web.enable-pprof"}
	for _, engine := range []string{"epoll", "goroutines"} {
		for _, role := range []string{"end", "relay"} {
			t.Run(engine+"/"+role, func(t *testing.T) {
				args := append([]string{"--relay.engine", engine}, bounds...)
				h := startHop(t, "z", "", args...)
				if role == "relay" {
					h = startHop(t, "b", h.addr, args...)
				}
				perConn := unbudgetedCost(t, h, holders)
				base := heapAfterGC(t, h.web)
				for round := 1; ; round++ {
					grown, open := evictedHeap(t, h, holders)
					t.Logf("round %d: heap after GC %+.2f MiB with %d connections open (%d evicted, in their drain); budget %.0f MiB, %d connections under 64 KiB cost %.2f MiB",
						round, (grown-base)/(1<<20), open, holders-1, float64(budget)/(1<<20), holders, perConn/(1<<20))
					if open < holders {
						// The drains ended before the measurement: it says
						// nothing. Only a slow machine gets here; try again.
						if round == 3 {
							t.Fatalf("in 3 rounds, the %d evicted connections' drains (2 s) never outlasted the measurement", holders-1)
						}
						waitConnections(t, h.web, 0)
						continue
					}
					if limit := budget + perConn + 1<<20; grown-base > limit {
						t.Errorf("heap grew by %.2f MiB while %d evicted connections drained: over the %.0f MiB budget + %.2f MiB for %d small connections + 1 MiB; evicted buffers stay allocated outside the budget",
							(grown-base)/(1<<20), holders-1, float64(budget)/(1<<20), perConn/(1<<20), holders)
					}
					return
				}
			})
		}
	}
}

// unbudgetedCost is what n connections that each hold a partial frame of
// 60 KiB (a buffer of 64 KiB, never budgeted) add to h's heap after GC.
func unbudgetedCost(t *testing.T, h *hop, n int) float64 {
	t.Helper()
	before := heapAfterGC(t, h.web)
	var conns []net.Conn
	for range n {
		if c, _ := holdBudget(t, h.addr, 1992294, 60<<10); c != nil {
			conns = append(conns, c)
		}
	}
	waitBuffered(t, h.web, n)
	cost := heapAfterGC(t, h.web) - before
	for _, c := range conns {
		c.Close()
	}
	waitConnections(t, h.web, 0)
	return cost
}

// evictedHeap opens n unproven connections one after the other, each
// sending 1.9 MiB of a frame claiming 1.9 MiB and a little more, so that
// they evict each other (the unproven share holds one 4 MiB buffer);
// once n-1 were answered overloaded it measures h's heap after GC (the
// least of three) and then how many connections h still serves, so the
// caller knows whether all of them were open throughout. Then it closes
// them.
func evictedHeap(t *testing.T, h *hop, n int) (heap float64, open int) {
	t.Helper()
	var conns []net.Conn
	var replies []<-chan []byte
	for range n {
		c, got := holdBudget(t, h.addr, 1992294, 1900<<10)
		if c == nil {
			t.Fatal("cannot connect to the relay")
		}
		conns, replies = append(conns, c), append(replies, got)
	}
	// Mostly the one before is evicted, but two connections read at the
	// same time evict each other in either order: which one is left is
	// not known, only that one is.
	if got := awaitOverloaded(replies, n-1, 20*time.Second); got != n-1 {
		t.Fatalf("%d of %d connections were answered overloaded, want all but one", got, n)
	}
	// What the relay still does meanwhile (a reader growing, a buffer
	// released after its answer was written) only adds to a measurement:
	// the least of three is the one that shows what stays.
	heap = heapAfterGC(t, h.web)
	for range 2 {
		heap = min(heap, heapAfterGC(t, h.web))
	}
	open = int(metric(t, h.web, "subsegment_relay_connections"))
	for _, c := range conns {
		c.Close()
	}
	return heap, open
}

// awaitOverloaded waits until want of the replies are an overloaded
// error frame (wait at most), and returns how many were.
func awaitOverloaded(replies []<-chan []byte, want int, wait time.Duration) int {
	all := make(chan bool, len(replies))
	for _, got := range replies {
		go func() {
			select {
			case r := <-got:
				all <- refusedOverloaded(r)
			case <-time.After(wait):
			}
		}()
	}
	n := 0
	for deadline := time.After(wait); n < want; {
		select {
		case ok := <-all:
			if ok {
				n++
			}
		case <-deadline:
			return n
		}
	}
	return n
}

// waitConnections waits (10 s at most) until h serves n connections.
func waitConnections(t *testing.T, web string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); int(metric(t, web, "subsegment_relay_connections")) != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%s still serves %v connections after 10 s, want %d", web, metric(t, web, "subsegment_relay_connections"), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitBuffered waits (10 s at most) until h serves n connections, and
// lets it read what they sent.
func waitBuffered(t *testing.T, web string, n int) {
	t.Helper()
	waitConnections(t, web, n)
	time.Sleep(200 * time.Millisecond)
}
