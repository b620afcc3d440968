package collector

import (
	"strconv"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// The routers under a traced segment. Every label is bounded: ttl is at
// most the trace's max TTL (64 at most), protocol and status are short
// lists, and addresses appear only in subsegment_segment_path_hop_info,
// one series per TTL.
var (
	pathLabels = []string{"from", "to", "ttl"}

	pathInfo        = mustFamily(namespace+"_segment_path_info", "How the segment's path was traced: protocol tcp (the connection's own flow, CAP_NET_RAW), udp (the unprivileged fallback) or none, and how the trace ended (reached, max_ttl, silent, unreachable, deadline; failed, disabled, running, not_started: no path).", "from", "to", "protocol", "status")
	pathHops        = mustFamily(namespace+"_segment_path_hops", "TTLs the segment's trace listed: the routers under it and, when reached, its far end.", segLabels...)
	pathReached     = mustFamily(namespace+"_segment_path_reached", "Whether the segment's trace reached its far end.", segLabels...)
	pathRTT         = mustFamily(namespace+"_segment_path_rtt_seconds", "Round trip from the segment's near end to the router at this TTL, median of its probes (answered TTLs only).", pathLabels...)
	pathLoss        = mustFamily(namespace+"_segment_path_loss_ratio", "Share of the TTL's trace probes that got no answer (a router that does not answer: 1).", pathLabels...)
	pathHop         = mustFamily(namespace+"_segment_path_hop_info", "The address that answered the TTL's probes, 1 per answered TTL: the only metric with an address.", "from", "to", "ttl", "address")
	pathDelay       = mustFamily(namespace+"_segment_path_delay_seconds", "Where the delay first appears on the segment's path: the rise of round trip at that TTL (at least a quarter of the far end's, and 1 ms); join with subsegment_segment_path_hop_info on ttl for the router.", pathLabels...)
	pathFingerprint = mustFamily(namespace+"_segment_path_fingerprint", "The path's fingerprint (a 48-bit hash of the address answering at every TTL before the far end, and the far end's): changes() of it counts path changes.", segLabels...)
	pathPackets     = mustFamily(namespace+"_segment_path_trace_packets", "Probe packets the segment's trace sent.", segLabels...)
	pathSeconds     = mustFamily(namespace+"_segment_path_trace_seconds", "How long the segment's trace took.", segLabels...)
)

// writePaths adds the traced segments' paths to a /probe answer.
func writePaths(e *Exposition, r *prober.Result) {
	for i := range r.Segments {
		s := &r.Segments[i]
		p := s.WirePath()
		if p == nil {
			continue
		}
		e.Gauge(pathInfo, 1, s.From, s.To, p.Method.String(), p.Status.String())
		if !p.Status.Traced() {
			continue
		}
		e.Gauge(pathHops, float64(len(p.Hops)), s.From, s.To)
		e.Gauge(pathReached, boolValue(s.PathFlow.Reached), s.From, s.To)
		e.Gauge(pathFingerprint, float64(trace.PathFingerprint(p)), s.From, s.To)
		e.Gauge(pathPackets, float64(p.Packets), s.From, s.To)
		e.Gauge(pathSeconds, p.Duration.Seconds(), s.From, s.To)
		for _, h := range p.Hops {
			ttl := strconv.Itoa(int(h.TTL))
			e.Gauge(pathLoss, h.LossRatio(), s.From, s.To, ttl)
			if h.Answered == 0 {
				continue
			}
			e.Gauge(pathRTT, h.Median.Seconds(), s.From, s.To, ttl)
			e.Gauge(pathHop, 1, s.From, s.To, ttl, h.Address.String())
		}
		if d := s.PathDelay; d != nil {
			e.Gauge(pathDelay, d.Delay, s.From, s.To, strconv.Itoa(d.TTL))
		}
	}
}
