package trace

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// Wire is the result as a relay reports it in its hop record (the path
// section of the protocol, frame.Path): the one conversion relays and the
// source both use, so that the source's own first segment and every
// relay's read the same.
func (r *Result) Wire() *frame.Path {
	p := &frame.Path{Method: wireMethod(r.Flow.Protocol), Status: wireStatus(r.Stop),
		Probes: uint8(min(r.Probes, frame.MaxPathProbes)), MaxTTL: uint8(min(r.MaxTTL, frame.MaxPathTTL)),
		Packets: uint16(min(r.Packets, 0xffff)), Duration: r.Duration,
		Local: r.Flow.Local, Remote: r.Flow.Remote, Reason: r.Flow.Reason, Route: r.Flow.Route}
	if p.Method == frame.PathNone {
		return frame.NoPath(frame.PathFailed, r.Flow.Reason)
	}
	for _, h := range r.Hops {
		if len(p.Hops) == frame.MaxPathTTL {
			break
		}
		p.Hops = append(p.Hops, wireHop(h))
	}
	// The wire's rule: a trace that reached its far end ends at it.
	if p.Status == frame.PathReached && (len(p.Hops) == 0 || p.Hops[len(p.Hops)-1].Flags&frame.PathHopFarEnd == 0) {
		p.Status = frame.PathMaxTTL
	}
	return p
}

func wireHop(h Hop) frame.PathHop {
	w := frame.PathHop{TTL: uint8(h.TTL), Sent: uint8(min(h.Sent, 2*frame.MaxPathProbes)), Address: h.Address}
	w.Answered = uint8(min(h.Answered, int(w.Sent)))
	if s, ok := h.RTT(); ok && w.Answered > 0 && h.Address.IsValid() {
		w.Min, w.Median, w.Max = max(s.Min, 0), max(s.Median, 0), max(s.Max, 0)
		if h.FarEnd {
			w.Flags |= frame.PathHopFarEnd
		}
		if h.Unreachable >= 0 {
			w.Flags |= frame.PathHopUnreachable
		}
		if len(h.Others) > 0 {
			w.Flags |= frame.PathHopOthers
		}
	} else {
		w.Answered, w.Address = 0, netip.Addr{}
	}
	w.Max = min(w.Max, frame.MaxDuration)
	w.Median = min(w.Median, w.Max)
	w.Min = min(w.Min, w.Median)
	return w
}

func wireMethod(m Method) frame.PathMethod {
	switch m {
	case MethodTCP:
		return frame.PathTCP
	case MethodUDP:
		return frame.PathUDP
	}
	return frame.PathNone
}

func wireStatus(s Stop) frame.PathStatus {
	switch s {
	case StopReached:
		return frame.PathReached
	case StopMaxTTL:
		return frame.PathMaxTTL
	case StopSilent:
		return frame.PathSilent
	case StopUnreachable:
		return frame.PathUnreachable
	}
	return frame.PathDeadline
}

// WireError is the path section of a trace that could not run.
func WireError(err error) *frame.Path {
	return frame.NoPath(frame.PathFailed, err.Error())
}

// PathSteps is Steps of a path as a hop reported it.
func PathSteps(p *frame.Path) []Step {
	var pts []point
	for _, h := range p.Hops {
		if h.Answered > 0 {
			pts = append(pts, point{int(h.TTL), h.Address, h.Median})
		}
	}
	return steps(pts)
}

// PathDelayStep is where the delay first appears on a path: the first
// step of at least DelayThreshold of its last answered round trip.
func PathDelayStep(p *frame.Path) (Step, bool) {
	st := PathSteps(p)
	if len(st) == 0 {
		return Step{}, false
	}
	th := DelayThreshold(st[len(st)-1].At)
	for _, s := range st {
		if s.Delay >= th {
			return s, true
		}
	}
	return Step{}, false
}

// DelayThreshold is the rise of round trip that counts as where the delay
// appears on a path whose far end answers in farEnd: a quarter of it, at
// least 1 ms (smaller rises are a router's own noise).
func DelayThreshold(farEnd time.Duration) time.Duration {
	return max(time.Millisecond, farEnd/4)
}

// PathFingerprint identifies a reported path as a number (48 bits, exact
// in a float64 metric): the answering address of every router by its
// TTL, and the far end's address. A trace that reached its far end one TTL
// later, after silent TTLs (its answer to the earlier probes missed on a
// busy connection, or a router that never answers right before it), has
// the same fingerprint: the two cannot be told apart.
func PathFingerprint(p *frame.Path) uint64 {
	h := fnv.New64a()
	hops, far := routers(p)
	for _, hop := range hops {
		if hop.Address.IsValid() {
			_, _ = fmt.Fprintf(h, "%d=%s;", hop.TTL, hop.Address)
		}
	}
	if far.IsValid() {
		_, _ = fmt.Fprintf(h, "end=%s;", far)
	}
	return h.Sum64() >> 16
}

// routers is a path's TTLs before its far end and the far end's address
// (zero when the trace did not reach it).
func routers(p *frame.Path) ([]frame.PathHop, netip.Addr) {
	hops := p.Hops
	n := len(hops)
	if n == 0 || hops[n-1].Flags&frame.PathHopFarEnd == 0 {
		return hops, netip.Addr{}
	}
	return hops[:n-1], hops[n-1].Address
}

// SamePath reports whether two traces took the same route: the same far
// end, and the same address at every TTL both answered. A TTL silent in
// one of them (a router that rate-limits its answers) is no change, nor
// are silent TTLs that make one of them longer just before the far end
// (its answer missed once on a busy connection: see PathFingerprint); a
// router replaced, added or removed where it answers is.
func SamePath(a, b *frame.Path) bool {
	ah, af := routers(a)
	bh, bf := routers(b)
	if af != bf {
		return false
	}
	if len(ah) < len(bh) {
		ah, bh = bh, ah
	}
	for i := range ah {
		x := ah[i].Address
		if i >= len(bh) {
			if x.IsValid() {
				return false // a router more, not a silent TTL
			}
			continue
		}
		if y := bh[i].Address; x.IsValid() && y.IsValid() && x != y {
			return false
		}
	}
	return true
}
