package prober

import (
	"context"
	"math"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/relay"
)

func opts(target string) Options {
	return Options{Target: target, Source: "a", Count: 5, Interval: time.Millisecond, Timeout: 3 * time.Second}
}

func run(t *testing.T, o Options) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Run(ctx, o)
}

func segNames(r *Result) []string {
	var out []string
	for _, s := range r.Segments {
		out = append(out, s.From+">"+s.To)
	}
	return out
}

func TestChainEndToEnd(t *testing.T) { chaintest.ForEachEngine(t, testChainEndToEnd) }

func testChainEndToEnd(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "c", "z")
	r := run(t, opts(target))
	if !r.Success {
		t.Fatalf("probe failed: %+v", r.Failure)
	}
	if got, want := segNames(r), []string{"a>b", "b>c", "c>z"}; !slices.Equal(got, want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
	if got, want := r.HopNames(), []string{"a", "b", "c", "z"}; !slices.Equal(got, want) {
		t.Fatalf("hops %v, want %v", got, want)
	}
	if r.Probes != 5 || r.HopsReached != 3 {
		t.Errorf("probes %d hops reached %d, want 5 and 3", r.Probes, r.HopsReached)
	}
	for _, s := range r.Segments {
		if s.Samples != 5 || s.RTT.Min <= 0 || s.RTT.Min > s.RTT.Median || s.RTT.Median > s.RTT.Max {
			t.Errorf("segment %s>%s: bad rtt stats %+v over %d samples", s.From, s.To, s.RTT, s.Samples)
		}
		if s.Connect == nil || *s.Connect <= 0 {
			t.Errorf("segment %s>%s: no connect time", s.From, s.To)
		}
		if s.TCP == nil || s.TCP.SndMSS == 0 || s.TCP.PMTU == 0 || s.TCP.RTT <= 0 {
			t.Errorf("segment %s>%s: no TCP_INFO: %+v", s.From, s.To, s.TCP)
		}
		if s.OneWay != nil {
			t.Errorf("segment %s>%s: one-way delay without synchronised clocks", s.From, s.To)
		}
	}
	for _, h := range r.Hops {
		if h.Residence.Median <= 0 {
			t.Errorf("hop %s: no residence", h.Name)
		}
	}
	// The identity holds probe by probe on real stamps too.
	for _, smp := range r.Samples {
		var sum time.Duration
		for _, s := range smp.Breakdown.Segments {
			sum += s.RTT
		}
		for _, res := range smp.Breakdown.Residence[1:] {
			sum += res
		}
		if sum != smp.Breakdown.RoundTrip {
			t.Errorf("probe %d: Σ segments + residences %v != source round trip %v", smp.Seq, sum, smp.Breakdown.RoundTrip)
		}
	}
}

func TestIPv6AndHostnames(t *testing.T) { chaintest.ForEachEngine(t, testIPv6AndHostnames) }

func testIPv6AndHostnames(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback on this machine:", err)
	}
	ln.Close()
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	_, port, _ := net.SplitHostPort(z)
	c := chaintest.StartRelay(t, relay.Config{Name: "c", ForwardTo: net.JoinHostPort("localhost", port)})
	srv := chaintest.New(t, relay.Config{Name: "b", ForwardTo: c})
	ln6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln6) }()
	defer func() { cancel(); <-done }()
	r := run(t, opts(ln6.Addr().String()))
	if !r.Success || !strings.HasPrefix(ln6.Addr().String(), "[::1]:") {
		t.Fatalf("probe over %s failed: %+v", ln6.Addr(), r.Failure)
	}
}

// within reports whether got is within max(0.3 ms, 3 %) of want.
// proxyDelay is what the delaying proxy in front of c adds to a round trip.
const proxyDelay = 20 * time.Millisecond

// bracketed reports whether a segment's rtt lies between what the proxy
// adds (the physical floor: the segment cannot be faster) and the plain
// echo through the same proxy, which carries the echo server's and the
// test's own scheduling on top (on a busy machine, more than the
// segment, which excludes the hops' user-space time), with the tolerance
// of within.
func bracketed(got, echo float64) bool {
	tol := max(0.0003, 0.03*echo)
	return got >= proxyDelay.Seconds() && got <= echo+tol
}

func within(got, want float64) bool {
	tol := max(0.0003, 0.03*want)
	return got >= want-tol && got <= want+tol
}

