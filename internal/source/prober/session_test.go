package prober

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/relay"
)

// sessionProbes opens a session on o and probes it after each idle pause.
func sessionProbes(t *testing.T, o Options, pauses ...time.Duration) []*Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, warm := Open(ctx, o)
	if s == nil {
		t.Fatalf("open: %+v", warm.Failure)
	}
	defer s.Close()
	var out []*Result
	for _, d := range pauses {
		time.Sleep(d)
		out = append(out, s.Probe(ctx))
	}
	return out
}

// A first hop closes a connection idle for longer than its timeout: a
// continuous entry probed less often than that failed every probe. The
// session opens a new connection (with its warm-up) and sends the probe
// on it.
func TestSessionOutlivesTheFirstHopsIdleTimeout(t *testing.T) {
	chaintest.ForEachEngine(t, testSessionOutlivesIdleTimeout)
}

func testSessionOutlivesIdleTimeout(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: z, Timeout: 200 * time.Millisecond})
	for i, r := range sessionProbes(t, opts(b), 10*time.Millisecond, 1200*time.Millisecond, 1200*time.Millisecond) {
		if !r.Success || r.Segment("b", "z") == nil {
			t.Errorf("probe %d after the relay closed the idle connection: %+v", i, r.Failure)
		}
	}
}

// The same for an HTTP proxy's keep-alive timeout.
func TestHTTPSessionOutlivesTheProxysKeepAlive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{IdleTimeout: 200 * time.Millisecond, ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Add("Subsegment-Timing", "edge;dur=1us")
			_, _ = io.WriteString(w, "ok")
		})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	for i, r := range sessionProbes(t, httpOpts("http://"+ln.Addr().String()+"/", HTTPOptions{}), 10*time.Millisecond, 1200*time.Millisecond) {
		if !r.Success {
			t.Errorf("probe %d after the proxy closed the idle connection: %+v", i, r.Failure)
		}
	}
}

// A first hop that closes the connection of a probe sent right after
// the previous one is a failure, not a stale connection.
func TestSessionReportsAFirstHopThatCloses(t *testing.T) {
	srv := serveHTTP(t, func(n int) string {
		if n > 0 {
			return "" // hang up
		}
		return response(200, "edge;dur=1us")
	})
	rs := sessionProbes(t, httpOpts(srv.url(), HTTPOptions{}), 10*time.Millisecond)
	if f := rs[0].Failure; f == nil || f.Reason != "closed" {
		t.Errorf("failure %+v, want closed", f)
	}
}

// A first hop that closed the idle connection and is gone when the
// session opens another: the probe fails on the dial (refused), and the
// session closes without touching the closed connection again.
func TestSessionWhoseFirstHopIsGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		answerThenIdleClose(c, 100*time.Millisecond)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, warm := Open(ctx, opts(ln.Addr().String()))
	if s == nil {
		t.Fatalf("open: %+v", warm.Failure)
	}
	time.Sleep(1200 * time.Millisecond)
	ln.Close()
	r := s.Probe(ctx)
	if f := r.Failure; f == nil || f.Reason != "refused" {
		t.Errorf("failure %+v, want refused", f)
	}
	s.Close()
	s.Close()
}

// answerThenIdleClose answers probes on c as an end host named z, and
// closes c once it has been idle for idle.
func answerThenIdleClose(c net.Conn, idle time.Duration) {
	defer c.Close()
	r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
	defer r.Release()
	for range 100 {
		_ = c.SetReadDeadline(time.Now().Add(idle))
		if r.Fill() != nil {
			return
		}
		for {
			fr, err := r.Next()
			if err != nil || fr == nil {
				break
			}
			v, err := frame.Parse(fr, frame.DefaultMaxFrameBytes, frame.MaxHopsLimit)
			if err != nil {
				return
			}
			rec := chaintest.EndRecord("z")
			if _, err := c.Write(chaintest.Reply(v, fr, frame.AppendHop(nil, &rec), 1)); err != nil {
				return
			}
		}
	}
}

