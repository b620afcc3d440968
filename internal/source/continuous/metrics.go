package continuous

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "subsegment_continuous"

// maxSeriesKeys bounds the segments and hops one entry keeps series for:
// names come from the chain's hops, and a chain that renames its hops on
// every probe must not grow the exporter's memory or Prometheus' series.
const maxSeriesKeys = 64

// Metrics are the continuous probes' series on /metrics. Histograms are
// per entry (each entry may have its own buckets), created as segments and
// hops are first seen, and removed with their entry.
type Metrics struct {
	mu      sync.Mutex
	entries map[entryKey]*entryMetrics

	probes      *prometheus.CounterVec
	failures    *prometheus.CounterVec
	retransmits *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
	dropped     *prometheus.CounterVec
	segSLA      *prometheus.GaugeVec
	hopSLA      *prometheus.GaugeVec
	stamp       *stampMetrics
	paths       *pathMetrics
}

type entryKey struct{ target, module string }

type entryMetrics struct {
	key       entryKey
	buckets   []float64
	segments  map[[2]string]*segmentSeries
	hops      map[string]*hopSeries
	keysTaken int
}

type segmentSeries struct {
	rtt, connect prometheus.Histogram
	retransmits  prometheus.Counter
	slaSet       bool
	// lastRetrans is both ends' retransmissions at the previous probe of
	// the current connection, for the counter's increase.
	lastRetrans uint32
	connection  uint64
}

type hopSeries struct {
	residence prometheus.Histogram
	// wait is made on the first wait observed: a hop that reports none
	// (an HTTP proxy, a STAMP reflector) has no wait series.
	wait    prometheus.Histogram
	labels  prometheus.Labels
	buckets []float64
	slaSet  bool
}

// NewMetrics registers the continuous metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	entry := []string{"target", "module"}
	seg := []string{"target", "module", "from", "to"}
	m := &Metrics{
		entries: map[entryKey]*entryMetrics{},
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "probes_total",
			Help: "Continuous probes sent, by result (success: through the chain and back; failure: the chain broke, see subsegment_continuous_segment_failures_total)."},
			append(entry, "result")),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "segment_failures_total",
			Help: "Continuous probes (and reconnects) that failed, by the segment where the chain broke and the reason."},
			append(seg, "reason")),
		retransmits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "segment_retransmits_total",
			Help: "TCP retransmissions on the segment's connection, both ends together (TCP_INFO of the near end, forward, and of the far end, return)."}, seg),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "last_success_timestamp_seconds",
			Help: "When the entry's last probe came back through the whole chain, Unix time."}, entry),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "series_dropped_total",
			Help: "Probe results not recorded because the entry already has series for 64 segments and hops (a chain whose hops keep changing names)."}, entry),
		segSLA: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "segment_sla_seconds",
			Help: "The segment's rtt SLA from the entry's module, for comparing quantiles of subsegment_continuous_segment_rtt_seconds with."}, seg),
		hopSLA: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "hop_sla_seconds",
			Help: "The hop's residence SLA from the entry's module."}, append(entry, "hop")),
		stamp: newSTAMPMetrics(),
	}
	reg.MustRegister(m)
	m.paths = newPathMetrics(reg)
	return m
}

// Describe sends nothing: the histograms' label values and buckets are
// known only as entries run (an unchecked collector).
func (m *Metrics) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.probes.Collect(ch)
	m.failures.Collect(ch)
	m.retransmits.Collect(ch)
	m.lastSuccess.Collect(ch)
	m.dropped.Collect(ch)
	m.segSLA.Collect(ch)
	m.hopSLA.Collect(ch)
	m.stamp.collect(ch)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.entries {
		for _, s := range e.segments {
			s.rtt.Collect(ch)
			s.connect.Collect(ch)
		}
		for _, h := range e.hops {
			h.residence.Collect(ch)
			if h.wait != nil {
				h.wait.Collect(ch)
			}
		}
	}
}

// entry returns an entry's series, created with its buckets.
func (m *Metrics) entry(target, module string, buckets []float64) *entryMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := entryKey{target, module}
	e := m.entries[k]
	if e == nil {
		e = &entryMetrics{key: k, buckets: buckets, segments: map[[2]string]*segmentSeries{}, hops: map[string]*hopSeries{}}
		m.entries[k] = e
		// Pre-initialised, so that rate() sees the first failure.
		m.probes.WithLabelValues(target, module, "success")
		m.probes.WithLabelValues(target, module, "failure")
	}
	return e
}

// remove deletes every series of an entry.
func (m *Metrics) remove(target, module string) {
	m.mu.Lock()
	delete(m.entries, entryKey{target, module})
	m.mu.Unlock()
	l := prometheus.Labels{"target": target, "module": module}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.probes, m.failures, m.retransmits, m.lastSuccess, m.dropped, m.segSLA, m.hopSLA} {
		v.DeletePartialMatch(l)
	}
	m.stamp.remove(l)
	m.paths.remove(target, module)
}

func histogram(name, help string, buckets []float64, labels prometheus.Labels) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: name, Help: help, ConstLabels: labels, Buckets: buckets,
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	})
}

// segment returns a segment's series, nil past the entry's bound.
func (m *Metrics) segment(e *entryMetrics, from, to string) *segmentSeries {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{from, to}
	if s := e.segments[k]; s != nil {
		return s
	}
	if e.keysTaken >= maxSeriesKeys {
		m.dropped.WithLabelValues(e.key.target, e.key.module).Inc()
		return nil
	}
	e.keysTaken++
	l := prometheus.Labels{"target": e.key.target, "module": e.key.module, "from": from, "to": to}
	s := &segmentSeries{
		rtt:     histogram("segment_rtt_seconds", "Round trip time of the segment from each hop's own clock, per continuous probe (the network and both kernels, without the hops' waits).", e.buckets, l),
		connect: histogram("segment_connect_seconds", "Handshake time of each connection the near end opened for the entry (its first, and every reconnect).", e.buckets, l),
	}
	e.segments[k] = s
	return s
}

// knownSegment returns a segment's series if it has one, making none.
func (m *Metrics) knownSegment(e *entryMetrics, from, to string) *segmentSeries {
	m.mu.Lock()
	defer m.mu.Unlock()
	return e.segments[[2]string{from, to}]
}

// hop returns a hop's series, nil past the entry's bound.
func (m *Metrics) hop(e *entryMetrics, name string) *hopSeries {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := e.hops[name]; h != nil {
		return h
	}
	if e.keysTaken >= maxSeriesKeys {
		m.dropped.WithLabelValues(e.key.target, e.key.module).Inc()
		return nil
	}
	e.keysTaken++
	l := prometheus.Labels{"target": e.key.target, "module": e.key.module, "hop": name}
	h := &hopSeries{
		residence: histogram("hop_residence_seconds", "Time each continuous probe spent inside the hop (forward and return), its wait for a CPU included.", e.buckets, l),
		labels:    l, buckets: e.buckets,
	}
	e.hops[name] = h
	return h
}

// observeWait adds a hop's wait, making its series on first use.
func (m *Metrics) observeWait(h *hopSeries, v float64) {
	m.mu.Lock()
	if h.wait == nil {
		h.wait = histogram("hop_wait_seconds", "Part of the hop's residence each continuous probe spent in the hop's kernel before the hop read it (hops that report one: not HTTP proxies nor STAMP reflectors).", h.buckets, h.labels)
	}
	w := h.wait
	m.mu.Unlock()
	w.Observe(v)
}