// echoConn is a plain echo connection through the delaying proxy: the
// reference a segment's delay is compared with.
type echoConn struct {
	c   net.Conn
	msg []byte
	buf []byte
}

func (e *echoConn) roundTrip(t *testing.T) time.Duration {
	t.Helper()
	t0 := time.Now()
	if _, err := e.c.Write(e.msg); err != nil {
		t.Fatal(err)
	}
	for got := 0; got < len(e.msg); {
		k, err := e.c.Read(e.buf[got:])
		if err != nil {
			t.Fatal(err)
		}
		got += k
	}
	return time.Since(t0)
}

// delayedChain is a→b→[proxy]→c→z with 10 ms each way on b→c, and a plain
// echo connection through the same proxy instance.
func delayedChain(t *testing.T, configure func(name string, cfg *relay.Config)) (string, *echoConn) {
	var ref *echoConn
	target := chaintest.Chain(t, chaintest.ChainOptions{
		Configure: configure,
		Front: func(name, addr string) string {
			if name != "c" {
				return addr
			}
			p := chaintest.DelayProxy(t, chaintest.Echo(t), proxyDelay/2, proxyDelay/2)
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			ref = &echoConn{c: c, msg: make([]byte, 200), buf: make([]byte, 200)}
			ref.roundTrip(t) // the connection now exists; new ones go to c
			p.SetTarget(addr)
			return p.Addr()
		},
	}, "b", "c", "z")
	return target, ref
}

// measureInterleaved alternates probe runs and plain echoes, so that load
// on the machine affects both alike, and returns every sample of every
// segment and of the echo.
func measureInterleaved(t *testing.T, o Options, ref *echoConn, rounds int) (map[string][]time.Duration, []time.Duration, *Result) {
	t.Helper()
	segs := map[string][]time.Duration{}
	var echoes []time.Duration
	var last *Result
	for i := 0; i < rounds; i++ {
		r := run(t, o)
		if !r.Success {
			t.Fatalf("probe failed: %+v", r.Failure)
		}
		for _, smp := range r.Samples {
			if smp.Warmup {
				continue
			}
			for _, seg := range smp.Breakdown.Segments {
				key := smp.Records[seg.From].Name + ">" + smp.Records[seg.To].Name
				segs[key] = append(segs[key], seg.RTT)
			}
		}
		for k := 0; k < o.Count; k++ {
			echoes = append(echoes, ref.roundTrip(t))
		}
		last = r
	}
	return segs, echoes, last
}

func median(d []time.Duration) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2].Seconds()
}

func TestDelayLandsOnItsSegment(t *testing.T) { chaintest.ForEachEngine(t, testDelayLandsOnItsSegment) }

func testDelayLandsOnItsSegment(t *testing.T) {
	target, ref := delayedChain(t, nil)
	o := opts(target)
	segs, echoes, last := measureInterleaved(t, o, ref, 6)
	want, got := median(echoes), median(segs["b>c"])
	if !bracketed(got, want) {
		t.Errorf("b→c median rtt %.6fs, plain echo through the same proxy %.6fs: not between the proxy's %v and the echo + max(0.3ms, 3%%)", got, want, proxyDelay)
	}
	if !last.Segment("b", "c").Slowest {
		t.Errorf("b→c is not marked slowest: %+v", last.Segments)
	}
	for _, key := range []string{"a>b", "c>z"} {
		if m := median(segs[key]); m > got/4 {
			t.Errorf("segment %s median %.6fs, over a quarter of the delayed b→c (%.6fs)", key, m, got)
		}
	}
	t.Logf("b→c %.6fs vs plain echo %.6fs; a→b %.6fs, c→z %.6fs", got, want, median(segs["a>b"]), median(segs["c>z"]))
}

func TestClockSkewLeavesSegmentsUnchanged(t *testing.T) {
	chaintest.ForEachEngine(t, testClockSkewLeavesSegmentsUnchanged)
}