// A continuous session's probe of a relay chain is summarised in place:
// next to no allocation per probe (the relays, in this process, allocate
// nothing per frame either), and every result is what a fresh Run of one
// probe would compute.
func TestSessionProbesAllocateNextToNothing(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "z")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o := opts(target)
	o.ReuseResults = true
	s, warm := Open(ctx, o)
	if s == nil {
		t.Fatalf("open: %+v", warm.Failure)
	}
	defer s.Close()
	for range 10 {
		s.Probe(ctx)
	}
	allocs := testing.AllocsPerRun(200, func() {
		if r := s.Probe(ctx); !r.Success || len(r.Segments) != 2 || r.Segment("b", "z").Samples != 1 {
			t.Fatalf("probe: %+v", r)
		}
	})
	t.Logf("%.1f allocations per probe", allocs)
	// The runtime's netpoller and timers of the deadline may allocate.
	if allocs >= 1 {
		t.Errorf("%.1f allocations per probe", allocs)
	}
	res := s.Probe(ctx)
	kept := res.Clone()
	s.Probe(ctx)
	if kept.Segments[1].RTT != (Seconds{Min: kept.Segments[1].samples[0].Seconds(), Median: kept.Segments[1].samples[0].Seconds(), Max: kept.Segments[1].samples[0].Seconds()}) {
		t.Errorf("the clone's rtt %+v is not its samples' %v: it shares the renewed result's arrays", kept.Segments[1].RTT, kept.Segments[1].samples)
	}
	if s.Connections() != 1 {
		t.Errorf("%d connections, want 1", s.Connections())
	}
}

// A probe that opened the connection again says so: its result carries
// the new connection's connect times, and Connections counts it (a
// runner's retransmission counts start again with it).
func TestSessionReopenReportsTheNewConnection(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: z, Timeout: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, warm := Open(ctx, opts(b))
	if s == nil {
		t.Fatalf("open: %+v", warm.Failure)
	}
	defer s.Close()
	if r := s.Probe(ctx); r.Segment("a", "b").Connect != nil || s.Connections() != 1 {
		t.Fatalf("a probe on the open connection: connect %v, %d connections", r.Segment("a", "b").Connect, s.Connections())
	}
	time.Sleep(1200 * time.Millisecond)
	r := s.Probe(ctx)
	if !r.Success || s.Connections() != 2 {
		t.Fatalf("after the relay closed the idle connection: %+v, %d connections", r.Failure, s.Connections())
	}
	for _, seg := range [][2]string{{"a", "b"}, {"b", "z"}} {
		if c := r.Segment(seg[0], seg[1]); c == nil || c.Connect == nil || c.Samples != 1 {
			t.Errorf("segment %s -> %s of the reopened probe: %+v", seg[0], seg[1], c)
		}
	}
}

