package collector

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Source is the source exporter's own metrics (on /metrics, not /probe).
type Source struct {
	probes   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	reloads  prometheus.Gauge
	reloadAt prometheus.Gauge
	snmpErrs *prometheus.CounterVec
}

// NewSource registers the source's metrics with reg.
func NewSource(reg prometheus.Registerer) *Source {
	s := &Source{
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "probes_total",
			Help: "/probe requests served, by module and result (success, failure, or rejected: bad request before any connection).",
		}, []string{"module", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "probe_duration_seconds",
			Help:                            "Time a /probe took, by module.",
			Buckets:                         []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"module"}),
		reloads: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "config_last_reload_successful",
			Help: "Whether the last configuration load succeeded (1) or failed and the previous one is still in use (0).",
		}),
		reloadAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "config_last_reload_success_timestamp_seconds",
			Help: "When the configuration was last loaded successfully, Unix time.",
		}),
		snmpErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "snmp_errors_total",
			Help: "SNMP queries for context that failed, by hop and reason (timeout, auth, no_such_object, unreachable, error). They never fail a probe.",
		}, []string{"hop", "reason"}),
	}
	reg.MustRegister(s.probes, s.duration, s.reloads, s.reloadAt, s.snmpErrs)
	return s
}

// Probed counts a /probe.
func (s *Source) Probed(module, result string, took time.Duration) {
	s.probes.WithLabelValues(module, result).Inc()
	if result != "rejected" {
		s.duration.WithLabelValues(module).Observe(took.Seconds())
	}
}

// Reloaded records a configuration load.
func (s *Source) Reloaded(ok bool) {
	if ok {
		s.reloads.Set(1)
		s.reloadAt.SetToCurrentTime()
	} else {
		s.reloads.Set(0)
	}
}

// SNMPError counts a failed SNMP query.
func (s *Source) SNMPError(hop, reason string) { s.snmpErrs.WithLabelValues(hop, reason).Inc() }