func testClockSkewLeavesSegmentsUnchanged(t *testing.T) {
	synced := clock.Sync{Synced: true, EstErrorMicros: 100, MaxErrorMicros: 200}
	for _, tc := range []struct {
		name   string
		skew   time.Duration
		synced bool
	}{
		{"plus 10s", 10 * time.Second, false},
		{"minus 10s", -10 * time.Second, false},
		{"synced, no skew", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := clock.NewSystem()
			var state *clock.Sync
			if tc.synced {
				state = &synced
			}
			target, ref := delayedChain(t, func(name string, cfg *relay.Config) {
				skew := tc.skew
				if name == "c" {
					skew = -skew // b and c disagree by 20 s
				}
				cfg.Clock = clock.Skewed{Base: base, Offset: skew, State: state}
			})
			o := opts(target)
			o.Clock = clock.Skewed{Base: base, State: state}
			segs, echoes, r := measureInterleaved(t, o, ref, 4)
			checkSkewDidNotLeak(t, segs, median(echoes))
			checkOneWay(t, r, tc.synced, median(echoes))
		})
	}
}

// checkSkewDidNotLeak: b→c (delayed) measures what a plain echo through
// the same delay measured (want), and no other segment is near a
// skew of seconds.
func checkSkewDidNotLeak(t *testing.T, segs map[string][]time.Duration, want float64) {
	t.Helper()
	if got := median(segs["b>c"]); !bracketed(got, want) {
		t.Errorf("b→c median %.6fs with skewed clocks, plain echo %.6fs", got, want)
	}
	for key, samples := range segs {
		if key == "b>c" {
			continue
		}
		// A leaked skew would be seconds: the 20 ms segment is the
		// slowest, and nothing is near the skew.
		if m, mx := median(samples), slices.Max(samples); m > want/4 || mx > time.Second {
			t.Errorf("segment %s median %.6fs, max %v: skew leaked into the arithmetic", key, m, mx)
		}
	}
}

// checkOneWay: one-way delays exist exactly when clocks are synchronised,
// and then b→c's halves add up to its rtt with both ends' error bounds.
func checkOneWay(t *testing.T, r *Result, synced bool, want float64) {
	t.Helper()
	for _, s := range r.Segments {
		if (s.OneWay != nil) != synced {
			t.Fatalf("segment %s→%s one-way present %v, want %v", s.From, s.To, s.OneWay != nil, synced)
		}
	}
	if !synced {
		return
	}
	ow := r.Segment("b", "c").OneWay
	if math.Abs(ow.Forward-ow.Return) > 0.002 || !within(ow.Forward+ow.Return, r.Segment("b", "c").RTT.Median) || ow.ErrorBound != 0.0004 {
		t.Errorf("b→c one-way %+v: want two halves of about %.6fs and bound 0.0004s", *ow, want/2)
	}
}

func TestBrokenChain(t *testing.T) { chaintest.ForEachEngine(t, testBrokenChain) }

func testBrokenChain(t *testing.T) {
	tests := []struct {
		name       string
		end        func(t testing.TB) string
		wantReason peer.Reason
	}{
		{"end refuses", chaintest.FreeAddr, peer.ReasonRefused},
		{"end hangs", chaintest.Silent, peer.ReasonTimeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			end := tc.end(t)
			c := chaintest.StartRelay(t, relay.Config{Name: "c", ForwardTo: end})
			b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: c})
			o := opts(b)
			o.Timeout = 2 * time.Second
			start := time.Now()
			r := run(t, o)
			took := time.Since(start)
			if r.Success || r.Failure == nil {
				t.Fatalf("probe through a broken chain succeeded: %+v", r)
			}
			f := r.Failure
			if f.From != "c" || f.To != end || f.Reason != tc.wantReason.String() {
				t.Errorf("failure %+v, want c → %s (%s)", f, end, tc.wantReason)
			}
			if took > o.Timeout {
				t.Errorf("failure reported after %v, beyond the %v timeout", took, o.Timeout)
			}
			for _, seg := range []string{"a", "b"} {
				s := r.Segments[slices.IndexFunc(r.Segments, func(s SegmentResult) bool { return s.From == seg })]
				if s.Samples == 0 || s.RTT.Median <= 0 {
					t.Errorf("segment %s→%s before the break has no rtt: %+v", s.From, s.To, s)
				}
			}
		})
	}
}

func TestBrokenChainNamesKnownHop(t *testing.T) {
	chaintest.ForEachEngine(t, testBrokenChainNamesKnownHop)
}

