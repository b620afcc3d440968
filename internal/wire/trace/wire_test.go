package trace

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// The wire form of a result is what a relay sends: it must be accepted
// by every receiver's check, and say what the result says.
func TestWire(t *testing.T) {
	far := hop(3, "10.61.3.2", 20.1, 20.2, 20.3)
	far.FarEnd = true
	r := &Result{Probes: 3, MaxTTL: 30, Stop: StopReached, Reached: true, Packets: 9, Duration: 1200 * ms,
		Flow: Flow{Protocol: MethodTCP, Reason: "tcp: CAP_NET_RAW", Route: "via 10.61.1.2 dev eth1",
			Local: netip.MustParseAddrPort("10.61.1.1:40000"), Remote: netip.MustParseAddrPort("10.61.3.2:9000")},
		Hops: []Hop{hop(1, "10.61.1.2", 0.1, 0.2, 0.3), hop(2, ""), far}}
	r.Hops[0].Others = []netip.Addr{netip.MustParseAddr("10.61.4.2")}
	p := r.Wire()
	rec := frame.HopRecord{ID: 1, Name: "b", Path: p}
	recs, err := frame.ParseRecords(frame.AppendHop(nil, &rec), 1)
	if err != nil {
		t.Fatalf("the wire form is refused: %v", err)
	}
	got := recs[0].Hop.Path
	if got.Method != frame.PathTCP || got.Status != frame.PathReached || got.Probes != 3 || got.MaxTTL != 30 || got.Packets != 9 || len(got.Hops) != 3 {
		t.Fatalf("path %+v", got)
	}
	if h := got.Hops[0]; h.Median != 200*time.Microsecond || h.Flags != frame.PathHopOthers || h.Answered != 3 {
		t.Errorf("TTL 1 %+v", h)
	}
	if h := got.Hops[1]; h.Answered != 0 || h.Address.IsValid() || h.LossRatio() != 1 {
		t.Errorf("silent TTL 2 %+v", h)
	}
	if h := got.Hops[2]; h.Flags != frame.PathHopFarEnd || h.Address.String() != "10.61.3.2" {
		t.Errorf("TTL 3 %+v", h)
	}
	step, ok := PathDelayStep(got)
	if !ok || step.TTL != 3 || step.Delay < 19*ms {
		t.Errorf("delay step %+v, %v: want TTL 3, about 20 ms", step, ok)
	}
	// A trace that could not run is a failed section with the reason.
	fail := WireError(errors.New("trace: not an established TCP connection"))
	if fail.Status != frame.PathFailed || fail.Reason == "" || len(fail.Hops) != 0 {
		t.Errorf("failed trace %+v", fail)
	}
}

// A step below the threshold is noise, not where the delay appears.
func TestPathDelayStepThreshold(t *testing.T) {
	p := &frame.Path{Hops: []frame.PathHop{
		{TTL: 1, Sent: 3, Answered: 3, Address: netip.MustParseAddr("10.0.0.1"), Median: 500 * time.Microsecond},
		{TTL: 2, Sent: 3, Answered: 3, Address: netip.MustParseAddr("10.0.0.2"), Median: 1200 * time.Microsecond},
		{TTL: 3, Sent: 3, Answered: 3, Address: netip.MustParseAddr("10.0.0.3"), Median: 1600 * time.Microsecond},
	}}
	if s, ok := PathDelayStep(p); ok {
		t.Errorf("steps under 1 ms: found %+v", s)
	}
	p.Hops[2].Median = 11 * ms
	if s, ok := PathDelayStep(p); !ok || s.TTL != 3 {
		t.Errorf("a 9.8 ms step at TTL 3: %+v %v", s, ok)
	}
}

