package timing

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// chain simulates a probe through hops with known segment delays and
// residences, each hop stamping on its own clock with an arbitrary offset.
type simHop struct {
	name              string
	fwdRes, retRes    time.Duration // time spent inside the hop each way
	clockOffset       time.Duration
	clockPPM          float64 // how fast the hop's clock runs, parts per million
	synced            bool
	maxError          time.Duration
	forwardDelayAfter time.Duration // one-way delay of the segment to the next hop
	returnDelayAfter  time.Duration
}

// simulate runs one probe on a virtual true timeline and returns what each
// hop would report on its own clock.
func simulate(hops []simHop, start time.Duration) []Hop {
	n := len(hops)
	reqIn := make([]time.Duration, n)
	reqOut := make([]time.Duration, n)
	repIn := make([]time.Duration, n)
	repOut := make([]time.Duration, n)
	t := start
	for i := range hops {
		reqIn[i] = t
		t += hops[i].fwdRes
		reqOut[i] = t
		if i < n-1 {
			t += hops[i].forwardDelayAfter
		}
	}
	// The end host's residence is its fwdRes; it replies at reqOut[n-1].
	repOut[n-1] = reqOut[n-1]
	repIn[n-1] = reqOut[n-1]
	t = repOut[n-1]
	for i := n - 2; i >= 0; i-- {
		t += hops[i].returnDelayAfter
		repIn[i] = t
		t += hops[i].retRes
		repOut[i] = t
	}
	out := make([]Hop, n)
	for i, h := range hops {
		local := func(tt time.Duration) int64 {
			return int64(h.clockOffset) + int64(float64(tt)*(1+h.clockPPM/1e6))
		}
		out[i] = Hop{Name: h.name, WallIn: local(reqIn[i]), Synced: h.synced, MaxError: h.maxError}
		if i == n-1 {
			out[i].Forward = time.Duration(local(repOut[i]) - local(reqIn[i]))
			continue
		}
		out[i].Forward = time.Duration(local(reqOut[i]) - local(reqIn[i]))
		out[i].Downstream = time.Duration(local(repIn[i]) - local(reqOut[i]))
		out[i].Return = time.Duration(local(repOut[i]) - local(repIn[i]))
	}
	return out
}

func fourHops() []simHop {
	ms := time.Millisecond
	return []simHop{
		{name: "a", fwdRes: 10 * time.Microsecond, retRes: 12 * time.Microsecond, forwardDelayAfter: 1 * ms, returnDelayAfter: 2 * ms},
		{name: "b", fwdRes: 50 * time.Microsecond, retRes: 40 * time.Microsecond, forwardDelayAfter: 10 * ms, returnDelayAfter: 10 * ms},
		{name: "c", fwdRes: 30 * time.Microsecond, retRes: 20 * time.Microsecond, forwardDelayAfter: 300 * time.Microsecond, returnDelayAfter: 200 * time.Microsecond},
		{name: "z", fwdRes: 25 * time.Microsecond},
	}
}

func TestComputeSegments(t *testing.T) {
	hops := simulate(fourHops(), time.Hour)
	b := mustCompute(t, hops)
	want := []time.Duration{3 * time.Millisecond, 20 * time.Millisecond, 500 * time.Microsecond}
	if len(b.Segments) != len(want) {
		t.Fatalf("got %d segments, want %d", len(b.Segments), len(want))
	}
	for i, w := range want {
		if got := b.Segments[i].RTT; got != w {
			t.Errorf("segment %d→%d rtt = %v, want %v", i, i+1, got, w)
		}
		if b.Segments[i].OneWay != nil {
			t.Errorf("segment %d has a one-way delay without synchronised clocks", i)
		}
	}
	wantRes := []time.Duration{22 * time.Microsecond, 90 * time.Microsecond, 50 * time.Microsecond, 25 * time.Microsecond}
	for i, w := range wantRes {
		if b.Residence[i] != w {
			t.Errorf("residence of hop %d = %v, want %v", i, b.Residence[i], w)
		}
	}
}

