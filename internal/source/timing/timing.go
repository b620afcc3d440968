// Package timing is the segment arithmetic: from what each hop measured on
// its own monotonic clock it derives the round trip of every segment and the
// residence time of every hop, TWAMP style, so that no two clocks are ever
// compared. Only where both ends of a segment report a synchronised wall
// clock does it also give one-way delays, with their error bound.
//
// It also owns how many digits a resolution supports (MillisDecimals),
// which the table, the page and JSON share. Layering
// (internal/architecture_test.go): floor 3; it imports nothing of the
// project.
package timing

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Hop is one hop's measurement of one probe. Hop 0 is the source.
type Hop struct {
	Name string
	// On the hop's monotonic clock: request-in → request-out (for the end
	// host, request-in → reply-out), request-out → reply-in, reply-in → reply-out.
	Forward, Downstream, Return time.Duration
	// WallIn is the wall clock (Unix ns) at request-in.
	WallIn int64
	// Synced: the wall clock was synchronised; MaxError bounds its offset.
	Synced   bool
	MaxError time.Duration
	// Resolution is the smallest step the hop's durations can show: 0
	// for relays and the source (nanoseconds), the unit of an HTTP
	// proxy's Subsegment-Timing stamp (1 ms for nginx).
	Resolution time.Duration
	// Lead is how long before this hop's request-out the next hop may
	// already have started its clock: 0 but for an HTTP source on a
	// connection opened for the probe, where it is the time from the dial
	// to the request (HAProxy stamps a request with the time of the
	// event-loop pass that accepted the connection or finished its TLS
	// handshake, nginx with that of the pass that read it first).
	Lead time.Duration
}

// Residence is the time the probe spent inside the hop.
func (h Hop) Residence() time.Duration { return h.Forward + h.Return }

// Total is request-in → reply-out at the hop: everything from it onwards.
func (h Hop) Total() time.Duration { return h.Forward + h.Downstream + h.Return }

// ClockGranularity is how much longer than its near neighbour measured
// around it (request-out → reply-in) a hop may say it took (request-in →
// reply-out) for reasons of the clocks alone, besides the stamps'
// resolution and ClockRate: the stamps are nanoseconds, but a kernel
// receive stamp is moved from the realtime clock to the monotonic one by
// reading both (rxstamp), and the relays clamp reply-in between
// request-out and reply-out; both err by well under a microsecond.
const ClockGranularity = 20 * time.Microsecond

// ClockRate bounds how far two hosts' monotonic clocks may run apart, as
// a fraction of the time measured: NTP slews each by at most 500 ppm, so
// two clocks by at most 1/1000.
const ClockRate = 1000

// Tolerance is how much more than near measured around it far may claim
// before its record is refused (SegmentRTT): ClockGranularity, 1/ClockRate
// of far's time, both hops' resolutions, and near's Lead.
func Tolerance(near, far Hop) time.Duration {
	return ClockGranularity + far.Total()/ClockRate + near.Resolution + far.Resolution + near.Lead
}

// Overclaim is a hop whose record says it took longer (request-in →
// reply-out) than its near neighbour measured around it (request-out →
// reply-in), by more than Tolerance: the segment between them would have
// a negative round trip, so one of the two records is false — the far
// one, as the near end's own measurement is what the probe trusts.
type Overclaim struct {
	// Far is the position of the hop that claims too much (≥ 1).
	Far      int
	Name     string
	Claimed  time.Duration
	Measured time.Duration
	// Near is the name of the hop that measured around it.
	Near      string
	Tolerance time.Duration
}

func (e *Overclaim) Error() string {
	return fmt.Sprintf("%s says it took %v from request in to reply out, but %s measured only %v around it (request out to reply in), beyond the tolerance of %v: %s's record, or its clock, is wrong",
		e.Name, e.Claimed, e.Near, e.Measured, e.Tolerance, e.Name)
}

