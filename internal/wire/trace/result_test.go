package trace

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const ms = time.Millisecond

// hop is an answered TTL with these round trips (in ms).
func hop(ttl int, addr string, rtts ...float64) Hop {
	h := Hop{TTL: ttl, Sent: 3, Unreachable: -1}
	if addr == "" {
		return h
	}
	h.Address = netip.MustParseAddr(addr)
	for _, r := range rtts {
		h.RTTs = append(h.RTTs, time.Duration(r*float64(ms)))
	}
	h.Answered = len(rtts)
	return h
}

func TestHopStats(t *testing.T) {
	s, ok := hop(1, "10.0.0.1", 3, 1, 2).RTT()
	if !ok || s != (RTTStats{Min: 1 * ms, Median: 2 * ms, Max: 3 * ms}) {
		t.Errorf("odd: %+v", s)
	}
	s, _ = hop(1, "10.0.0.1", 4, 1).RTT()
	if s.Median != 2500*time.Microsecond {
		t.Errorf("even: median %v, want the mean of the middle two", s.Median)
	}
	if _, ok := hop(2, "").RTT(); ok {
		t.Error("an unanswered hop has round trips")
	}
	if l := hop(1, "10.0.0.1", 1).LossRatio(); l < 0.66 || l > 0.67 {
		t.Errorf("loss %v, want 2/3", l)
	}
	if (Hop{}).LossRatio() != 0 {
		t.Error("loss of a hop without probes")
	}
}

func TestFingerprint(t *testing.T) {
	a := &Result{Hops: []Hop{hop(1, "10.0.1.2", 1), hop(2, "10.0.2.2", 2), hop(3, "10.0.3.2", 3)}}
	lost := &Result{Hops: []Hop{hop(1, "10.0.1.2", 1), hop(2, ""), hop(3, "10.0.3.2", 3)}}
	other := &Result{Hops: []Hop{hop(1, "10.0.4.2", 1), hop(2, "10.0.2.2", 2), hop(3, "10.0.3.2", 3)}}
	longer := &Result{Hops: []Hop{hop(1, "10.0.1.2", 1), hop(2, "10.0.9.9", 2), hop(3, "10.0.2.2", 2), hop(4, "10.0.3.2", 3)}}
	slower := &Result{Hops: []Hop{hop(1, "10.0.1.2", 9), hop(2, "10.0.2.2", 9), hop(3, "10.0.3.2", 9)}}
	if a.Fingerprint() != slower.Fingerprint() {
		t.Error("round trips changed the fingerprint")
	}
	for name, r := range map[string]*Result{"a router replaced": other, "a router added": longer, "a router silent": lost} {
		if r.Fingerprint() == a.Fingerprint() {
			t.Errorf("%s: same fingerprint", name)
		}
	}
	if len(a.Fingerprint()) != 16 {
		t.Errorf("fingerprint %q", a.Fingerprint())
	}
	if s := lost.String(); !strings.Contains(s, "2 *") || !strings.Contains(s, "3 10.0.3.2 3.0ms") {
		t.Errorf("String: %q", s)
	}
}

// DelayStep finds where a delay first appears, and is not fooled by a
// router slow to answer, by loss, or by one probe slipping through a queue.
func TestDelayStep(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hops  []Hop
		ttl   int
		delay float64 // ms, 0 for none
	}{
		{"delay on the second link", []Hop{hop(1, "10.0.1.2", .1, .1, .2), hop(2, "10.0.2.2", 20.2, 20.3, 20.1), hop(3, "10.0.3.2", 20.3, 20.4, 20.3)}, 2, 20.1},
		{"a router slow to answer", []Hop{hop(1, "10.0.1.2", .1), hop(2, "10.0.2.2", 15, 16, 17), hop(3, "10.0.3.2", .3, .3, .4)}, 0, 0},
		{"delay on the first link", []Hop{hop(1, "10.0.1.2", 20, 20, 20), hop(2, "10.0.2.2", 20.1, 20.1, 20.1)}, 1, 20},
		{"a silent router before the delay", []Hop{hop(1, "10.0.1.2", .1), hop(2, ""), hop(3, "10.0.3.2", 20.1, 20.2, 20.2)}, 3, 20.1},
		{"a queue one probe slipped through", []Hop{hop(1, "10.0.1.2", .1), hop(2, "10.0.2.2", .2, 25, 26), hop(3, "10.0.3.2", .3, 25, 27)}, 2, 24.9},
		{"no delay", []Hop{hop(1, "10.0.1.2", .1), hop(2, "10.0.2.2", .2)}, 0, 0},
		{"nothing answered", []Hop{hop(1, ""), hop(2, "")}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Result{Hops: tc.hops}
			s, ok := r.DelayStep(10 * ms)
			if ok != (tc.ttl != 0) || (ok && (s.TTL != tc.ttl || (s.Delay-time.Duration(tc.delay*float64(ms))).Abs() > 10*time.Microsecond)) {
				t.Errorf("step %+v (found %v), want TTL %d +%vms", s, ok, tc.ttl, tc.delay)
			}
		})
	}
}

