package reflector

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a request is refused (label values of
// subsegment_stamp_refused_packets_total; a fixed set).
const (
	refusedShort = iota
	refusedTooLarge
	refusedAuth
	refusedRate
	refusedCount
)

var refusedNames = [refusedCount]string{"short", "too_large", "auth", "rate"}

// Why a packet was answered without a session (label values of
// subsegment_stamp_stateless_replies_total, by the sessions' noSession*).
var statelessNames = [noSessionCount]string{"sessions", "address"}

// TLV flags the reflector set (label values of subsegment_stamp_tlvs_flagged_total).
const (
	flagUnrecognized = iota
	flagMalformed
	flagIntegrity
	flagCount
)

var flagNames = [flagCount]string{"unrecognized", "malformed", "integrity"}

// residenceBuckets are the upper bounds (seconds) of the residence
// histogram: T3 − T2 of every reply.
var residenceBuckets = []float64{5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3}

type histogram struct {
	counts [12]atomic.Uint64 // len(residenceBuckets) + the rest
	sumNs  atomic.Int64
}

func (h *histogram) observe(ns int64) {
	if ns < 0 {
		ns = 0
	}
	s := float64(ns) / 1e9
	i := 0
	for i < len(residenceBuckets) && s > residenceBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(ns)
}

// counters are the loop's; read at scrape time.
type counters struct {
	reflected  atomic.Uint64
	refused    [refusedCount]atomic.Uint64
	stateless  [noSessionCount]atomic.Uint64
	flagged    [flagCount]atomic.Uint64
	sendErrors atomic.Uint64
	recvErrors atomic.Uint64
	sessions   atomic.Int64
	residence  histogram
}

var (
	descReflected = prometheus.NewDesc("subsegment_stamp_reflected_packets_total", "STAMP test packets this relay's reflector answered.", nil, nil)
	descRefused   = prometheus.NewDesc("subsegment_stamp_refused_packets_total",
		"STAMP test packets the reflector did not answer, by reason: short (below the base packet), too_large (over --stamp.max-packet-bytes), auth (HMAC failed: wrong key or forged), rate (over --stamp.max-packets-per-second).", []string{"reason"}, nil)
	descStateless = prometheus.NewDesc("subsegment_stamp_stateless_replies_total",
		"STAMP test packets of a new session the stateful reflector answered statelessly (the sender's sequence number, no counters), by reason: sessions (--stamp.max-sessions live sessions), address (the sender's address holds --stamp.max-sessions-per-address).", []string{"reason"}, nil)
	descFlagged = prometheus.NewDesc("subsegment_stamp_tlvs_flagged_total",
		"TLVs the reflector returned flagged (RFC 8972): unrecognized (U), malformed (M), integrity (I: the HMAC TLV did not verify).", []string{"flag"}, nil)
	descSessions  = prometheus.NewDesc("subsegment_stamp_sessions", "Stateful STAMP sessions the reflector keeps (updated each second).", nil, nil)
	descErrors    = prometheus.NewDesc("subsegment_stamp_socket_errors_total", "Errors of the reflector's socket, by operation (send: a reply the kernel refused; receive: ICMP errors of earlier replies).", []string{"op"}, nil)
	descResidence = prometheus.NewDesc("subsegment_stamp_residence_seconds", "Reflector residence T3 − T2 of every reply: from the kernel's receive stamp to the reply's transmit time.", nil, nil)
)

// Describe implements prometheus.Collector.
func (r *Reflector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReflected, descRefused, descStateless, descFlagged, descSessions, descErrors, descResidence} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (r *Reflector) Collect(ch chan<- prometheus.Metric) {
	m := &r.m
	ch <- prometheus.MustNewConstMetric(descReflected, prometheus.CounterValue, float64(m.reflected.Load()))
	for i, name := range refusedNames {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(m.refused[i].Load()), name)
	}
	for i, name := range statelessNames {
		ch <- prometheus.MustNewConstMetric(descStateless, prometheus.CounterValue, float64(m.stateless[i].Load()), name)
	}
	for i, name := range flagNames {
		ch <- prometheus.MustNewConstMetric(descFlagged, prometheus.CounterValue, float64(m.flagged[i].Load()), name)
	}
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(m.sessions.Load()))
	ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(m.sendErrors.Load()), "send")
	ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(m.recvErrors.Load()), "receive")
	buckets := make(map[float64]uint64, len(residenceBuckets))
	var cum uint64
	for i, le := range residenceBuckets {
		cum += m.residence.counts[i].Load()
		buckets[le] = cum
	}
	cum += m.residence.counts[len(residenceBuckets)].Load()
	ch <- prometheus.MustNewConstHistogram(descResidence, cum, float64(m.residence.sumNs.Load())/1e9, buckets)
}

// Stats are the reflector's counters, for tests and logs.
type Stats struct {
	Reflected uint64
	Refused   map[string]uint64
	Stateless map[string]uint64
	Flagged   map[string]uint64
	Sessions  int64
}

// Stats reads the counters.
func (r *Reflector) Stats() Stats {
	s := Stats{Reflected: r.m.reflected.Load(), Refused: map[string]uint64{}, Stateless: map[string]uint64{}, Flagged: map[string]uint64{}, Sessions: r.m.sessions.Load()}
	for i, name := range refusedNames {
		s.Refused[name] = r.m.refused[i].Load()
	}
	for i, name := range statelessNames {
		s.Stateless[name] = r.m.stateless[i].Load()
	}
	for i, name := range flagNames {
		s.Flagged[name] = r.m.flagged[i].Load()
	}
	return s
}