// SegmentRTT is the round trip of the segment between two adjacent hops:
// (reply-in_near − request-out_near) − (reply-out_far − request-in_far),
// each bracket on its own hop's clock. It is the one rule on what a hop
// may claim: a far hop claiming more than near measured around it by
// more than Tolerance is an *Overclaim (Far is left for the caller, who
// knows the position); within it the segment is 0, never negative, and
// far counts what near measured (Hold).
func SegmentRTT(near, far Hop) (time.Duration, error) {
	rtt, oc := segmentRTT(near, far)
	if oc != nil {
		return 0, oc
	}
	return rtt, nil
}

func segmentRTT(near, far Hop) (time.Duration, *Overclaim) {
	rtt := near.Downstream - far.Total()
	if rtt >= 0 {
		return rtt, nil
	}
	if tol := Tolerance(near, far); -rtt > tol {
		return 0, &Overclaim{Name: far.Name, Claimed: far.Total(), Near: near.Name, Measured: near.Downstream, Tolerance: tol}
	}
	return 0, nil
}

// Hold is far as the breakdown counts it, and the rtt of the segment
// between near and far: a claim within Tolerance of what near measured
// around it (SegmentRTT) is cut to that measurement, far's downstream
// time first, then its return and forward times, and the segment is then
// 0. Every output then shows the same figures: no segment or residence
// beyond what encloses it, and segments and residences that add up to
// the source's round trip exactly. A chain is held hop by hop, each far
// hop to its near neighbour as held (an HTTP proxy that stamps a full
// unit of its resolution beyond the round trip leaves the segments inside
// it no more than the round trip). Overclaims are SegmentRTT's to refuse,
// on the records as they came.
func Hold(near, far Hop) (Hop, time.Duration) {
	over := far.Total() - max(near.Downstream, 0)
	far.Downstream, over = cut(far.Downstream, over)
	far.Return, over = cut(far.Return, over)
	far.Forward, _ = cut(far.Forward, over)
	return far, near.Downstream - far.Total()
}

// cut takes what it can of over from d; it returns d and what is left of
// over.
func cut(d, over time.Duration) (time.Duration, time.Duration) {
	c := min(max(over, 0), max(d, 0))
	return d - c, over - c
}

// Segment is the link between hop From and hop From+1.
type Segment struct {
	From, To int
	// RTT = (reply-in_i − request-out_i) − (reply-out_{i+1} − request-in_{i+1}).
	RTT time.Duration
	// OneWay is nil unless both hops' clocks are synchronised.
	OneWay *OneWay
}

// OneWay splits a segment's rtt into its two directions using wall clocks.
type OneWay struct {
	Forward, Return time.Duration
	// ErrorBound is the sum of both hops' maximum clock errors: the true
	// forward delay lies within Forward ± ErrorBound.
	ErrorBound time.Duration
}

// Breakdown is one probe's path, cut into segments and residences.
type Breakdown struct {
	Segments  []Segment
	Residence []time.Duration
	// RoundTrip is the source's own request-out → reply-in.
	RoundTrip time.Duration
	// oneWays holds what Segments' OneWay point to, so that ComputeInto
	// reuses it.
	oneWays []OneWay
}

// Compute breaks a probe down. With n+1 hops it returns n segments; the
// identity Σ segments + Σ residences of hops 1..n = RoundTrip holds
// exactly: every hop is held to what its near neighbour measured (Hold).
//
// When a hop claims more than its near neighbour measured around it
// (SegmentRTT), Compute returns an *Overclaim naming it, and the
// breakdown of the hops before it only: its record, and what lies beyond
// it, are not to be trusted.
func Compute(hops []Hop) (Breakdown, error) {
	var b Breakdown
	err := ComputeInto(&b, hops)
	return b, err
}

// ComputeInto is Compute into b, reusing its slices: a continuous probe
// computes its breakdown every second without allocating. What b held
// before (its OneWays included) is overwritten.
func ComputeInto(b *Breakdown, hops []Hop) error {
	var oc *Overclaim
	for i := 0; i+1 < len(hops); i++ {
		if _, oc = segmentRTT(hops[i], hops[i+1]); oc != nil {
			oc.Far = i + 1
			hops = hops[:i+1]
			break
		}
	}
	b.fill(hops)
	if oc != nil {
		return oc
	}
	return nil
}