func TestOptions(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil || o.MaxTTL != 30 || o.Probes != 3 || o.Wait != time.Second || o.MaxSilent != 5 || o.FarEndSpacing != 550*ms {
		t.Errorf("defaults %+v, %v", o, err)
	}
	for _, bad := range []Options{{MaxTTL: 65}, {MaxTTL: -1}, {Probes: 11}, {Wait: -1}, {MaxSilent: -2}, {FarEndSpacing: -1}, {Method: "icmp"}} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	if _, err := NewTracer(Config{Rate: -1}); err == nil {
		t.Error("negative rate accepted")
	}
	if _, err := (&Tracer{}).Trace(context.Background(), nil, Options{}); !errors.Is(err, ErrNotTCP) {
		t.Errorf("nil conn: %v", err)
	}
}

func TestBucket(t *testing.T) {
	b := newBucket(10, 2)
	ctx := context.Background()
	start := time.Now()
	for range 3 {
		if err := b.wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 90*ms {
		t.Errorf("three tokens of a burst of two at 10/s in %v, want about 100ms", d)
	}
	short, cancel := context.WithTimeout(ctx, 20*ms)
	defer cancel()
	if err := b.wait(short); !errors.Is(err, errRate) {
		t.Errorf("a token due after the deadline: %v, want errRate at once", err)
	}
	if b.tokens < -0.01 {
		t.Errorf("a refused wait took a token (%v left)", b.tokens)
	}
}

// session is a trace's bookkeeping without sockets: answers matched to
// probes by identity or by time, and the far end's rate limit.
func testSession(method Method) *session {
	o, _ := Options{}.withDefaults()
	return &session{opts: o, method: method, base: 1000, first: []int{0},
		info:   connInfo{local: netip.MustParseAddrPort("10.0.1.1:40000"), remote: netip.MustParseAddrPort("10.0.3.2:9000")},
		probes: make([]probeRec, 0, 100)}
}

func (s *session) sendAt(ttl int, at time.Time) {
	for len(s.first) <= ttl {
		s.first = append(s.first, len(s.probes))
	}
	s.probes = append(s.probes, probeRec{ttl: ttl, sent: at})
}

func TestSessionMatching(t *testing.T) {
	t0 := time.Now()
	router, far := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.3.2")
	s := testSession(MethodTCP)
	for i := range 3 {
		s.sendAt(1, t0.Add(time.Duration(i)*time.Microsecond))
	}
	s.take(answer{from: router, kind: kindTimeExceeded, id: 1001, hasID: true, at: t0.Add(ms)}, 1)
	s.take(answer{from: router, kind: kindTimeExceeded, id: 1001, hasID: true, at: t0.Add(2 * ms)}, 1) // duplicate
	s.take(answer{from: router, kind: kindTimeExceeded, id: 7, hasID: true, at: t0.Add(ms)}, 1)        // not ours
	if st := s.status(1); st.answered != 1 || st.done {
		t.Fatalf("TTL 1: %+v, want one answer", st)
	}
	if s.probes[1].rtt != ms-time.Microsecond {
		t.Errorf("rtt %v", s.probes[1].rtt)
	}
	// TTL 2 reaches the far end: it answers the first SYN, not the next
	// two sent within its rate limit, which then do not count.
	t1 := t0.Add(10 * ms)
	for i := range 3 {
		s.sendAt(2, t1.Add(time.Duration(i)*time.Microsecond))
	}
	s.take(answer{from: far, kind: kindFarEnd, at: t1.Add(ms)}, 2)
	st := s.status(2)
	if !st.farEnd || st.counted != 1 || !st.done || !s.probes[3].answered {
		t.Fatalf("TTL 2: %+v, want the first probe answered by the far end and the other two not counted", st)
	}
	// A spaced probe counts, and an answer without identity goes to it,
	// not to the probes the far end could not answer.
	s.sendAt(2, t1.Add(600*ms))
	s.take(answer{from: far, kind: kindFarEnd, at: t1.Add(601 * ms)}, 2)
	if !s.probes[6].answered || s.probes[4].answered || s.probes[6].rtt != ms {
		t.Errorf("spaced probe: %+v", s.probes[6])
	}
	// An ICMP error with identity overrides an answer guessed by time, and
	// shows that no probe of its TTL reached the far end: every guess of
	// the TTL is forgotten (a busy connection's duplicate ACK is not the
	// far end's answer), and no later guess is taken for it.
	s.take(answer{from: router, kind: kindTimeExceeded, id: 1006, hasID: true, at: t1.Add(602 * ms)}, 2)
	if s.probes[6].guessed || s.probes[6].from != router {
		t.Errorf("guess not overridden: %+v", s.probes[6])
	}
	if s.probes[3].answered {
		t.Errorf("the guessed far-end answer of TTL 2 survived a quoted time exceeded: %+v", s.probes[3])
	}
	s.take(answer{from: far, kind: kindFarEnd, at: t1.Add(603 * ms)}, 2)
	if st := s.status(2); st.farEnd {
		t.Errorf("TTL 2 took a far-end guess after a router expired one of its probes: %+v", st)
	}
	hops := s.hops()
	if len(hops) != 2 || hops[0].Answered != 1 || hops[0].Sent != 3 || hops[1].FarEnd || hops[1].Address != router {
		t.Errorf("hops %+v", hops)
	}
}

// A duplicate ACK of a busy connection that arrives while a router's TTL
// is probed is taken for the far end's answer only until the router's
// quoted time exceeded arrives; the other order refuses it at once.
func TestQuotedExpiryBeatsAGuessInEitherOrder(t *testing.T) {
	t0 := time.Now()
	router, far := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.3.2")
	for _, guessFirst := range []bool{true, false} {
		s := testSession(MethodTCP)
		for i := range 3 {
			s.sendAt(1, t0.Add(time.Duration(i)*time.Microsecond))
		}
		guess := answer{from: far, kind: kindFarEnd, at: t0.Add(ms / 2)}
		expiry := answer{from: router, kind: kindTimeExceeded, id: 1001, hasID: true, at: t0.Add(ms)}
		if guessFirst {
			s.take(guess, 1)
			s.take(expiry, 1)
		} else {
			s.take(expiry, 1)
			s.take(guess, 1)
		}
		if st := s.status(1); st.farEnd || st.answered != 1 {
			t.Errorf("guess first %v: TTL 1 %+v, want only the router's answer", guessFirst, st)
		}
	}
}

// UDP: an answer without identity (a router quoting too little) goes to
// the earliest unanswered probe of the TTL being probed.
func TestSessionUDPGuess(t *testing.T) {
	t0 := time.Now()
	s := testSession(MethodUDP)
	s.sendAt(1, t0)
	s.sendAt(1, t0.Add(ms))
	s.take(answer{from: netip.MustParseAddr("10.0.1.2"), kind: kindTimeExceeded, at: t0.Add(2 * ms)}, 1)
	if !s.probes[0].answered || s.probes[1].answered || s.probes[0].rtt != 2*ms {
		t.Errorf("%+v", s.probes)
	}
	// An answer that came before a probe was sent is not its answer.
	s.take(answer{from: netip.MustParseAddr("10.0.1.2"), kind: kindTimeExceeded, at: t0.Add(ms / 2)}, 1)
	if s.probes[1].answered {
		t.Error("an answer from before the probe was matched to it")
	}
}