func TestSamePath(t *testing.T) {
	path := func(addrs ...string) *frame.Path {
		p := &frame.Path{}
		for i, a := range addrs {
			h := frame.PathHop{TTL: uint8(i + 1), Sent: 3}
			if a != "*" {
				h.Answered, h.Address = 3, netip.MustParseAddr(a)
			}
			p.Hops = append(p.Hops, h)
		}
		p.Hops[len(p.Hops)-1].Flags = frame.PathHopFarEnd
		return p
	}
	a := path("10.0.1.2", "10.0.2.2", "10.0.3.2")
	for _, c := range []struct {
		name string
		b    *frame.Path
		same bool
	}{
		{"itself", path("10.0.1.2", "10.0.2.2", "10.0.3.2"), true},
		{"a silent router", path("10.0.1.2", "*", "10.0.3.2"), true},
		{"a router replaced", path("10.0.4.2", "10.0.2.2", "10.0.3.2"), false},
		{"a router added", path("10.0.1.2", "10.0.9.2", "10.0.2.2", "10.0.3.2"), false},
		{"another far end", path("10.0.1.2", "10.0.2.2", "10.0.3.9"), false},
		// The far end's answer missed once (a busy connection): it
		// answers one TTL later; indistinguishable from a silent router
		// right before it, and not counted.
		{"the far end one silent TTL later", path("10.0.1.2", "10.0.2.2", "*", "10.0.3.2"), true},
	} {
		if got := SamePath(a, c.b); got != c.same {
			t.Errorf("%s: SamePath %v, want %v", c.name, got, c.same)
		}
	}
	if PathFingerprint(a) == PathFingerprint(path("10.0.4.2", "10.0.2.2", "10.0.3.2")) || PathFingerprint(a) >= 1<<48 {
		t.Errorf("fingerprint %x", PathFingerprint(a))
	}
	if PathFingerprint(a) != PathFingerprint(path("10.0.1.2", "10.0.2.2", "*", "10.0.3.2")) {
		t.Error("a far end one silent TTL later changed the fingerprint")
	}
}

// A far end's answer read late (its reader got no CPU before the TTL's
// wait ended) still counts for its TTL when the kernel received it before
// the next TTL's probes left: the trace ends there, reached, and the TTL
// probed after it is not part of the path.
func TestLateFarEndAnswer(t *testing.T) {
	far := netip.MustParseAddrPort("10.0.0.9:9000")
	t0 := time.Now()
	s := &session{opts: Options{Probes: 3, FarEndSpacing: DefaultFarEndSpacing}, method: MethodTCP, info: connInfo{remote: far},
		first: []int{0, 0, 3}}
	for i := range 3 {
		s.probes = append(s.probes, probeRec{ttl: 1, sent: t0.Add(time.Duration(i) * time.Microsecond)})
	}
	for i := range 3 {
		s.probes = append(s.probes, probeRec{ttl: 2, sent: t0.Add(300*ms + time.Duration(i)*time.Microsecond)})
	}
	// Received 20 µs after TTL 1's first probe, read after TTL 2's left.
	late := answer{from: far.Addr(), kind: kindFarEnd, at: t0.Add(301 * ms), kernelNs: t0.Add(20 * time.Microsecond).UnixNano()}
	s.take(late, 2)
	if !s.lateFarEnd(2) {
		t.Fatal("the late answer did not count for TTL 1")
	}
	hops := s.hops()
	if len(hops) != 1 || !hops[0].FarEnd || hops[0].Answered != 1 || hops[0].RTTs[0] != 20*time.Microsecond {
		t.Errorf("hops %+v", hops)
	}
	// One received after TTL 2's probes left is not TTL 1's.
	s2 := &session{opts: s.opts, method: MethodTCP, info: s.info, first: []int{0, 0, 3}, probes: append([]probeRec(nil), s.probes...)}
	for i := range s2.probes {
		s2.probes[i].answered = false
	}
	s2.take(answer{from: far.Addr(), kind: kindFarEnd, at: t0.Add(301 * ms), kernelNs: t0.Add(300*ms + 10*time.Microsecond).UnixNano()}, 2)
	if s2.lateFarEnd(2) {
		t.Error("an answer received after TTL 2's probes counted for TTL 1")
	}
}
