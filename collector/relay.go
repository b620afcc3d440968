// Package collector turns what the relay and the prober do into
// Prometheus metrics: one file per collector, as in node_exporter.
//
// It owns every metric name and help text; docs/metrics.md lists them and a
// test compares the two. Layering (internal/architecture_test.go): floor 5;
// it may import the source end, snmp, internal/config and internal/wire,
// never relay (it implements relay.Metrics without importing it),
// internal/exporter or cmd.
package collector

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

const namespace = "subsegment"

// ResidenceBuckets are the classic buckets of the residence histogram,
// from a fast relay's microseconds to a loaded host's tens of ms.
var ResidenceBuckets = []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3}

// Relay is a relay's own metrics (on its /metrics). It implements
// relay.Metrics; every child is resolved up front so that the hot path
// does not allocate.
type Relay struct {
	relayed     [2][2]prometheus.Counter // [stream][ok]
	failures    []prometheus.Counter     // by reason
	connections prometheus.Gauge
	residence   prometheus.Histogram
	wait        prometheus.Histogram
	streamBytes prometheus.Counter
}

// NewRelay registers a relay's metrics with reg.
func NewRelay(reg prometheus.Registerer) *Relay {
	relayed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "relay", Name: "frames_total",
		Help: "Replies this relay wrote back upstream, by kind (probe, stream) and result (ok, or error when it answered with an error record).",
	}, []string{"kind", "result"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "relay", Name: "errors_total",
		Help: "Failures this relay reported in error records, by reason.",
	}, []string{"reason"})
	r := &Relay{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "relay", Name: "connections",
			Help: "Upstream connections this relay serves now.",
		}),
		residence: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "relay", Name: "residence_seconds",
			Help:                            "Time frames spent inside this relay (forward + return), per frame.",
			Buckets:                         ResidenceBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}),
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "relay", Name: "wait_seconds",
			Help:                            "Part of each frame's residence it spent in the kernel before this relay read it (waiting for a CPU or for the relay's loop), from the kernel's receive timestamps.",
			Buckets:                         ResidenceBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}),
		streamBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "stream_bytes_total",
			Help: "Stream-mode payload bytes this relay carried back upstream.",
		}),
	}
	for i, kind := range []string{"probe", "stream"} {
		for j, result := range []string{"error", "ok"} {
			r.relayed[i][j] = relayed.WithLabelValues(kind, result)
		}
	}
	for _, reason := range peer.Reasons() {
		r.failures = append(r.failures, failures.WithLabelValues(reason.String()))
	}
	reg.MustRegister(relayed, failures, r.connections, r.residence, r.wait, r.streamBytes)
	return r
}

// ConnectionOpened implements relay.Metrics.
func (r *Relay) ConnectionOpened() { r.connections.Inc() }

// ConnectionClosed implements relay.Metrics.
func (r *Relay) ConnectionClosed() { r.connections.Dec() }

// Relayed implements relay.Metrics.
func (r *Relay) Relayed(kind frame.Kind, ok bool) {
	i, j := 0, 0
	if kind == frame.KindStreamReply || kind == frame.KindStreamRequest {
		i = 1
	}
	if ok {
		j = 1
	}
	r.relayed[i][j].Inc()
}

// Failed implements relay.Metrics.
func (r *Relay) Failed(reason peer.Reason) {
	if int(reason) < len(r.failures) {
		r.failures[reason].Inc()
	}
}

// Residence implements relay.Metrics.
func (r *Relay) Residence(d time.Duration) { r.residence.Observe(d.Seconds()) }

// Wait implements relay.Metrics.
func (r *Relay) Wait(d time.Duration) { r.wait.Observe(d.Seconds()) }

// StreamBytes implements relay.Metrics.
func (r *Relay) StreamBytes(n int) { r.streamBytes.Add(float64(n)) }
