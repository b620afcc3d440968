package collector

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/prober"
	"github.com/subsegment/subsegment_exporter/sla"
)

var (
	segLabels = []string{"from", "to"}

	probeSuccess  = prometheus.NewDesc("probe_success", "Whether every probe went through the chain and back.", nil, nil)
	probeDuration = prometheus.NewDesc("probe_duration_seconds", "How long the probe run took.", nil, nil)
	hopsReached   = prometheus.NewDesc(namespace+"_probe_hops_reached", "Hops beyond the source that answered.", nil, nil)
	failedSegment = prometheus.NewDesc(namespace+"_probe_failed_segment_info", "The segment where the chain broke, with the reason (refused, timeout, reset, closed, unreachable, loop, too_many_hops, bad_frame, auth, overloaded, unknown).", []string{"from", "to", "reason"}, nil)

	segRTT     = prometheus.NewDesc(namespace+"_segment_rtt_seconds", "Segment round trip time, median of this scrape's probes, from each hop's own clock.", segLabels, nil)
	segRTTMin  = prometheus.NewDesc(namespace+"_segment_rtt_min_seconds", "Segment round trip time, minimum of this scrape's probes.", segLabels, nil)
	segRTTMax  = prometheus.NewDesc(namespace+"_segment_rtt_max_seconds", "Segment round trip time, maximum of this scrape's probes.", segLabels, nil)
	segJitter  = prometheus.NewDesc(namespace+"_segment_jitter_seconds", "Mean absolute difference between consecutive probes' segment rtts.", segLabels, nil)
	segConnect = prometheus.NewDesc(namespace+"_segment_connect_seconds", "Handshake time of the connection the near end opened for this scrape.", segLabels, nil)
	segTCPRTT  = prometheus.NewDesc(namespace+"_segment_tcp_rtt_seconds", "The kernel's smoothed rtt (TCP_INFO) of the near end's connection.", segLabels, nil)
	segTCPMin  = prometheus.NewDesc(namespace+"_segment_tcp_min_rtt_seconds", "The kernel's minimum rtt (TCP_INFO) of the near end's connection.", segLabels, nil)
	segRetrans = prometheus.NewDesc(namespace+"_segment_retransmits", "Retransmissions on the near end's connection during this scrape (TCP_INFO total_retrans).", segLabels, nil)
	segPMTU    = prometheus.NewDesc(namespace+"_segment_pmtu_bytes", "Path MTU of the near end's connection (TCP_INFO).", segLabels, nil)
	segOneWay  = prometheus.NewDesc(namespace+"_segment_one_way_delay_seconds", "One-way delay, median; only where both hops report synchronised clocks.", []string{"from", "to", "direction"}, nil)
	segOWBound = prometheus.NewDesc(namespace+"_segment_one_way_delay_error_bound_seconds", "Error bound of the one-way delays: the sum of both hops' maximum clock errors.", segLabels, nil)
	segSLA     = prometheus.NewDesc(namespace+"_segment_sla_seconds", "The segment's rtt SLA from the module.", segLabels, nil)
	segSLAExc  = prometheus.NewDesc(namespace+"_segment_sla_exceeded", "Whether the segment's median rtt is over its SLA (1), or no probe crossed it (1).", segLabels, nil)

	segIndex = prometheus.NewDesc(namespace+"_segment_index", "Position of the segment in the chain, 0 for the source's: what dashboards order segments by.", segLabels, nil)
	hopIndex = prometheus.NewDesc(namespace+"_hop_index", "Position of the hop in the chain, 0 for the source.", []string{"hop"}, nil)

	hopResidence = prometheus.NewDesc(namespace+"_hop_residence_seconds", "Time probes spent inside the hop (forward + return), median.", []string{"hop"}, nil)
	hopSynced    = prometheus.NewDesc(namespace+"_hop_clock_synced", "Whether the hop's clock was synchronised (adjtimex without STA_UNSYNC) during the probes.", []string{"hop"}, nil)
)

// Probe renders one probe run as metrics of the /probe answer, into the
// fresh registry of that request.
type Probe struct {
	Result   *prober.Result
	Verdicts []sla.Verdict
	// Extra collects further metrics (the SNMP context).
	Extra func(ch chan<- prometheus.Metric)
}

// Describe implements prometheus.Collector.
func (p *Probe) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(p, ch) }

// Collect implements prometheus.Collector.
func (p *Probe) Collect(ch chan<- prometheus.Metric) {
	r := p.Result
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(probeSuccess, boolValue(r.Success))
	gauge(probeDuration, r.Duration.Seconds())
	gauge(hopsReached, float64(r.HopsReached))
	if f := r.Failure; f != nil {
		gauge(failedSegment, 1, f.From, f.To, f.Reason)
	}
	for i, s := range r.Segments {
		gauge(segIndex, float64(i), s.From, s.To)
		if s.Samples > 0 {
			gauge(segRTT, s.RTT.Median, s.From, s.To)
			gauge(segRTTMin, s.RTT.Min, s.From, s.To)
			gauge(segRTTMax, s.RTT.Max, s.From, s.To)
			gauge(segJitter, s.Jitter, s.From, s.To)
		}
		if s.Connect != nil {
			gauge(segConnect, *s.Connect, s.From, s.To)
		}
		if t := s.TCP; t != nil {
			gauge(segTCPRTT, t.RTT, s.From, s.To)
			gauge(segTCPMin, t.MinRTT, s.From, s.To)
			gauge(segRetrans, float64(t.Retransmits), s.From, s.To)
			gauge(segPMTU, float64(t.PMTU), s.From, s.To)
		}
		if ow := s.OneWay; ow != nil {
			gauge(segOneWay, ow.Forward, s.From, s.To, "forward")
			gauge(segOneWay, ow.Return, s.From, s.To, "return")
			gauge(segOWBound, ow.ErrorBound, s.From, s.To)
		}
	}
	for _, v := range p.Verdicts {
		gauge(segSLA, v.Threshold.Seconds(), v.From, v.To)
		gauge(segSLAExc, boolValue(v.Exceeded), v.From, v.To)
	}
	for i, h := range r.Hops {
		if h.Name == prober.HiddenHop {
			continue
		}
		gauge(hopIndex, float64(i), h.Name)
		if h.Residence.Max > 0 {
			gauge(hopResidence, h.Residence.Median, h.Name)
		}
		gauge(hopSynced, boolValue(h.ClockSynced), h.Name)
	}
	if p.Extra != nil {
		p.Extra(ch)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