func TestSumIdentity(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 1000; iter++ {
		n := 2 + rng.IntN(10)
		sim := make([]simHop, n)
		for i := range sim {
			sim[i] = simHop{
				name:              "h",
				fwdRes:            time.Duration(rng.Int64N(int64(time.Millisecond))),
				retRes:            time.Duration(rng.Int64N(int64(time.Millisecond))),
				clockOffset:       time.Duration(rng.Int64N(int64(time.Hour))) - 30*time.Minute,
				forwardDelayAfter: time.Duration(rng.Int64N(int64(50 * time.Millisecond))),
				returnDelayAfter:  time.Duration(rng.Int64N(int64(50 * time.Millisecond))),
			}
		}
		hops := simulate(sim, time.Duration(rng.Int64N(int64(24*time.Hour))))
		b := mustCompute(t, hops)
		var sum time.Duration
		for _, s := range b.Segments {
			sum += s.RTT
		}
		for _, r := range b.Residence[1:] {
			sum += r
		}
		if sum != b.RoundTrip {
			t.Fatalf("iteration %d: Σ segments + Σ residences(1..n) = %v, source round trip = %v", iter, sum, b.RoundTrip)
		}
		if total := sum + b.Residence[0]; total != hops[0].Total() {
			t.Fatalf("iteration %d: with the source's residence %v, want the source's total %v", iter, total, hops[0].Total())
		}
	}
}

func TestClockSkewLeavesSegmentsUnchanged(t *testing.T) {
	base := mustCompute(t, simulate(fourHops(), time.Hour))
	for _, skew := range []time.Duration{10 * time.Second, -10 * time.Second} {
		sim := fourHops()
		for i := range sim {
			if i%2 == 1 {
				sim[i].clockOffset = skew
			} else {
				sim[i].clockOffset = -skew
			}
		}
		got := mustCompute(t, simulate(sim, time.Hour))
		for i := range base.Segments {
			if got.Segments[i].RTT != base.Segments[i].RTT {
				t.Errorf("skew %v: segment %d rtt %v, without skew %v", skew, i, got.Segments[i].RTT, base.Segments[i].RTT)
			}
		}
	}
}

func TestOneWayOnlyWithSynchronisedClocks(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name     string
		synced   []bool
		offsets  []time.Duration
		wantOWD  []bool
		wantFwd  []time.Duration
		wantBnds []time.Duration
	}{
		{name: "none synced", synced: []bool{false, false, false, false}, wantOWD: []bool{false, false, false}},
		{name: "all synced, no offset", synced: []bool{true, true, true, true}, offsets: []time.Duration{0, 0, 0, 0},
			wantOWD: []bool{true, true, true}, wantFwd: []time.Duration{1 * ms, 10 * ms, 300 * time.Microsecond},
			wantBnds: []time.Duration{3 * ms, 3 * ms, 3 * ms}},
		{name: "middle unsynced", synced: []bool{true, true, false, true}, offsets: []time.Duration{0, 0, 0, 0},
			wantOWD: []bool{true, false, false}, wantFwd: []time.Duration{1 * ms}, wantBnds: []time.Duration{3 * ms}},
		{name: "synced within error", synced: []bool{true, true, true, true}, offsets: []time.Duration{0, ms, 0, 0},
			wantOWD: []bool{true, true, true}, wantFwd: []time.Duration{2 * ms, 9 * ms, 300 * time.Microsecond},
			wantBnds: []time.Duration{3 * ms, 3 * ms, 3 * ms}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim := fourHops()
			for i := range sim {
				sim[i].synced = tc.synced[i]
				sim[i].maxError = 1500 * time.Microsecond
				if tc.offsets != nil {
					sim[i].clockOffset = tc.offsets[i]
				}
			}
			b := mustCompute(t, simulate(sim, time.Hour))
			k := 0
			for i, s := range b.Segments {
				if (s.OneWay != nil) != tc.wantOWD[i] {
					t.Fatalf("segment %d: one-way present = %v, want %v", i, s.OneWay != nil, tc.wantOWD[i])
				}
				if s.OneWay == nil {
					continue
				}
				if s.OneWay.Forward != tc.wantFwd[k] || s.OneWay.Forward+s.OneWay.Return != s.RTT || s.OneWay.ErrorBound != tc.wantBnds[k] {
					t.Errorf("segment %d: one-way %+v (rtt %v), want forward %v, bound %v", i, *s.OneWay, s.RTT, tc.wantFwd[k], tc.wantBnds[k])
				}
				k++
			}
		})
	}
}

