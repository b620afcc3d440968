package trace

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Method is the kind of probe a trace sent.
type Method string

const (
	// MethodTCP probes are TCP segments on the connection's own flow
	// (same addresses and ports), sent from a raw socket: CAP_NET_RAW.
	MethodTCP Method = "tcp"
	// MethodUDP probes are UDP datagrams with the connection's address
	// and port numbers, answered through IP_RECVERR: no privilege.
	MethodUDP Method = "udp"
)

// Stop says why a trace ended.
type Stop string

const (
	// StopReached is a trace the far end answered.
	StopReached Stop = "reached"
	// StopMaxTTL is a trace that probed its last TTL without reaching it.
	StopMaxTTL Stop = "max_ttl"
	// StopSilent is a trace whose last Options.MaxSilent TTLs got no answer.
	StopSilent Stop = "silent"
	// StopUnreachable is a trace a router answered destination unreachable.
	StopUnreachable Stop = "unreachable"
	// StopDeadline is a trace whose context (the scrape's budget) ended first.
	StopDeadline Stop = "deadline"
)

// Flow is the flow the probes used, and why.
type Flow struct {
	// Protocol is MethodTCP (the connection's own flow) or MethodUDP.
	Protocol Method
	// Local and Remote are the probes' source and destination: the
	// connection's own; for UDP the same addresses and port numbers, or
	// another local port when the connection's is taken for UDP.
	Local, Remote netip.AddrPort
	// Reason says why this protocol: "tcp: CAP_NET_RAW", "udp: no
	// CAP_NET_RAW (raw socket: operation not permitted)".
	Reason string
	// Route is this host's route of the connection's flow, which the
	// probes are pinned to ("via 10.0.1.2 dev eth0").
	Route string
}

// Hop is one TTL of the path.
type Hop struct {
	// TTL is the probes' time to live (hop limit).
	TTL int
	// Address answered most of this TTL's probes; zero when none did
	// (a router that does not answer, or answers too late).
	Address netip.Addr
	// Others answered the remaining probes (a path that changed during
	// the trace, or a balancer that does not follow the flow); at most
	// one per probe.
	Others []netip.Addr
	// Sent is the probes that count for this TTL, Answered those that got
	// an answer. In TCP mode, a probe the far end could not answer
	// because it had just answered another (RFC 5961 rate limit) does
	// not count.
	Sent, Answered int
	// RTTs are the answered probes' round trips, in the order the probes
	// were sent.
	RTTs []time.Duration
	// FarEnd: the answer came from the connection's far end.
	FarEnd bool
	// Unreachable is the ICMP code of a destination unreachable answer
	// from a router (-1: none).
	Unreachable int
}

// RTTStats summarise a hop's round trips.
type RTTStats struct {
	Min, Median, Max time.Duration
}

// RTT returns the hop's round-trip statistics; ok is false when no probe
// was answered.
func (h Hop) RTT() (s RTTStats, ok bool) {
	if len(h.RTTs) == 0 {
		return s, false
	}
	r := slices.Clone(h.RTTs)
	slices.Sort(r)
	s.Min, s.Max = r[0], r[len(r)-1]
	if n := len(r); n%2 == 1 {
		s.Median = r[n/2]
	} else {
		s.Median = (r[n/2-1] + r[n/2]) / 2
	}
	return s, true
}

// LossRatio is the share of the hop's probes that got no answer.
func (h Hop) LossRatio() float64 {
	if h.Sent == 0 {
		return 0
	}
	return float64(h.Sent-h.Answered) / float64(h.Sent)
}

