package prober

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
	"github.com/subsegment/subsegment_exporter/relay"
	"github.com/subsegment/subsegment_exporter/relay/reflector"
)

var stampKeys = frame.Keys{[]byte("0123456789abcdef0123456789abcdef")}

// startReflector runs the relay's reflector on a loopback port.
func startReflector(t *testing.T, cfg reflector.Config) *reflector.Reflector {
	t.Helper()
	cfg.Address = "127.0.0.1:0"
	r, err := reflector.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

var allTLVs = stamp.TLVRequest{DirectMeasurement: true, ClassOfService: true, ReturnDSCP: 46, TimestampInfo: true}

func stampOpts(target string, so STAMPOptions) Options {
	o := opts(target)
	o.Count = 10
	o.STAMP = &so
	return o
}

// A run against a real reflector: every packet measured, the segment
// and the reflector's hop in the model every output reads, the loss and
// DSCP per direction beside them, one-way delays where both clocks say
// they are synchronised.
func TestSTAMPRun(t *testing.T) {
	synced := clock.Sync{Synced: true, EstErrorMicros: 50, MaxErrorMicros: 1000}
	skew := clock.Skewed{Base: clock.NewSystem(), State: &synced}
	for _, tc := range []struct {
		name   string
		clocks bool
		cfg    reflector.Config
		so     STAMPOptions
	}{
		{"unauthenticated", false, reflector.Config{}, STAMPOptions{DSCP: 46, TLVs: allTLVs}},
		{"synced clocks", true, reflector.Config{Clock: skew}, STAMPOptions{DSCP: 46, TLVs: allTLVs}},
		{"authenticated", false, reflector.Config{Keys: stampKeys}, STAMPOptions{DSCP: 46, TLVs: allTLVs, Authenticated: true, PacketBytes: 400}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startReflector(t, tc.cfg)
			o := stampOpts(r.Addr().String(), tc.so)
			o.Keys = stampKeys
			if tc.clocks {
				o.Clock = skew
			}
			res := run(t, o)
			if !res.Success || res.Probes != 10 || res.HopsReached != 1 || len(res.Hops) != 2 || len(res.Segments) != 1 {
				t.Fatalf("result %+v failure %+v", res, res.Failure)
			}
			seg, refl := res.Segments[0], res.Hops[1]
			if seg.From != "a" || seg.To != "127.0.0.1" || refl.Name != "127.0.0.1" || refl.ID != hexID(stamp.HopID(r.Addr().String())) {
				t.Errorf("names: segment %s -> %s, hop %s %s", seg.From, seg.To, refl.Name, refl.ID)
			}
			if seg.Samples != 10 || seg.RTT.Median <= 0 || seg.RTT.Max > 1 || refl.Residence.Median <= 0 || !refl.KernelTimestamps || !res.Hops[0].KernelTimestamps {
				t.Errorf("times: segment %+v hop %+v source %+v", seg, refl, res.Hops[0])
			}
			checkNoLossSameDSCP(t, seg)
			checkSTAMPOneWay(t, seg, refl, tc.clocks)
		})
	}
}

// checkNoLossSameDSCP: a clean loopback run lost nothing in either
// direction and kept DSCP 46 both ways.
func checkNoLossSameDSCP(t *testing.T, seg SegmentResult) {
	t.Helper()
	l := seg.Loss
	if l == nil || l.Sent != 11 || l.Received != 11 || l.Lost != 0 || !l.ByDirection || l.Forward == nil || l.Forward.Lost != 0 || l.Unknown != 0 {
		t.Errorf("loss %+v", l)
	}
	d := seg.DSCP
	if d == nil || d.Sent != 46 || d.AtReflector == nil || *d.AtReflector != 46 || d.Returned == nil || *d.Returned != 46 ||
		d.ForwardRemarked == nil || *d.ForwardRemarked || d.ReturnRemarked == nil || *d.ReturnRemarked {
		t.Errorf("dscp %+v", d)
	}
}

// checkSTAMPOneWay: one-way delays exactly when both clocks are
// synchronised, bounded by both ends' errors and within the rtt.
func checkSTAMPOneWay(t *testing.T, seg SegmentResult, refl HopResult, clocks bool) {
	t.Helper()
	if (seg.OneWay != nil) != clocks || refl.ClockSynced != clocks {
		t.Errorf("one-way %+v with clocks synchronised: %v (reflector synced %v)", seg.OneWay, clocks, refl.ClockSynced)
	}
	if ow := seg.OneWay; ow != nil && (ow.ErrorBound < 0.002 || ow.Forward+ow.Return > seg.RTT.Max+1e-9) {
		t.Errorf("one-way %+v: the bound is both ends' errors (2 ms), the delays within the rtt", ow)
	}
}