func TestSummarise(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		in   []time.Duration
		want Stats
	}{
		{nil, Stats{}},
		{[]time.Duration{5 * ms}, Stats{Count: 1, Min: 5 * ms, Median: 5 * ms, Max: 5 * ms}},
		{[]time.Duration{3 * ms, 1 * ms, 2 * ms}, Stats{Count: 3, Min: ms, Median: 2 * ms, Max: 3 * ms, Jitter: 1500 * time.Microsecond}},
		{[]time.Duration{4 * ms, 1 * ms, 2 * ms, 3 * ms}, Stats{Count: 4, Min: ms, Median: 2500 * time.Microsecond, Max: 4 * ms, Jitter: 5 * ms / 3}},
	}
	for _, tc := range tests {
		if got := Summarise(tc.in); got != tc.want {
			t.Errorf("Summarise(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestAccumulator(t *testing.T) {
	var a Accumulator
	if s := a.Stats(); s != (Stats{}) {
		t.Fatalf("empty accumulator: %+v", s)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var samples []time.Duration
	for i := 0; i < 100000; i++ {
		d := time.Duration(rng.ExpFloat64() * float64(200*time.Microsecond))
		samples = append(samples, d)
		a.Add(d)
	}
	exact := Summarise(samples)
	got := a.Stats()
	if got.Count != exact.Count || got.Min != exact.Min || got.Max != exact.Max {
		t.Errorf("count/min/max %+v, want %+v", got, exact)
	}
	if diff := math.Abs(float64(got.Jitter-exact.Jitter)) / float64(exact.Jitter); diff > 1e-6 {
		t.Errorf("jitter %v, exact %v", got.Jitter, exact.Jitter)
	}
	if diff := math.Abs(float64(got.Median-exact.Median)) / float64(exact.Median); diff > 1.0/16 {
		t.Errorf("median %v, exact %v: more than 1/16 off", got.Median, exact.Median)
	}
	for _, d := range []time.Duration{0, 1, 63, 64, 1023, 1024, 1500, time.Millisecond, time.Hour, math.MaxInt64} {
		b := bucketOf(d)
		if b < 0 || b >= accBuckets {
			t.Fatalf("bucketOf(%v) = %d out of range", d, b)
		}
		if d >= 1024 {
			if mid := bucketMid(b); math.Abs(float64(mid-d))/float64(d) > 1.0/16 {
				t.Errorf("bucket %d mid %v too far from %v", b, mid, d)
			}
		}
	}
}

func mustCompute(t *testing.T, hops []Hop) Breakdown {
	t.Helper()
	b, err := Compute(hops)
	if err != nil {
		t.Fatalf("Compute: %v", err)
	}
	return b
}

// Honest chains are never refused: clocks whose rates differ by up to
// the 500 ppm NTP may slew each, arbitrary offsets, delays and
// residences from nothing to seconds.
func TestHonestChainsAreNeverRefused(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	dur := func(max time.Duration) time.Duration {
		return time.Duration(rng.Int64N(int64(max)))
	}
	for iter := 0; iter < 20000; iter++ {
		n := 2 + rng.IntN(8)
		sim := make([]simHop, n)
		for i := range sim {
			scale := []time.Duration{time.Microsecond, time.Millisecond, time.Second}[rng.IntN(3)]
			sim[i] = simHop{name: "h", fwdRes: dur(scale), retRes: dur(scale), clockOffset: dur(time.Hour),
				clockPPM: rng.Float64()*1000 - 500, forwardDelayAfter: dur(scale), returnDelayAfter: dur(scale)}
		}
		hops := simulate(sim, dur(24*time.Hour))
		b, err := Compute(hops)
		if err != nil {
			t.Fatalf("iteration %d: an honest chain refused: %v\n%+v", iter, err, hops)
		}
		for _, seg := range b.Segments {
			if seg.RTT < 0 {
				t.Fatalf("iteration %d: negative segment %+v", iter, seg)
			}
		}
	}
}

// A hop that claims more than its near neighbour measured around it is
// refused beyond the tolerance (Overclaim, naming it and its position,
// with the breakdown of the hops before it), and counts 0 within it.
func TestOverclaimBeyondTheTolerance(t *testing.T) {
	us := time.Microsecond
	src := Hop{Name: "a", Forward: us, Downstream: 500 * us}
	b := Hop{Name: "b", Forward: 10 * us, Downstream: 300 * us, Return: 10 * us}
	tests := []struct {
		name    string
		hops    []Hop
		far     int // 0: accepted
		zeroSeg int // with far 0: the segment that counts 0 (-1: none)
	}{
		{"honest", []Hop{src, b, {Name: "z", Forward: 200 * us}}, 0, -1},
		{"end host within the granularity", []Hop{src, b, {Name: "z", Forward: 300*us + ClockGranularity}}, 0, 1},
		{"end host beyond it", []Hop{src, b, {Name: "z", Forward: 300*us + ClockGranularity + us}}, 2, 0},
		{"end host claiming a second", []Hop{src, b, {Name: "z", Forward: time.Second}}, 2, 0},
		{"first hop claiming a day", []Hop{src, {Name: "b", Forward: 8 * time.Hour, Downstream: 8 * time.Hour, Return: 8 * time.Hour}, {Name: "z"}}, 1, 0},
		{"stamps of a millisecond within it", []Hop{src, {Name: "n1", Downstream: 1400 * us, Resolution: time.Millisecond}, {Name: "backend"}}, 0, 0},
		{"stamps of a millisecond beyond it", []Hop{src, {Name: "n1", Downstream: 1600 * us, Resolution: time.Millisecond}, {Name: "backend"}}, 1, 0},
		{"a proxy's clock started with the connection, before the request", []Hop{{Name: "a", Downstream: 300 * us, Lead: 2 * time.Millisecond}, {Name: "h1", Downstream: 2 * time.Millisecond}, {Name: "backend"}}, 0, 0},
		{"beyond the connection's lead", []Hop{{Name: "a", Downstream: 300 * us, Lead: 2 * time.Millisecond}, {Name: "h1", Downstream: 3 * time.Millisecond}, {Name: "backend"}}, 1, 0},
		{"rate: a tenth of a percent of a second", []Hop{{Name: "a", Downstream: time.Second}, {Name: "z", Forward: time.Second + 900*us}}, 0, 0},
		{"rate: beyond it", []Hop{{Name: "a", Downstream: time.Second}, {Name: "z", Forward: time.Second + 1100*us}}, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bd, err := Compute(tc.hops)
			if tc.far == 0 {
				accepted(t, bd, err, tc.zeroSeg)
				return
			}
			refused(t, tc.hops, bd, err, tc.far)
		})
	}
}

// accepted checks a breakdown Compute accepted: no negative segment, and
// only the one at zeroSeg (-1: none) counted 0.
func accepted(t *testing.T, bd Breakdown, err error, zeroSeg int) {
	t.Helper()
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	for i, s := range bd.Segments {
		if s.RTT < 0 || (i == zeroSeg) != (s.RTT == 0) {
			t.Errorf("segment %d rtt %v", i, s.RTT)
		}
	}
}

// refused checks that Compute refused hop far of hops, naming it, with
// the breakdown of the hops before it.
func refused(t *testing.T, hops []Hop, bd Breakdown, err error, far int) {
	t.Helper()
	var oc *Overclaim
	if !errors.As(err, &oc) || oc.Far != far || oc.Name != hops[far].Name || oc.Near != hops[far-1].Name {
		t.Fatalf("error %v (%+v), want an overclaim of hop %d", err, oc, far)
	}
	if len(bd.Residence) != far || len(bd.Segments) != far-1 {
		t.Errorf("breakdown %+v: want the %d hops before the refused one", bd, far)
	}
	if !strings.Contains(err.Error(), hops[far].Name+" says it took") {
		t.Errorf("message does not name the hop: %v", err)
	}
	if _, err := SegmentRTT(hops[far-1], hops[far]); err == nil {
		t.Errorf("SegmentRTT accepts what Compute refused")
	}
}

// Both hops say their clocks are synchronised within MaxError: a forward
// delay outside [0, rtt] by more than both errors means one of them is
// not, and there is no one-way delay; within, it is kept in [0, rtt].
func TestOneWayWithinWhatTheClocksClaim(t *testing.T) {
	us := time.Microsecond
	near := Hop{Name: "b", Forward: 10 * us, Downstream: 1000 * us, Synced: true, MaxError: 50 * us, WallIn: 1_000_000}
	for _, tc := range []struct {
		name    string
		farWall int64
		want    *OneWay
	}{
		// rtt: 1000 µs downstream less c's 100 µs
		{"halves", 1_000_000 + 10_000 + 400_000, &OneWay{Forward: 400 * us, Return: 500 * us, ErrorBound: 100 * us}},
		{"negative within the errors", 1_000_000 + 10_000 - 80_000, &OneWay{Forward: 0, Return: 900 * us, ErrorBound: 100 * us}},
		{"over the rtt within the errors", 1_000_000 + 10_000 + 990_000, &OneWay{Forward: 900 * us, Return: 0, ErrorBound: 100 * us}},
		{"over the rtt beyond them", 1_000_000 + 10_000 + 1_001_000, nil},
		{"negative beyond them", 1_000_000 + 10_000 - 101_000, nil},
		{"two days", 1_000_000 + int64(48*time.Hour), nil},
		{"the far end of int64", math.MaxInt64, nil},
		{"the near end of int64", math.MinInt64, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			far := Hop{Name: "c", Forward: 100 * us, Synced: true, MaxError: 50 * us, WallIn: tc.farWall}
			b := mustCompute(t, []Hop{near, far})
			got := b.Segments[0].OneWay
			if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
				t.Errorf("one-way %+v, want %+v", got, tc.want)
			}
		})
	}
	n := near
	n.WallIn = math.MinInt64
	if got := mustCompute(t, []Hop{n, {Name: "c", Synced: true, WallIn: math.MaxInt64}}).Segments[0].OneWay; got != nil {
		t.Errorf("wall clocks at both ends of int64: one-way %+v", got)
	}
}

