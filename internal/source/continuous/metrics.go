package continuous

import (
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const namespace = "subsegment_continuous"

// maxSeriesKeys bounds the segments and hops one entry keeps series for:
// names come from the chain's hops, and a chain that renames its hops on
// every probe must not grow the exporter's memory or Prometheus' series.
const maxSeriesKeys = 64

// Metrics are the continuous probes' series on /metrics. Histograms are
// per entry (each entry may have its own buckets), created as segments and
// hops are first seen, and removed with their entry; they keep their
// counts in the entry's own arrays (histogram.go).
type Metrics struct {
	mu      sync.Mutex
	entries map[entryKey]*entryMetrics
	// classic: histograms have classic buckets besides native ones.
	classic bool
	now     func() time.Time

	probes      *prometheus.CounterVec
	failures    *prometheus.CounterVec
	retransmits *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
	dropped     *prometheus.CounterVec
	segSLA      *prometheus.GaugeVec
	hopSLA      *prometheus.GaugeVec
	stamp       *stampMetrics
	paths       *pathMetrics

	rttDesc, connectDesc, residenceDesc, waitDesc *prometheus.Desc
}

type entryKey struct{ target, module string }

type entryMetrics struct {
	key     entryKey
	buckets []float64
	// target and module labels, shared by the entry's histograms
	target, module *dto.LabelPair
	// mu guards the counts of the entry's histograms: the entry's probe
	// observes them all under it, and a scrape writes each under it.
	mu        sync.Mutex
	segments  map[[2]string]*segmentSeries
	hops      map[string]*hopSeries
	keysTaken int
}

type segmentSeries struct {
	rtt, connect *histogram
	retransmits  prometheus.Counter
	slaSet       bool
	// lastRetrans is both ends' retransmissions at the previous probe of
	// the current connection, for the counter's increase.
	lastRetrans uint32
	connection  uint64
	// reasons are those of the failures counted on the segment (the
	// failure series to delete with the entry).
	reasons []string
}

type hopSeries struct {
	residence *histogram
	// wait is made on the first wait a probe reports (withWait): a hop
	// that reports none (an HTTP proxy, a STAMP reflector) has no wait
	// series.
	wait   *histogram
	labels []*dto.LabelPair
	entry  *entryMetrics
	slaSet bool
}

// MetricsOption changes what NewMetrics makes.
type MetricsOption func(*Metrics)

// WithoutClassicBuckets keeps native histograms only
// (--continuous.classic-buckets=false): each histogram is one native
// series for a scraper that takes them, instead of one per bucket.
func WithoutClassicBuckets() MetricsOption { return func(m *Metrics) { m.classic = false } }

// NewMetrics registers the continuous metrics with reg.
func NewMetrics(reg prometheus.Registerer, opts ...MetricsOption) *Metrics {
	entry := []string{"target", "module"}
	seg := []string{"target", "module", "from", "to"}
	hop := []string{"target", "module", "hop"}
	m := &Metrics{
		entries: map[entryKey]*entryMetrics{},
		classic: true,
		now:     time.Now,
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
			Help: "The hop's residence SLA from the entry's module."}, hop),
		stamp: newSTAMPMetrics(),
		rttDesc: prometheus.NewDesc(namespace+"_segment_rtt_seconds",
			"Round trip time of the segment from each hop's own clock, per continuous probe (the network and both kernels, without the hops' waits).", seg, nil),
		connectDesc: prometheus.NewDesc(namespace+"_segment_connect_seconds",
			"Handshake time of each connection the near end opened for the entry (its first, and every reconnect).", seg, nil),
		residenceDesc: prometheus.NewDesc(namespace+"_hop_residence_seconds",
			"Time each continuous probe spent inside the hop (forward and return), its wait for a CPU included.", hop, nil),
		waitDesc: prometheus.NewDesc(namespace+"_hop_wait_seconds",
			"Part of the hop's residence each continuous probe spent in the hop's kernel before the hop read it (hops that report one: not HTTP proxies nor STAMP reflectors).", hop, nil),
	}
	for _, o := range opts {
		o(m)
	}
	reg.MustRegister(m)
	m.paths = newPathMetrics(reg)
	return m
}