func testBrokenChainNamesKnownHop(t *testing.T) {
	zCfg := relay.Config{Name: "z"}
	zAddr := chaintest.FreeAddr(t)
	ln, err := net.Listen("tcp", zAddr)
	if err != nil {
		t.Skip("port taken meanwhile:", err)
	}
	srv := chaintest.New(t, zCfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln) }()
	c := chaintest.StartRelay(t, relay.Config{Name: "c", ForwardTo: zAddr})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: c})
	if r := run(t, opts(b)); !r.Success {
		t.Fatalf("healthy chain failed: %+v", r.Failure)
	}
	cancel()
	<-done
	r := run(t, opts(b))
	if r.Failure == nil || r.Failure.From != "c" || r.Failure.To != "z" || r.Failure.Reason != "refused" {
		t.Fatalf("after z stopped: failure %+v, want c → z (refused), z named from its earlier replies", r.Failure)
	}
}

func TestFirstHopUnreachable(t *testing.T) {
	addr := chaintest.FreeAddr(t)
	r := run(t, opts(addr))
	if r.Failure == nil || r.Failure.From != "a" || r.Failure.To != addr || r.Failure.Reason != "refused" {
		t.Fatalf("failure %+v, want a → %s refused", r.Failure, addr)
	}
	if len(r.Segments) != 1 || r.Segments[0].From != "a" {
		t.Errorf("segments %+v, want the failed one listed", r.Segments)
	}
}

func TestLoopAndHopLimit(t *testing.T) { chaintest.ForEachEngine(t, testLoopAndHopLimit) }

func testLoopAndHopLimit(t *testing.T) {
	t.Run("loop", func(t *testing.T) {
		// b → c → b: c forwards back to b.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c := chaintest.StartRelay(t, relay.Config{Name: "c", ForwardTo: ln.Addr().String()})
		srv := chaintest.New(t, relay.Config{Name: "b", ForwardTo: c})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); srv.Serve(ctx, ln) }()
		defer func() { cancel(); <-done }()
		r := run(t, opts(ln.Addr().String()))
		if r.Failure == nil || r.Failure.Reason != "loop" || r.Failure.From != "c" || r.Failure.To != "b" {
			t.Fatalf("failure %+v, want c → b (loop)", r.Failure)
		}
		if !strings.Contains(r.Failure.Message, "loop") {
			t.Errorf("message %q does not say loop", r.Failure.Message)
		}
	})
	t.Run("too many hops", func(t *testing.T) {
		target := chaintest.Chain(t, chaintest.ChainOptions{Configure: func(name string, cfg *relay.Config) {
			if name == "d" {
				cfg.MaxHops = 3
			}
		}}, "b", "c", "d", "z")
		r := run(t, opts(target))
		if r.Failure == nil || r.Failure.Reason != "too_many_hops" || r.Failure.From != "c" || r.Failure.To != "d" {
			t.Fatalf("failure %+v, want c → d (too_many_hops)", r.Failure)
		}
	})
}

func TestAuth(t *testing.T) { chaintest.ForEachEngine(t, testAuth) }

func testAuth(t *testing.T) {
	key := frame.Keys{[]byte("0123456789abcdef0123456789abcdef")}
	other := frame.Keys{[]byte("fedcba9876543210fedcba9876543210")}
	tests := []struct {
		name     string
		source   frame.Keys
		cKeys    frame.Keys
		wantFail string // "" = success, else "from>to reason"
	}{
		{"signed chain", key, key, ""},
		{"unsigned source", nil, key, "a>b auth"},
		{"forged source", other, key, "a>b auth"},
		{"hop with another key", key, other, "b>c auth"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			target := chaintest.Chain(t, chaintest.ChainOptions{Template: relay.Config{Keys: key}, Configure: func(name string, cfg *relay.Config) {
				if name == "c" {
					cfg.Keys = tc.cKeys
				}
			}}, "b", "c", "z")
			o := opts(target)
			o.Keys = tc.source
			r := run(t, o)
			got := ""
			if r.Failure != nil {
				got = r.Failure.From + ">" + r.Failure.To + " " + r.Failure.Reason
			}
			if got != tc.wantFail {
				t.Fatalf("got failure %q (%+v), want %q", got, r.Failure, tc.wantFail)
			}
		})
	}
}

func TestRotatedKeys(t *testing.T) { chaintest.ForEachEngine(t, testRotatedKeys) }