// A continuous probe's breakdown and statistics allocate nothing: the
// breakdown reuses its slices (ComputeInto) and a few samples are sorted
// on the stack.
func TestComputeIntoAndSummariseDoNotAllocate(t *testing.T) {
	hops := []Hop{
		{Name: "a", Forward: 10, Downstream: 1000, Return: 10, Synced: true, WallIn: 1e9, MaxError: 5},
		{Name: "b", Forward: 20, Downstream: 600, Return: 20, Synced: true, WallIn: 1e9 + 100, MaxError: 5},
		{Name: "z", Forward: 50, Synced: true, WallIn: 1e9 + 300, MaxError: 5},
	}
	var b Breakdown
	if err := ComputeInto(&b, hops); err != nil {
		t.Fatal(err)
	}
	want, _ := Compute(hops)
	if len(b.Segments) != 2 || b.Segments[0].RTT != want.Segments[0].RTT || *b.Segments[1].OneWay != *want.Segments[1].OneWay || b.RoundTrip != want.RoundTrip {
		t.Fatalf("ComputeInto %+v, Compute %+v", b, want)
	}
	samples := []time.Duration{5, 3, 9, 1}
	if n := testing.AllocsPerRun(100, func() {
		_ = ComputeInto(&b, hops)
		_ = Summarise(samples)
	}); n != 0 {
		t.Errorf("%v allocations per probe", n)
	}
	// An overclaiming hop: the breakdown of the hops before it only.
	hops[1].Forward = 100 * time.Microsecond
	err := ComputeInto(&b, hops)
	var oc *Overclaim
	if !errors.As(err, &oc) || oc.Far != 1 || len(b.Segments) != 0 || len(b.Residence) != 1 || b.Segments == nil {
		t.Errorf("overclaim: %v, breakdown %+v", err, b)
	}
}