// A chain longer than what is found by a scan (linearHops) is found by
// its map: every segment and hop, in a run and in a session's probes.
func TestLongChainSegmentsAndHops(t *testing.T) {
	names := make([]string, linearHops+4)
	for i := range names {
		names[i] = fmt.Sprintf("h%02d", i)
	}
	target := chaintest.Chain(t, chaintest.ChainOptions{}, names...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	check := func(what string, r *Result) {
		t.Helper()
		if !r.Success || len(r.Segments) != len(names) || len(r.Hops) != len(names)+1 {
			t.Fatalf("%s: %d segments, %d hops: %+v", what, len(r.Segments), len(r.Hops), r.Failure)
		}
		prev := "a"
		for _, n := range names {
			if s := r.Segment(prev, n); s == nil || s.Samples == 0 {
				t.Errorf("%s: segment %s -> %s: %+v", what, prev, n, s)
			}
			prev = n
		}
	}
	check("run", Run(ctx, opts(target)))
	o := opts(target)
	o.ReuseResults = true
	s, warm := Open(ctx, o)
	if s == nil {
		t.Fatalf("open: %+v", warm.Failure)
	}
	defer s.Close()
	for i := range 3 {
		check(fmt.Sprintf("probe %d", i), s.Probe(ctx))
	}
}

// The idle rule in one place: a probe that found its connection closed by
// the first hop before anything came back is sent again on a new one when
// the connection sat idle for staleAfter, as the slots give it when the
// probe went out earlier before its slot than the one before it (a
// continuous probe may go out early with its batch), as it is otherwise;
// a probe sent sooner after the previous one, or answered, is what it is.
func TestStale(t *testing.T) {
	closed := Sample{Failure: &Failure{Reason: peer.ReasonClosed}}
	reset := Sample{Failure: &Failure{Reason: peer.ReasonReset}}
	further := Sample{Records: make([]frame.HopRecord, 2), Failure: &Failure{FromIndex: 1, Reason: peer.ReasonClosed}}
	timedOut := Sample{Failure: &Failure{Reason: peer.ReasonTimeout}}
	for _, c := range []struct {
		name                   string
		idle, early, usedEarly time.Duration
		smp                    Sample
		want                   bool
	}{
		{"idle past the threshold, closed", 1200 * time.Millisecond, 0, 0, closed, true},
		{"idle past the threshold, reset", staleAfter, 0, 0, reset, true},
		{"sent 50ms early at an interval of 1.03s", 978 * time.Millisecond, 50 * time.Millisecond, 0, closed, true},
		{"the same sent on its slot", 978 * time.Millisecond, 0, 0, closed, false},
		{"as early as the probe before: the idle time is the interval's", 978 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, closed, false},
		{"20ms earlier than the probe before", 985 * time.Millisecond, 50 * time.Millisecond, 30 * time.Millisecond, closed, true},
		{"late: the longer idle time counts as it is", 1020 * time.Millisecond, -50 * time.Millisecond, 0, closed, true},
		{"late, and sooner than the threshold", 978 * time.Millisecond, -50 * time.Millisecond, 0, closed, false},
		{"after a late probe, on its slot", 960 * time.Millisecond, 0, -50 * time.Millisecond, closed, true},
		{"early but a short interval", 400 * time.Millisecond, 20 * time.Millisecond, 0, closed, false},
		{"a later hop closed", 2 * time.Second, 0, 0, further, false},
		{"timed out, not closed", 2 * time.Second, 0, 0, timedOut, false},
		{"answered", 2 * time.Second, 0, 0, Sample{}, false},
	} {
		if got := stale(c.idle, c.early, c.usedEarly, c.smp); got != c.want {
			t.Errorf("%s: stale(%v, %v, %v) = %v, want %v", c.name, c.idle, c.early, c.usedEarly, got, c.want)
		}
	}
}

// setClock is a monotonic clock a test sets.
type setClock struct {
	clock.Clock
	now int64
}

func (c *setClock) Monotonic() int64 { return c.now }

// An event loop's probe sent early (Turn.Early) on a connection the first
// hop closed as idle goes again on a new connection when its idle time,
// counted to its slot, reaches staleAfter; the same probe sent on its
// slot fails, as it was sent sooner than that; so does one that went as
// early as the probe before it (the idle time is then the interval's).
func TestExchangeCountsIdleTimeToTheSlot(t *testing.T) {
	const ms = int64(time.Millisecond)
	for _, c := range []struct {
		name string
		// before is the early of a probe answered at 500 ms after the
		// warm-up (none: -1)
		before, early time.Duration
		reconnect     bool
	}{
		{"50ms early after the warm-up", -1, 50 * time.Millisecond, true},
		{"on its slot after the warm-up", -1, 0, false},
		{"50ms early after a probe 50ms early", 50 * time.Millisecond, 50 * time.Millisecond, false},
		{"50ms early after a probe on its slot", 0, 50 * time.Millisecond, true},
	} {
		clk := &setClock{Clock: clock.NewSystem()}
		x := NewExchange(Options{Target: "127.0.0.1:1", Source: "a", Timeout: time.Second, Clock: clk})
		reply := func(req []byte) Step {
			v, err := frame.Parse(req, frame.DefaultMaxFrameBytes, frame.MaxHopsLimit)
			if err != nil {
				t.Fatal(err)
			}
			rec := chaintest.EndRecord("z")
			return x.Reply(chaintest.Reply(v, req, frame.AppendHop(nil, &rec), 1), rxstamp.Stamp{At: clk.now})
		}
		if st := reply(x.Connected(time.Millisecond, nil, Turn{})); st.Result == nil || st.Result.Failure != nil {
			t.Fatalf("%s: warm-up: %+v", c.name, st)
		}
		if c.before >= 0 {
			clk.now = 500 * ms
			req := x.Begin(Turn{Mono: clk.now, Early: c.before})
			x.Sent(clk.now)
			if st := reply(req); st.Result == nil || st.Result.Failure != nil {
				t.Fatalf("%s: the probe before: %+v", c.name, st)
			}
		}
		clk.now += 980 * ms // an interval of 1.03 s, less the early
		x.Begin(Turn{Mono: clk.now, Early: c.early})
		x.Sent(clk.now)
		if st := x.ReadFailed(io.EOF); st.Reconnect != c.reconnect {
			t.Errorf("%s, found closed 980ms after the last reply: reconnect %v, want %v (%+v)", c.name, st.Reconnect, c.reconnect, st)
		}
	}
}

// A Session's probe sent early (ProbeEarly, a continuous runner's batch)
// counts its connection's idle time to its slot: 300 ms after the relay
// closed it as idle, a probe 900 ms before its slot goes again on a new
// connection; one sent on its slot fails.
func TestSessionCountsIdleTimeToTheSlot(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: z, Timeout: 150 * time.Millisecond})
	for _, c := range []struct {
		early time.Duration
		works bool
	}{{900 * time.Millisecond, true}, {0, false}} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		s, warm := Open(ctx, opts(b))
		if s == nil {
			cancel()
			t.Fatalf("open: %+v", warm.Failure)
		}
		time.Sleep(300 * time.Millisecond) // the relay closes the idle connection after 150 ms
		r := s.ProbeEarly(ctx, c.early)
		if r.Success != c.works {
			t.Errorf("%v early, 300ms after the warm-up: success %v, want %v (%+v)", c.early, r.Success, c.works, r.Failure)
		}
		s.Close()
		cancel()
	}
}