// The reflector's name: the module's, else the stamp:// target's, else
// the host.
func TestSTAMPNames(t *testing.T) {
	r := startReflector(t, reflector.Config{})
	addr := r.Addr().String()
	for _, tc := range []struct {
		target, name, want string
	}{
		{addr, "", "127.0.0.1"},
		{"stamp://" + addr + "?name=r1", "", "r1"},
		{"stamp://" + addr + "?name=r1", "edge", "edge"},
		{addr, "edge", "edge"},
	} {
		o := stampOpts(tc.target, STAMPOptions{Name: tc.name})
		o.Count = 1
		res := run(t, o)
		if !res.Success || len(res.Hops) != 2 || res.Hops[1].Name != tc.want {
			t.Errorf("%s name %q: hops %v (%+v)", tc.target, tc.name, res.HopNames(), res.Failure)
		}
	}
}

// A fake reflector built from the RFC's rules (stamp.Reflect), stateful,
// that loses the packets fate says to lose on the way in (forward) or out
// (return), and can move T2 back to claim a longer residence than the
// sender measured.
type fakeReflector struct {
	conn  *net.UDPConn
	fate  func(n int) string
	claim time.Duration
	// auth makes it an authenticated reflector; mangle rewrites the
	// finished reply of the n-th request before it is sent (a lying or
	// broken reflector, or someone on the path).
	auth   *stamp.Auth
	mangle func(n int, reply []byte) []byte
	mu     sync.Mutex
	got    int
}

func startFake(t *testing.T, fate func(n int) string, claim time.Duration) *fakeReflector {
	t.Helper()
	return startFakeWith(t, &fakeReflector{fate: fate, claim: claim})
}

func startFakeWith(t *testing.T, f *fakeReflector) *fakeReflector {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f.conn = c
	done := make(chan struct{})
	go func() { defer close(done); f.serve() }()
	t.Cleanup(func() { c.Close(); <-done })
	return f
}

func (f *fakeReflector) addr() string { return f.conn.LocalAddr().String() }

func (f *fakeReflector) serve() {
	buf := make([]byte, 2048)
	var rx, tx, seq uint32
	for n := 0; ; n++ {
		k, from, err := f.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		f.mu.Lock()
		f.got++
		f.mu.Unlock()
		fate := "reply"
		if f.fate != nil {
			fate = f.fate(n)
		}
		if fate == "forward" {
			continue // never reached the reflector
		}
		rx++
		tx++
		pkt := buf[:k]
		now := time.Now().UnixNano()
		req := stamp.Request{Mode: stamp.Unauthenticated, RxTime: now - int64(f.claim), TTL: 64, Src: from,
			Dst: netip.MustParseAddrPort(f.addr()), Stateful: true, ReflectorSeq: seq, RxCount: rx, TxCount: tx}
		if f.auth != nil {
			req.Mode, req.Auth = stamp.Authenticated, f.auth
		}
		seq++
		var rep stamp.Reply
		if stamp.Reflect(pkt, &req, &rep) != nil {
			continue
		}
		stamp.Finish(pkt, &rep, time.Now().UnixNano())
		if fate == "return" {
			continue // reflected, lost on the way back
		}
		if f.mangle != nil {
			pkt = f.mangle(n, pkt)
		}
		_, _ = f.conn.WriteToUDPAddrPort(pkt, from)
	}
}