// A claim within the tolerance is held to what encloses it (REVIEW-1
// finding 5): an HTTP proxy stamping a full unit of its 1 s resolution
// when the whole probe took 150 ms leaves the segment inside it 150 ms,
// never 1 s, and no residence or segment exceeds the round trip; the
// segments and residences add up to it exactly.
func TestClaimsWithinTheToleranceAreHeld(t *testing.T) {
	us, ms := time.Microsecond, time.Millisecond
	tests := []struct {
		name      string
		hops      []Hop
		segments  []time.Duration
		residence []time.Duration
	}{
		{"a proxy's second beyond a 150 ms round trip",
			[]Hop{{Name: "a", Downstream: 150 * ms}, {Name: "be", Downstream: time.Second, Resolution: time.Second}, {Name: "backend"}},
			[]time.Duration{0, 150 * ms}, []time.Duration{0, 0, 0}},
		{"an inner proxy held to the outer one as held",
			[]Hop{{Name: "a", Downstream: 100 * ms}, {Name: "fe", Downstream: 100*ms + 900*us, Resolution: ms},
				{Name: "be", Downstream: 100*ms + 950*us, Resolution: ms}, {Name: "backend"}},
			[]time.Duration{0, 0, 100 * ms}, []time.Duration{0, 0, 0, 0}},
		{"a backend that stamped itself",
			[]Hop{{Name: "a", Downstream: 2 * ms}, {Name: "be", Downstream: 2*ms + 500*us, Resolution: ms}, {Name: "backend", Forward: 2*ms + 400*us, Resolution: ms}},
			[]time.Duration{0, 0}, []time.Duration{0, 0, 2 * ms}},
		{"a relay's downstream time first, its residence kept",
			[]Hop{{Name: "a", Downstream: 500 * us}, {Name: "b", Forward: 10 * us, Downstream: 485 * us, Return: 10 * us}, {Name: "z", Forward: 470 * us}},
			[]time.Duration{0, 10 * us}, []time.Duration{0, 20 * us, 470 * us}},
		{"an end host's residence beyond its segment",
			[]Hop{{Name: "a", Downstream: 100 * us}, {Name: "z", Forward: 110 * us}},
			[]time.Duration{0}, []time.Duration{0, 100 * us}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bd, err := Compute(tc.hops)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			for i, s := range bd.Segments {
				if s.RTT != tc.segments[i] {
					t.Errorf("segment %d rtt %v, want %v", i, s.RTT, tc.segments[i])
				}
			}
			for i, r := range bd.Residence {
				if r != tc.residence[i] {
					t.Errorf("residence %d %v, want %v", i, r, tc.residence[i])
				}
			}
			checkHeld(t, bd)
		})
	}
}

