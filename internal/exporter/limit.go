package exporter

import (
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxConcurrentProbes bounds the /probe requests running at once
// (--probe.max-concurrent): enough for a Prometheus that scrapes about
// (targets × module timeout / scrape interval) probes at once, a bound on
// what clients of an exposed HTTP port can make the source do (dial, send
// probes, query SNMP agents).
const DefaultMaxConcurrentProbes = 512

// ProbeLimit bounds the /probe requests that probe at once; requests
// beyond it are answered 503 at once, and counted.
type ProbeLimit struct {
	max      int64
	inFlight atomic.Int64
	over     prometheus.Counter
}

// NewProbeLimit allows max probes at once (0: no limit) and registers
// its metrics with reg.
func NewProbeLimit(reg prometheus.Registerer, max int) *ProbeLimit {
	l := &ProbeLimit{max: int64(max), over: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "subsegment", Subsystem: "exporter", Name: "probes_over_limit_total",
		Help: "/probe requests answered 503 because --probe.max-concurrent probes were already running.",
	})}
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "subsegment", Subsystem: "exporter", Name: "probes_in_flight",
		Help: "/probe requests probing right now (at most --probe.max-concurrent).",
	}, func() float64 { return float64(l.inFlight.Load()) })
	reg.MustRegister(l.over, inFlight)
	return l
}

// acquire takes a slot, or answers 503 and returns false. A nil limit
// allows everything.
func (l *ProbeLimit) acquire(w http.ResponseWriter) bool {
	if l == nil {
		return true
	}
	if n := l.inFlight.Add(1); l.max > 0 && n > l.max {
		l.inFlight.Add(-1)
		l.over.Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("too many probes at once: %d /probe requests are running (--probe.max-concurrent=%d): retry later, or raise the limit if Prometheus scrapes this many targets at once", l.max, l.max), http.StatusServiceUnavailable)
		return false
	}
	return true
}

// release gives the slot back.
func (l *ProbeLimit) release() {
	if l != nil {
		l.inFlight.Add(-1)
	}
}