// Loss on one direction, then the other: each named by the reflector's
// counters; the last packet's fate is not known when it is lost.
func TestSTAMPLossPerDirection(t *testing.T) {
	fates := map[int]string{2: "forward", 3: "forward", 5: "return", 9: "forward"}
	f := startFake(t, func(n int) string {
		if v, ok := fates[n]; ok {
			return v
		}
		return "reply"
	}, 0)
	o := stampOpts(f.addr(), STAMPOptions{TLVs: stamp.TLVRequest{DirectMeasurement: true}, PacketTimeout: 100 * time.Millisecond})
	o.Count = 9 // packets 0 (warm-up) to 9: the last one lost forward
	res := run(t, o)
	if !res.Success || res.Probes != 5 {
		t.Fatalf("result %+v failure %+v", res, res.Failure)
	}
	l := res.Segments[0].Loss
	if l.Sent != 10 || l.Received != 6 || l.Lost != 4 || !l.ByDirection || l.Forward.Lost != 2 || l.Return.Lost != 1 || l.Unknown != 1 {
		t.Fatalf("loss %+v forward %+v return %+v", l, l.Forward, l.Return)
	}
	if l.Ratio != 0.4 || l.Forward.Ratio != 2.0/9 || l.Return.Ratio != 1.0/7 {
		t.Errorf("ratios %v %v %v", l.Ratio, l.Forward.Ratio, l.Return.Ratio)
	}
	// Without Direct Measurement: the total only, said so.
	o.STAMP = &STAMPOptions{PacketTimeout: 100 * time.Millisecond}
	f2 := startFake(t, func(n int) string {
		if n%3 == 2 {
			return "return"
		}
		return "reply"
	}, 0)
	o.Target = f2.addr()
	res = run(t, o)
	l = res.Segments[0].Loss
	if !res.Success || l.ByDirection || l.Forward != nil || l.Lost != 3 || l.Unknown != 3 {
		t.Fatalf("loss without counters %+v (%+v)", l, res.Failure)
	}
}

// Every packet lost: the run fails on the segment to the reflector,
// reason timeout; authenticated, reason auth (a reflector with another
// key discards every packet), with the reflector counting its refusals.
func TestSTAMPSilence(t *testing.T) {
	f := startFake(t, func(int) string { return "forward" }, 0)
	o := stampOpts(f.addr(), STAMPOptions{PacketTimeout: 50 * time.Millisecond})
	o.Count = 3
	res := run(t, o)
	if res.Success || res.Failure == nil || res.Failure.Reason != "timeout" || res.Failure.From != "a" || res.Failure.To != "127.0.0.1" {
		t.Fatalf("failure %+v", res.Failure)
	}
	if l := res.Segments[0].Loss; l == nil || l.Sent != 4 || l.Lost != 4 {
		t.Errorf("loss %+v", l)
	}
	r := startReflector(t, reflector.Config{Keys: frame.Keys{[]byte("another key, not the sender's!!!")}})
	o = stampOpts(r.Addr().String(), STAMPOptions{Authenticated: true, PacketTimeout: 50 * time.Millisecond})
	o.Keys, o.Count = stampKeys, 3
	res = run(t, o)
	if res.Failure == nil || res.Failure.Reason != "auth" || !strings.Contains(res.Failure.Message, "another key") {
		t.Fatalf("failure %+v", res.Failure)
	}
	if got := r.Stats().Refused["auth"]; got != 4 {
		t.Errorf("the reflector refused %d packets for auth, want 4", got)
	}
	// The warm-up came back, no measured packet did: failed too.
	f2 := startFake(t, func(n int) string {
		if n == 0 {
			return "reply"
		}
		return "return"
	}, 0)
	o = stampOpts(f2.addr(), STAMPOptions{PacketTimeout: 50 * time.Millisecond})
	o.Count = 2
	res = run(t, o)
	if res.Success || res.Failure == nil || res.Failure.Reason != "timeout" || res.Segments[0].Loss.Lost != 2 {
		t.Fatalf("only the warm-up back: %+v", res.Failure)
	}
	// Nothing listens: refused.
	o = stampOpts(f.addr(), STAMPOptions{})
	f.conn.Close()
	res = run(t, o)
	if res.Failure == nil || res.Failure.Reason != peer.ReasonRefused.String() {
		t.Errorf("closed port: %+v", res.Failure)
	}
}

// A reflector that claims to have held a packet longer than the sender
// measured around it is refused by the same rule as any hop (bad_frame).
func TestSTAMPOverclaim(t *testing.T) {
	f := startFake(t, nil, 200*time.Millisecond)
	res := run(t, stampOpts(f.addr(), STAMPOptions{}))
	if res.Success || res.Failure == nil || res.Failure.Reason != "bad_frame" || !strings.Contains(res.Failure.Message, "T3 − T2") {
		t.Fatalf("failure %+v", res.Failure)
	}
	noNegativeSegments(t, res)
}