// checkHeld fails a breakdown with a segment or a residence (the
// source's aside) beyond the round trip, or whose segments and residences
// do not add up to it.
func checkHeld(t *testing.T, bd Breakdown) {
	t.Helper()
	sum := time.Duration(0)
	for i, s := range bd.Segments {
		if s.RTT < 0 || s.RTT > bd.RoundTrip {
			t.Errorf("segment %d rtt %v outside [0, round trip %v]", i, s.RTT, bd.RoundTrip)
		}
		sum += s.RTT
	}
	for i, r := range bd.Residence[1:] {
		if r < 0 || r > bd.RoundTrip {
			t.Errorf("residence of hop %d %v outside [0, round trip %v]", i+1, r, bd.RoundTrip)
		}
		sum += r
	}
	if sum != bd.RoundTrip {
		t.Errorf("Σ segments + Σ residences = %v, round trip %v", sum, bd.RoundTrip)
	}
}

// Honest chains whose hops claim up to their tolerance more than was
// measured around them (coarse stamps, clock granularity) are accepted
// and held: they add up to the round trip, and nothing exceeds it.
func TestClaimsWithinTheToleranceAddUp(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	dur := func(max time.Duration) time.Duration { return time.Duration(rng.Int64N(int64(max))) }
	for iter := 0; iter < 20000; iter++ {
		n := 2 + rng.IntN(6)
		sim := make([]simHop, n)
		for i := range sim {
			scale := []time.Duration{time.Microsecond, time.Millisecond, time.Second}[rng.IntN(3)]
			sim[i] = simHop{name: "h", fwdRes: dur(scale), retRes: dur(scale), clockOffset: dur(time.Hour),
				forwardDelayAfter: dur(scale), returnDelayAfter: dur(scale)}
		}
		hops := simulate(sim, dur(24*time.Hour))
		for i := 1; i < n; i++ {
			if rng.IntN(2) == 0 {
				continue
			}
			// A coarse stamp rounded up: at most its resolution over.
			hops[i].Resolution = []time.Duration{time.Millisecond, time.Second}[rng.IntN(2)]
			over := dur(hops[i].Resolution)
			if i == n-1 {
				hops[i].Forward += over
			} else {
				hops[i].Downstream += over
			}
		}
		bd, err := Compute(hops)
		if err != nil {
			t.Fatalf("iteration %d: refused: %v\n%+v", iter, err, hops)
		}
		checkHeld(t, bd)
		if t.Failed() {
			t.Fatalf("iteration %d: %+v", iter, hops)
		}
	}
}
