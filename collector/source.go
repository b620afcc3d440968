package collector

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Source is the source exporter's own metrics (on /metrics, not /probe).
// Every label value is bounded: module names only of configured modules,
// hops only of configured SNMP agents.
type Source struct {
	reg           prometheus.Registerer
	probes        *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	unknownModule prometheus.Counter
	collectErrors prometheus.Counter
	panics        prometheus.Counter
	reloads       prometheus.Gauge
	reloadAt      prometheus.Gauge
	snmpErrs      *prometheus.CounterVec
}

// NewSource registers the source's metrics with reg.
func NewSource(reg prometheus.Registerer) *Source {
	s := &Source{
		reg: reg,
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "probes_total",
			Help: "/probe requests served, by configured module and result (success, failure, or rejected: bad request before any connection).",
		}, []string{"module", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "probe_duration_seconds",
			Help:                            "Time a /probe took, by module.",
			Buckets:                         []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"module"}),
		unknownModule: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "module_unknown_total",
			Help: "/probe requests that named a module the configuration does not have (rejected with 400; not counted by module, so that clients cannot create series).",
		}),
		collectErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "collect_errors_total",
			Help: "Metrics of /probe answers that could not be built (an invalid label value); the answer then fails to render, visibly.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "panics_total",
			Help: "Unexpected panics caught at the /probe boundary (answered 500 and logged); a bug to report.",
		}),
		reloads: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "config_last_reload_successful",
			Help: "Whether the last configuration load succeeded (1) or failed and the previous one is still in use (0). Only where --config.file is given.",
		}),
		reloadAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "exporter", Name: "config_last_reload_success_timestamp_seconds",
			Help: "When the configuration was last loaded successfully, Unix time. Only where --config.file is given.",
		}),
		snmpErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "snmp_errors_total",
			Help: "SNMP queries for context that failed, by configured hop and reason (timeout, auth, no_such_object, unreachable, error). They never fail a probe.",
		}, []string{"hop", "reason"}),
	}
	reg.MustRegister(s.probes, s.duration, s.unknownModule, s.collectErrors, s.panics, s.snmpErrs)
	return s
}

// WatchConfig registers the reload metrics: only a process that loads a
// configuration file has them, so that a generic "reload failed" alert
// does not fire for every relay without one.
func (s *Source) WatchConfig() {
	s.reg.MustRegister(s.reloads, s.reloadAt)
}

// Probed counts a /probe of a configured module.
func (s *Source) Probed(module, result string, took time.Duration) {
	s.probes.WithLabelValues(module, result).Inc()
	if result != "rejected" {
		s.duration.WithLabelValues(module).Observe(took.Seconds())
	}
}

// UnknownModule counts a /probe naming a module that is not configured.
func (s *Source) UnknownModule() { s.unknownModule.Inc() }

// CollectError counts a metric of a /probe answer that could not be built.
func (s *Source) CollectError() { s.collectErrors.Inc() }

// Panicked counts a panic caught at the /probe boundary.
func (s *Source) Panicked() { s.panics.Inc() }

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
