package collector

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// Traces are the process's own traces of its next hop (a relay's, asked
// by probes that want the routers under its segment) on its /metrics. It
// implements relay.TraceMetrics.
type Traces struct {
	traces  *prometheus.CounterVec
	packets prometheus.Counter
	seconds prometheus.Counter
}

// NewTraces registers the trace metrics with reg; method and why say how
// this process traces (trace.Capability), as a gauge set to 1.
func NewTraces(reg prometheus.Registerer, method string) *Traces {
	t := &Traces{
		traces: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "traces_total",
			Help: "Traces of the route to the next hop this relay ran for probes that asked, by method (tcp, udp, none) and status (reached, max_ttl, silent, unreachable, deadline, failed, disabled).",
		}, []string{"method", "status"}),
		packets: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "trace_packets_total",
			Help: "Probe packets this relay's traces sent (bounded by --trace.max-packets-per-second).",
		}),
		seconds: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "trace_seconds_total",
			Help: "Time this relay's traces took, all together.",
		}),
	}
	capability := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "trace_method_info",
		Help:        "How this process traces the routers under its segment: tcp (the connection's own flow, CAP_NET_RAW) or udp (the unprivileged fallback), or none (--no-trace.enabled).",
		ConstLabels: prometheus.Labels{"method": method},
	})
	capability.Set(1)
	reg.MustRegister(t.traces, t.packets, t.seconds, capability)
	return t
}

// Traced implements relay.TraceMetrics.
func (t *Traces) Traced(p *frame.Path) {
	t.traces.WithLabelValues(p.Method.String(), p.Status.String()).Inc()
	t.packets.Add(float64(p.Packets))
	t.seconds.Add(min(p.Duration, time.Hour).Seconds())
}
