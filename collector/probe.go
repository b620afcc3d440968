package collector

import (
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

var (
	segLabels = []string{"from", "to"}
	hopLabels = []string{"hop"}

	probeSuccess  = mustFamily("probe_success", "Whether every probe went through the chain and back.")
	probeDuration = mustFamily("probe_duration_seconds", "How long the probe run took.")
	hopsReached   = mustFamily(namespace+"_probe_hops_reached", "Hops beyond the source that answered.")
	failedSegment = mustFamily(namespace+"_probe_failed_segment_info", "The segment where the chain broke, with the reason ("+peer.ReasonList()+").", "from", "to", "reason")
	dupNames      = mustFamily(namespace+"_probe_duplicate_hop_names", "1 when hops of the chain share a name: their labels are numbered in chain order (same, same#2).")

	segRTT     = mustFamily(namespace+"_segment_rtt_seconds", "Segment round trip time, median of this scrape's probes, from each hop's own clock: the network and both kernels, without the hops' waits.", segLabels...)
	segRTTMin  = mustFamily(namespace+"_segment_rtt_min_seconds", "Segment round trip time, minimum of this scrape's probes.", segLabels...)
	segRTTMax  = mustFamily(namespace+"_segment_rtt_max_seconds", "Segment round trip time, maximum of this scrape's probes.", segLabels...)
	segJitter  = mustFamily(namespace+"_segment_jitter_seconds", "Mean absolute difference between consecutive probes' segment rtts.", segLabels...)
	segConnect = mustFamily(namespace+"_segment_connect_seconds", "Handshake time of the connection the near end opened for this scrape.", segLabels...)
	segTCPRTT  = mustFamily(namespace+"_segment_tcp_rtt_seconds", "The kernel's smoothed rtt (TCP_INFO) of the near end's connection.", segLabels...)
	segTCPMin  = mustFamily(namespace+"_segment_tcp_min_rtt_seconds", "The kernel's minimum rtt (TCP_INFO) of the near end's connection.", segLabels...)
	segRetrans = mustFamily(namespace+"_segment_retransmits", "Retransmissions on the segment's connection during this scrape, both ends together (TCP_INFO total_retrans of the near end, forward, and of the far end, return).", segLabels...)
	segPMTU    = mustFamily(namespace+"_segment_pmtu_bytes", "Path MTU of the near end's connection (TCP_INFO).", segLabels...)
	segOneWay  = mustFamily(namespace+"_segment_one_way_delay_seconds", "One-way delay, median; only where both hops report synchronised clocks.", "from", "to", "direction")
	segOWBound = mustFamily(namespace+"_segment_one_way_delay_error_bound_seconds", "Error bound of the one-way delays: the sum of both hops' maximum clock errors.", segLabels...)
	segSLA     = mustFamily(namespace+"_segment_sla_seconds", "The segment's rtt SLA from the module.", segLabels...)
	segSLAExc  = mustFamily(namespace+"_segment_sla_exceeded", "Whether the segment's median rtt is over its SLA (1), or no probe crossed it (1).", segLabels...)

	segRes = mustFamily(namespace+"_segment_resolution_seconds", "Resolution of the segment's figures: the coarser of its ends' stamps (HTTP proxies' Subsegment-Timing units; the figures are rounded to it). Absent where both ends are relays.", segLabels...)

	segIndex = mustFamily(namespace+"_segment_index", "Position of the segment in the chain, 0 for the source's: what dashboards order segments by.", segLabels...)
	hopIndex = mustFamily(namespace+"_hop_index", "Position of the hop in the chain, 0 for the source.", hopLabels...)

	hopResidence = mustFamily(namespace+"_hop_residence_seconds", "Time probes spent inside the hop (forward + return), median, its wait included.", hopLabels...)
	hopWait      = mustFamily(namespace+"_hop_wait_seconds", "Part of the hop's residence the probes spent in its kernel before it read them (waiting for a CPU or for its loop), median.", hopLabels...)
	hopKernel    = mustFamily(namespace+"_hop_kernel_timestamps", "Whether the hop took every probe's arrival times from the kernel's receive timestamps (1), or fell back to its read time (0).", hopLabels...)
	hopSynced    = mustFamily(namespace+"_hop_clock_synced", "Whether the hop's clock was synchronised (adjtimex without STA_UNSYNC) during the probes.", hopLabels...)
	hopSLA       = mustFamily(namespace+"_hop_sla_seconds", "The hop's residence SLA from the module.", hopLabels...)
	hopSLAExc    = mustFamily(namespace+"_hop_sla_exceeded", "Whether the hop's median residence is over its SLA.", hopLabels...)
)

// WriteProbe adds the metrics of one probe run and its SLA verdicts to
// the /probe answer e. Every label value comes from the result, whose hop
// names the wire format validated; e still checks each one.
func WriteProbe(e *Exposition, r *prober.Result, verdicts []sla.Verdict) {
	e.Gauge(probeSuccess, boolValue(r.Success))
	e.Gauge(probeDuration, r.Duration.Seconds())
	e.Gauge(hopsReached, float64(r.HopsReached))
	e.Gauge(dupNames, boolValue(r.DuplicateNames))
	if f := r.Failure; f != nil {
		e.Gauge(failedSegment, 1, f.From, f.To, f.Reason)
	}
	for i := range r.Segments {
		writeSegment(e, i, &r.Segments[i])
	}
	writePaths(e, r)
	for i := range r.Hops {
		writeHop(e, i, &r.Hops[i], r.HTTP && i > 0)
	}
	for _, v := range verdicts {
		if v.Hop != "" {
			e.Gauge(hopSLA, v.Threshold.Seconds(), v.Hop)
			e.Gauge(hopSLAExc, boolValue(v.Exceeded), v.Hop)
			continue
		}
		e.Gauge(segSLA, v.Threshold.Seconds(), v.From, v.To)
		e.Gauge(segSLAExc, boolValue(v.Exceeded), v.From, v.To)
	}
}

func writeSegment(e *Exposition, i int, s *prober.SegmentResult) {
	e.Gauge(segIndex, float64(i), s.From, s.To)
	if s.Samples > 0 {
		e.Gauge(segRTT, s.RTT.Median, s.From, s.To)
		e.Gauge(segRTTMin, s.RTT.Min, s.From, s.To)
		e.Gauge(segRTTMax, s.RTT.Max, s.From, s.To)
		e.Gauge(segJitter, s.Jitter, s.From, s.To)
	}
	if s.Resolution > 0 {
		e.Gauge(segRes, s.Resolution, s.From, s.To)
	}
	if s.Connect != nil {
		e.Gauge(segConnect, *s.Connect, s.From, s.To)
	}
	if t := s.TCP; t != nil {
		e.Gauge(segTCPRTT, t.RTT, s.From, s.To)
		e.Gauge(segTCPMin, t.MinRTT, s.From, s.To)
		e.Gauge(segPMTU, float64(t.PMTU), s.From, s.To)
	}
	if s.TCP != nil || s.TCPFar != nil {
		e.Gauge(segRetrans, float64(s.Retransmits), s.From, s.To)
	}
	if ow := s.OneWay; ow != nil {
		e.Gauge(segOneWay, ow.Forward, s.From, s.To, "forward")
		e.Gauge(segOneWay, ow.Return, s.From, s.To, "return")
		e.Gauge(segOWBound, ow.ErrorBound, s.From, s.To)
	}
	writeSTAMP(e, s)
}

// writeHop adds one hop's metrics; an HTTP proxy reports neither its
// clock nor its stamps' source, only durations.
func writeHop(e *Exposition, i int, h *prober.HopResult, proxy bool) {
	if h.Name == prober.HiddenHop && h.Identity() == 0 {
		return
	}
	e.Gauge(hopIndex, float64(i), h.Name)
	if h.Residence.Max > 0 {
		e.Gauge(hopResidence, h.Residence.Median, h.Name)
	}
	if proxy {
		return
	}
	if h.Residence.Max > 0 {
		if !h.STAMP {
			e.Gauge(hopWait, h.Wait.Median, h.Name)
		}
		e.Gauge(hopKernel, boolValue(h.KernelTimestamps), h.Name)
	}
	e.Gauge(hopSynced, boolValue(h.ClockSynced), h.Name)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