func testRotatedKeys(t *testing.T) {
	old := []byte("old-key-0123456789abcdef")
	next := []byte("new-key-0123456789abcdef")
	// Mid-rollover: b signs with the new key and still accepts the old one;
	// c and z have not moved yet.
	target := chaintest.Chain(t, chaintest.ChainOptions{Configure: func(name string, cfg *relay.Config) {
		cfg.Keys = frame.Keys{old, next}
		if name == "b" {
			cfg.Keys = frame.Keys{next, old}
		}
	}}, "b", "c", "z")
	for _, src := range []frame.Keys{{old}, {next}} {
		o := opts(target)
		o.Keys = frame.Keys{src[0], old, next}
		if r := run(t, o); !r.Success {
			t.Fatalf("source signing with %q: %+v", src[0], r.Failure)
		}
	}
}

func TestRemovePerfHeaders(t *testing.T) { chaintest.ForEachEngine(t, testRemovePerfHeaders) }

func testRemovePerfHeaders(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{Configure: func(name string, cfg *relay.Config) {
		cfg.RemovePerfHeaders = name == "c"
	}}, "b", "c", "d", "z")
	r := run(t, opts(target))
	if !r.Success {
		t.Fatalf("probe failed: %+v", r.Failure)
	}
	if got, want := segNames(r), []string{"a>b", "b>c", "c>" + HiddenHop}; !slices.Equal(got, want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
	if !r.Stripped || r.HopsReached != 2 {
		t.Errorf("stripped %v hops reached %d, want true and 2", r.Stripped, r.HopsReached)
	}
}

func TestPayloadBlackHole(t *testing.T) { chaintest.ForEachEngine(t, testPayloadBlackHole) }

func testPayloadBlackHole(t *testing.T) {
	var p interface{ SetBlackHole(int) }
	target := chaintest.Chain(t, chaintest.ChainOptions{Front: func(name, addr string) string {
		if name != "z" {
			return addr
		}
		px := chaintest.DelayProxy(t, addr, 0, 0)
		p = px
		return px.Addr()
	}}, "b", "c", "z")
	p.SetBlackHole(1400)
	o := opts(target)
	o.Timeout = 2 * time.Second
	if r := run(t, o); !r.Success {
		t.Fatalf("small probes should pass a black hole for large packets: %+v", r.Failure)
	}
	o.PayloadBytes = 4000
	r := run(t, o)
	if r.Failure == nil || r.Failure.From != "c" || r.Failure.To != "z" || r.Failure.Reason != "timeout" {
		t.Fatalf("failure %+v, want c → z (timeout) for 4000-byte probes", r.Failure)
	}
}

func TestOptionsValidate(t *testing.T) {
	good := opts("127.0.0.1:9000")
	tests := []struct {
		name   string
		mutate func(*Options)
		want   string
	}{
		{"good", func(*Options) {}, ""},
		{"no port", func(o *Options) { o.Target = "127.0.0.1" }, "target"},
		{"zero count", func(o *Options) { o.Count = 0 }, "probe count"},
		{"negative payload", func(o *Options) { o.PayloadBytes = -1 }, "payload"},
		{"payload over frame", func(o *Options) { o.PayloadBytes, o.MaxFrameBytes = frame.MaxPayloadBytes, 65536 }, "at most"},
		{"payload over the most", func(o *Options) { o.PayloadBytes = frame.MaxPayloadBytes + 1 }, "out of range"},
		{"bad source", func(o *Options) { o.Source = "a b" }, "source name"},
		{"zero timeout", func(o *Options) { o.Timeout = 0 }, "timeout"},
	}
	for _, tc := range tests {
		o := good
		tc.mutate(&o)
		err := o.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: Validate() = %v, want error containing %q", tc.name, err, tc.want)
		}
	}
}

// resetter accepts connections, reads a little and resets them (RST).
func resetter(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Read(make([]byte, 64))
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func TestDownstreamReset(t *testing.T) { chaintest.ForEachEngine(t, testDownstreamReset) }

func testDownstreamReset(t *testing.T) {
	end := resetter(t)
	c := chaintest.StartRelay(t, relay.Config{Name: "c", ForwardTo: end})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: c})
	r := run(t, opts(b))
	if r.Failure == nil || r.Failure.From != "c" || r.Failure.To != end || r.Failure.Reason != "reset" {
		t.Fatalf("failure %+v, want c -> %s (reset)", r.Failure, end)
	}
	if !strings.Contains(r.Failure.Message, "connection reset") {
		t.Errorf("message %q does not say the connection was reset", r.Failure.Message)
	}
}