// fill breaks down hops that claim nothing beyond what their neighbours
// measured.
func (b *Breakdown) fill(hops []Hop) {
	b.RoundTrip, b.Residence, b.Segments = 0, b.Residence[:0], b.Segments[:0]
	if len(hops) == 0 {
		b.Residence, b.Segments = nil, nil
		return
	}
	b.RoundTrip = hops[0].Downstream
	if b.Segments == nil {
		// Non-nil once there is a hop: a sample with a breakdown is
		// measured (even a source alone).
		b.Segments = make([]Segment, 0, len(hops)-1)
	}
	b.Residence = append(b.Residence, hops[0].Residence())
	if cap(b.oneWays) < len(hops) {
		b.oneWays = make([]OneWay, len(hops))
	}
	near := hops[0]
	for i := 0; i+1 < len(hops); i++ {
		far, rtt := Hold(near, hops[i+1])
		b.Residence = append(b.Residence, far.Residence())
		s := Segment{From: i, To: i + 1, RTT: rtt}
		if ow, ok := oneWay(near, far, rtt); ok {
			b.oneWays[i] = ow
			s.OneWay = &b.oneWays[i]
		}
		b.Segments = append(b.Segments, s)
		near = far
	}
}

// oneWay splits a segment's rtt by both hops' wall clocks, when both say
// they are synchronised: request-out_near on the wall clock is WallIn +
// Forward. Forward is kept within [0, rtt] (the truth lies within
// ErrorBound of it); when the clocks disagree by more than their errors
// allow (forward more than ErrorBound outside [0, rtt]), one of them is
// not synchronised as it says, and there is no one-way delay.
func oneWay(near, far Hop, rtt time.Duration) (OneWay, bool) {
	if !near.Synced || !far.Synced {
		return OneWay{}, false
	}
	bound := near.MaxError + far.MaxError
	// Checked in floating point first: wall clocks come from peers, and
	// their difference may not fit an int64. Within the range it does.
	approx := float64(far.WallIn) - float64(near.WallIn) - float64(near.Forward)
	if approx < -float64(bound) || approx > float64(rtt+bound) {
		return OneWay{}, false
	}
	fwd := time.Duration(far.WallIn-near.WallIn) - near.Forward
	f := min(max(fwd, 0), rtt)
	return OneWay{Forward: f, Return: rtt - f, ErrorBound: bound}, true
}

// Stats summarises samples of one quantity across the probes of a run.
type Stats struct {
	Count  int
	Min    time.Duration
	Median time.Duration
	Max    time.Duration
	// Jitter is the mean absolute difference between consecutive
	// samples (RFC 3393 IPDV, averaged); zero with fewer than two.
	Jitter time.Duration
}

// Summarise computes Stats over samples in probe order.
func Summarise(samples []time.Duration) Stats {
	s := Stats{Count: len(samples)}
	switch len(samples) {
	case 0:
		return s
	case 1:
		// A continuous probe's: every statistic is the sample.
		s.Min, s.Median, s.Max = samples[0], samples[0], samples[0]
		return s
	}
	var diff float64
	for i := 1; i < len(samples); i++ {
		diff += math.Abs(float64(samples[i] - samples[i-1]))
	}
	if len(samples) > 1 {
		s.Jitter = time.Duration(diff / float64(len(samples)-1))
	}
	// Up to 16 samples (a /probe's, a continuous probe's one) are sorted
	// on the stack.
	var small [16]time.Duration
	sorted := append(small[:0], samples...)
	slices.Sort(sorted)
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	mid := len(sorted) / 2
	if len(sorted)%2 == 1 {
		s.Median = sorted[mid]
	} else {
		s.Median = (sorted[mid-1] + sorted[mid]) / 2
	}
	return s
}

// MillisDecimals is how many decimals of milliseconds a figure of a
// resolution (seconds) carries: 3, microseconds, for our own stamps
// (resolution 0) and finer; 0 for an nginx stamp's millisecond. Every
// output (the table, JSON, the chain page, Nagios perfdata) prints no more
// digits than that.
func MillisDecimals(resolution float64) int {
	if resolution < 1e-6 {
		return 3
	}
	return min(3, max(0, int(math.Round(-math.Log10(resolution*1000)))))
}