// Describe sends nothing: the histograms' label values and buckets are
// known only as entries run (an unchecked collector).
func (m *Metrics) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector. The histograms are listed
// under the lock and sent after it: the registry writes them (under
// their entry's lock) while Collect still sends, and an entry's probe may
// hold its lock while it asks for a new series.
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
	hs := make([]*histogram, 0, 4*len(m.entries))
	for _, e := range m.entries {
		for _, s := range e.segments {
			hs = append(hs, s.rtt, s.connect)
		}
		for _, h := range e.hops {
			hs = append(hs, h.residence)
			if h.wait != nil {
				hs = append(hs, h.wait)
			}
		}
	}
	m.mu.Unlock()
	for _, h := range hs {
		ch <- h
	}
}

// entry returns an entry's series, created with its buckets.
func (m *Metrics) entry(target, module string, buckets []float64) *entryMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := entryKey{target, module}
	e := m.entries[k]
	if e == nil {
		if !m.classic {
			buckets = nil
		}
		e = &entryMetrics{key: k, buckets: buckets, segments: map[[2]string]*segmentSeries{}, hops: map[string]*hopSeries{},
			target: labelPair("target", target), module: labelPair("module", module)}
		m.entries[k] = e
		// Pre-initialised, so that rate() sees the first failure.
		m.probes.WithLabelValues(target, module, "success")
		m.probes.WithLabelValues(target, module, "failure")
	}
	return e
}

// failed counts a failure on a segment that has series.
func (m *Metrics) failed(e *entryMetrics, from, to, reason string) {
	m.failures.WithLabelValues(e.key.target, e.key.module, from, to, reason).Inc()
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := e.segments[[2]string{from, to}]; s != nil && !slices.Contains(s.reasons, reason) {
		s.reasons = append(s.reasons, reason)
	}
}

// remove deletes every series of an entry (once it stopped): by their
// label values, which the entry's segments and hops give — deleting by
// partial labels (DeletePartialMatch) looks at every series of every
// entry, and a reload that replaced 10 000 entries did that 10 000 times.
func (m *Metrics) remove(target, module string) {
	k := entryKey{target, module}
	m.mu.Lock()
	e := m.entries[k]
	delete(m.entries, k)
	m.mu.Unlock()
	m.probes.DeleteLabelValues(target, module, "success")
	m.probes.DeleteLabelValues(target, module, "failure")
	m.lastSuccess.DeleteLabelValues(target, module)
	m.dropped.DeleteLabelValues(target, module)
	if e != nil {
		for seg, s := range e.segments {
			from, to := seg[0], seg[1]
			m.retransmits.DeleteLabelValues(target, module, from, to)
			m.segSLA.DeleteLabelValues(target, module, from, to)
			for _, reason := range s.reasons {
				m.failures.DeleteLabelValues(target, module, from, to, reason)
			}
			m.stamp.remove(target, module, from, to)
		}
		for name := range e.hops {
			m.hopSLA.DeleteLabelValues(target, module, name)
		}
	}
	m.paths.remove(target, module)
}

func labelPair(name, value string) *dto.LabelPair { return &dto.LabelPair{Name: &name, Value: &value} }

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
	// One list of label pairs, sorted by name, for both histograms
	// (MakeLabelPairs would give each its own, for 10 000 entries' series).
	labels := []*dto.LabelPair{labelPair("from", from), e.module, e.target, labelPair("to", to)}
	s := &segmentSeries{
		rtt:     newHistogram(m.rttDesc, labels, e.buckets, &e.mu, m.now),
		connect: newHistogram(m.connectDesc, labels, e.buckets, &e.mu, m.now),
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
	labels := []*dto.LabelPair{labelPair("hop", name), e.module, e.target}
	h := &hopSeries{
		residence: newHistogram(m.residenceDesc, labels, e.buckets, &e.mu, m.now),
		labels:    labels, entry: e,
	}
	e.hops[name] = h
	return h
}

// withWait makes the hop's wait series, for the first wait a probe
// reports. It holds both locks: a scrape reads wait under m.mu, a probe
// observes it under the entry's.
func (m *Metrics) withWait(h *hopSeries) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h.entry.mu.Lock()
	defer h.entry.mu.Unlock()
	if h.wait == nil {
		h.wait = newHistogram(m.waitDesc, h.labels, h.entry.buckets, &h.entry.mu, m.now)
	}
}