// A Session (continuous probing): one packet per Probe, each its own
// result; a loss named by a later packet's counters shows in that one's.
func TestSTAMPSession(t *testing.T) {
	f := startFake(t, func(n int) string {
		if n == 2 {
			return "forward"
		}
		return "reply"
	}, 0)
	o := stampOpts(f.addr(), STAMPOptions{TLVs: stamp.TLVRequest{DirectMeasurement: true}, PacketTimeout: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, warm := Open(ctx, o)
	if s == nil || warm.Failure != nil || warm.Segments[0].Loss.Sent != 1 {
		t.Fatalf("open: %+v", warm.Failure)
	}
	defer s.Close()
	var results []*Result
	for range 3 {
		results = append(results, s.Probe(ctx))
	}
	if !results[0].Success || results[1].Success || results[1].Failure.Reason != "timeout" || !results[2].Success {
		t.Fatalf("results: %+v %+v %+v", results[0].Failure, results[1].Failure, results[2].Failure)
	}
	l1, l2 := results[1].Segments[0].Loss, results[2].Segments[0].Loss
	if l1.Sent != 1 || l1.Lost != 1 || l2.Sent != 1 || l2.Lost != 0 || l2.Forward == nil || l2.Forward.Lost != 1 {
		t.Errorf("loss: %+v then %+v %+v", l1, l2, l2.Forward)
	}
}

// stampCounts is a relay's STAMPMetrics, for tests.
type stampCounts struct {
	mu                      sync.Mutex
	reflected, lost         int
	lostForward, lostReturn int64
}

func (c *stampCounts) STAMPPacket(reflected bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if reflected {
		c.reflected++
	} else {
		c.lost++
	}
}

func (c *stampCounts) STAMPLost(fwd, ret int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lostForward += fwd
	c.lostReturn += ret
}

// A chain a -> b -> r1 whose last hop is a STAMP reflector (b runs
// --forward-to stamp://): the reflector is the chain's last hop, its
// residence T3 − T2, the segment b -> r1 measured like any other; a lost
// packet fails its probe on b -> r1 (timeout), the next probe goes on,
// and b counts the loss, per direction once a reply names it.
func TestChainEndingAtSTAMPReflector(t *testing.T) {
	r := startReflector(t, reflector.Config{})
	counts := &stampCounts{}
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: "stamp://" + r.Addr().String() + "?name=r1", STAMPMetrics: counts})
	res := run(t, opts(b))
	if !res.Success || strings.Join(res.HopNames(), " ") != "a b r1" || strings.Join(segNames(res), " ") != "a>b b>r1" {
		t.Fatalf("result %v %v %+v", res.HopNames(), segNames(res), res.Failure)
	}
	last, r1 := res.Segment("b", "r1"), res.Hop("r1")
	if last.Samples != 5 || last.RTT.Median <= 0 || r1.Residence.Median <= 0 || !r1.KernelTimestamps || !r1.STAMP || r1.ID != hexID(stamp.HopID(r.Addr().String())) {
		t.Errorf("last segment %+v, reflector %+v", last, r1)
	}
	counts.mu.Lock()
	if counts.reflected != 6 || counts.lost != 0 {
		t.Errorf("b counted %d reflected, %d lost", counts.reflected, counts.lost)
	}
	counts.mu.Unlock()

	// The packet of the second measured probe is lost on the way in.
	f := startFake(t, func(n int) string {
		if n == 2 {
			return "forward"
		}
		return "reply"
	}, 0)
	counts = &stampCounts{}
	b = chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: "stamp://" + f.addr() + "?name=r1", STAMPMetrics: counts})
	o := opts(b)
	o.Timeout = 300 * time.Millisecond
	res = run(t, o)
	if res.Success || res.Failure == nil || res.Failure.From != "b" || res.Failure.To != "r1" || res.Failure.Reason != "timeout" ||
		!strings.Contains(res.Failure.Message, "was lost") || res.Probes != 1 {
		t.Fatalf("failure %+v after %d probes", res.Failure, res.Probes)
	}
	res = run(t, opts(b))
	if !res.Success {
		t.Fatalf("the chain after the loss: %+v", res.Failure)
	}
	counts.mu.Lock()
	defer counts.mu.Unlock()
	// One session for all of b's connections: the next scrape's first
	// reply names the loss.
	if counts.lost != 1 || counts.lostForward != 1 || counts.lostReturn != 0 {
		t.Errorf("b counted %d lost, named %d forward %d return", counts.lost, counts.lostForward, counts.lostReturn)
	}
}

// A relay with --remove-perf-headers in front of a reflector hides it as
// it hides relays.
func TestSTAMPNextStripped(t *testing.T) {
	r := startReflector(t, reflector.Config{})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: "stamp://" + r.Addr().String(), RemovePerfHeaders: true})
	res := run(t, opts(b))
	if !res.Success || !res.Stripped || strings.Join(res.HopNames(), " ") != "a b hidden" {
		t.Fatalf("result %v %+v", res.HopNames(), res.Failure)
	}
}