// Result is one trace. Concurrent callers of the same far end may share
// it: treat it as read-only.
type Result struct {
	// Flow is the probes' flow and why it was chosen.
	Flow Flow
	// Probes and MaxTTL are the trace's bounds (Options, with defaults).
	Probes, MaxTTL int
	// Local and Remote are the traced connection's addresses.
	Local, Remote netip.AddrPort
	// Hops are the TTLs probed, from 1, in order; the last one is the far
	// end when Reached.
	Hops []Hop
	// Reached: the far end answered; the path is complete.
	Reached bool
	// Stop says why the trace ended.
	Stop Stop
	// Packets is the probe packets sent.
	Packets int
	// SendError is the first error of a probe send ("" if none): a
	// probe that could not be sent counts as unanswered.
	SendError string
	// Started and Duration bound the trace in time.
	Started  time.Time
	Duration time.Duration
}

// Fingerprint identifies the path: the answering address of every TTL in
// order (unanswered TTLs are left out, so a lost answer does not look
// like a new path; a changed TTL of an address does). Compare the
// fingerprints of traces that reached the far end to count path changes.
func (r *Result) Fingerprint() string {
	h := fnv.New64a()
	for _, hop := range r.Hops {
		if hop.Address.IsValid() {
			_, _ = fmt.Fprintf(h, "%d=%s;", hop.TTL, hop.Address)
		}
	}
	return fmt.Sprintf("%016x", h.Sum64())
}

// String is the path on one line: "1 10.0.1.2 0.3ms, 2 *, 3 10.0.3.2 0.9ms (reached)".
func (r *Result) String() string {
	var b strings.Builder
	for i, hop := range r.Hops {
		if i > 0 {
			b.WriteString(", ")
		}
		if s, ok := hop.RTT(); ok {
			fmt.Fprintf(&b, "%d %s %.1fms", hop.TTL, hop.Address, float64(s.Median)/1e6)
		} else {
			fmt.Fprintf(&b, "%d *", hop.TTL)
		}
	}
	fmt.Fprintf(&b, " (%s)", r.Stop)
	return b.String()
}

// Step is the rise of the path's round trip at one TTL.
type Step struct {
	TTL     int
	Address netip.Addr
	// Before is the path's round trip up to the previous answered TTL
	// (0 at the first), At the round trip up to this one; Delay = At -
	// Before.
	Before, At, Delay time.Duration
}

// Steps returns, for every answered TTL, how much the path's round trip
// rises there. The round trip of the path up to TTL k is the smallest
// median round trip of any answered TTL at or beyond k: every probe that
// goes further crosses the same links, so a delay on the path up to k is
// in all of them, while a router that is slow to generate its ICMP answer
// (a control-plane job, often rate-limited or queued) inflates only its
// own TTL and is overruled by the TTLs after it. Medians, not minimums:
// a queue that delays most packets is a delay even if one probe slips
// through it.
func (r *Result) Steps() []Step {
	var pts []point
	for _, h := range r.Hops {
		if s, ok := h.RTT(); ok {
			pts = append(pts, point{h.TTL, h.Address, s.Median})
		}
	}
	return steps(pts)
}

// point is an answered TTL's median round trip.
type point struct {
	ttl    int
	addr   netip.Addr
	median time.Duration
}

func steps(pts []point) []Step {
	floor := make([]time.Duration, len(pts))
	for i := len(pts) - 1; i >= 0; i-- {
		floor[i] = pts[i].median
		if i+1 < len(pts) && floor[i+1] < floor[i] {
			floor[i] = floor[i+1]
		}
	}
	out := make([]Step, len(pts))
	var before time.Duration
	for i, p := range pts {
		out[i] = Step{TTL: p.ttl, Address: p.addr, Before: before, At: floor[i], Delay: floor[i] - before}
		before = floor[i]
	}
	return out
}

// DelayStep is where the delay first appears: the first answered TTL whose
// round trip rises by at least threshold over the path before it (see
// Steps); ok is false when no TTL does.
func (r *Result) DelayStep(threshold time.Duration) (Step, bool) {
	for _, s := range r.Steps() {
		if s.Delay >= threshold {
			return s, true
		}
	}
	return Step{}, false
}
