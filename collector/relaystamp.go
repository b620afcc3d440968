package collector

import "github.com/prometheus/client_golang/prometheus"

// RelaySTAMP is what a relay whose next hop is a STAMP reflector
// (--forward-to stamp://) counts of its test packets. It implements
// relay.STAMPMetrics; registered only on such relays.
type RelaySTAMP struct {
	reflected, lost prometheus.Counter
	forward, ret    prometheus.Counter
}

// NewRelaySTAMP registers the counters with reg.
func NewRelaySTAMP(reg prometheus.Registerer) *RelaySTAMP {
	packets := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "relay", Name: "stamp_packets_total",
		Help: "STAMP test packets this relay sent its next hop, a STAMP reflector, one per probe, by result: reflected (the reply came back within the probe's budget) or lost (the probe failed, reason timeout).",
	}, []string{"result"})
	lost := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "relay", Name: "stamp_lost_packets_total",
		Help: "STAMP test packets to the next hop lost per direction, as the reflector's Direct Measurement counters name them (each when a later reply names it): forward (never reached the reflector), return (reflected, never came back).",
	}, []string{"direction"})
	r := &RelaySTAMP{reflected: packets.WithLabelValues("reflected"), lost: packets.WithLabelValues("lost"),
		forward: lost.WithLabelValues("forward"), ret: lost.WithLabelValues("return")}
	reg.MustRegister(packets, lost)
	return r
}

// STAMPPacket implements relay.STAMPMetrics.
func (r *RelaySTAMP) STAMPPacket(reflected bool) {
	if reflected {
		r.reflected.Inc()
		return
	}
	r.lost.Inc()
}

// STAMPLost implements relay.STAMPMetrics.
func (r *RelaySTAMP) STAMPLost(forward, ret int64) {
	r.forward.Add(float64(forward))
	r.ret.Add(float64(ret))
}
