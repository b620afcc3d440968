// Package sla compares a probe run's segments and hops with their SLAs
// and says how a module probes; the exporter exposes the verdicts, and a
// violation is what triggers the SNMP context.
//
// Layering (internal/architecture_test.go): floor 3; it may import the
// prober and internal/config, never relay, snmp, collector, internal/output
// or internal/exporter.
package sla

import (
	"math"
	"net/http"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// Verdict is one segment's rtt, or one hop's residence, against its SLA.
type Verdict struct {
	// From and To name a segment; Hop names a hop (a residence SLA).
	From, To, Hop string
	Threshold     time.Duration
	// Value is the median rtt or residence (0 when no probe crossed a
	// segment).
	Value time.Duration
	// Exceeded: the median is over the threshold, or the segment broke.
	Exceeded bool
	// Broken: no probe crossed the segment.
	Broken bool
	// Ratio is Value / Threshold; +Inf for a broken segment.
	Ratio float64
}

// Subject says what the verdict is about, the way the SNMP playbooks name it.
func (v Verdict) Subject() config.Subject {
	return config.Subject{From: v.From, To: v.To, Hop: v.Hop}
}

// Evaluate returns a verdict for every segment and every hop that has an
// SLA: segments first, in chain order, then hops in chain order.
func Evaluate(r *prober.Result, s config.SLA) []Verdict {
	var out []Verdict
	each(r, s, func(v Verdict) bool {
		out = append(out, v)
		return true
	})
	return out
}

// Violated says whether a verdict of Evaluate is exceeded, without making
// the list: a continuous entry asks after every probe.
func Violated(r *prober.Result, s config.SLA) bool {
	violated := false
	each(r, s, func(v Verdict) bool {
		violated = v.Exceeded
		return !violated
	})
	return violated
}

// each calls f with Evaluate's verdicts, in its order, until f returns
// false.
func each(r *prober.Result, s config.SLA, f func(Verdict) bool) {
	for i := range r.Segments {
		seg := &r.Segments[i] // not a copy: every probe of an entry asks
		th := s.Threshold(seg.From, seg.To)
		if th <= 0 {
			continue
		}
		v := Verdict{From: seg.From, To: seg.To, Threshold: th}
		if seg.Samples == 0 {
			v.Broken, v.Exceeded, v.Ratio = true, true, math.Inf(1)
		} else {
			v.judge(seg.RTT.Median)
		}
		if !f(v) {
			return
		}
	}
	for i := range r.Hops {
		h := &r.Hops[i]
		th := s.HopThreshold(h.Name)
		if th <= 0 || h.Residence.Max == 0 {
			continue
		}
		v := Verdict{Hop: h.Name, Threshold: th}
		v.judge(h.Residence.Median)
		if !f(v) {
			return
		}
	}
}

func (v *Verdict) judge(median float64) {
	v.Value = time.Duration(median * float64(time.Second))
	v.Ratio = float64(v.Value) / float64(v.Threshold)
	v.Exceeded = v.Value > v.Threshold
}

// Annotation is how a probe run asks hops for their in-band variables
// under the module's inband mode: on the warm-up probe (always), or on one
// more probe after the measured ones when a reachable segment or a hop is
// over its SLA (on_violation).
func Annotation(m *config.Module) (warmup bool, after func(*prober.Result) bool) {
	switch m.Inband {
	case config.InbandAlways:
		return true, nil
	case config.InbandOnViolation:
		return false, func(r *prober.Result) bool {
			for _, v := range Evaluate(r, m.SLA) {
				if v.Exceeded && !v.Broken {
					return true
				}
			}
			return false
		}
	}
	return false, nil
}

// ProbeOptions is how a module probes a target: its probes, interval,
// padding and in-band requests. The caller adds who probes (Source,
// Timeout, keys, TLS, clocks). /probe and the Nagios check both use it.
func ProbeOptions(m *config.Module, target string) prober.Options {
	o := prober.Options{Target: target, Count: m.Probes, Interval: time.Duration(m.Interval), PayloadBytes: m.PayloadBytes}
	if m.IsSTAMP() {
		stampOptions(m, &o)
		return o
	}
	if m.IsHTTP() && m.HTTP != nil {
		h := m.HTTP
		header := http.Header{}
		for k, v := range h.Headers {
			header.Set(k, string(v))
		}
		o.HTTP = &prober.HTTPOptions{Method: h.Method, Header: header, Host: h.Host, ValidStatus: h.ValidStatus, Hops: h.Hops, Backend: h.Backend}
		o.TLS = h.TLSConfig()
		return o
	}
	o.AnnotateWarmup, o.AnnotateAfter = Annotation(m)
	o.Trace = Tracing(m)
	return o
}

// Tracing is when a probe run traces the routers under its segments
// under the module's trace mode: after every run that went through
// (always), or as context for a reachable segment over its SLA
// (on_violation, as the SNMP context is asked); nil for never. The caller
// adds the process's Tracer.
func Tracing(m *config.Module) *prober.TraceOptions {
	switch m.Trace {
	case config.TraceAlways:
		return &prober.TraceOptions{}
	case config.TraceOnViolation, "":
		return &prober.TraceOptions{When: func(r *prober.Result) bool { return SegmentOverSLA(r, m.SLA) }}
	}
	return nil
}

// SegmentOverSLA reports whether a segment that probes crossed is over its
// rtt SLA.
func SegmentOverSLA(r *prober.Result, s config.SLA) bool {
	for _, v := range Evaluate(r, s) {
		if v.Hop == "" && v.Exceeded && !v.Broken {
			return true
		}
	}
	return false
}
