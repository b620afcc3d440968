// Package sla compares a probe run's segments with their SLAs; the
// exporter exposes the verdicts, and a violation is what triggers the SNMP
// context.
package sla

import (
	"math"
	"time"

	"github.com/subsegment/subsegment_exporter/config"
	"github.com/subsegment/subsegment_exporter/prober"
)

// Verdict is one segment against its SLA.
type Verdict struct {
	From, To  string
	Threshold time.Duration
	// RTT is the segment's median rtt (0 when no probe crossed it).
	RTT time.Duration
	// Exceeded: the median is over the threshold, or the segment broke.
	Exceeded bool
	// Broken: no probe crossed the segment.
	Broken bool
	// Ratio is RTT / Threshold; +Inf for a broken segment.
	Ratio float64
}

// Evaluate returns a verdict for every segment that has an SLA.
func Evaluate(r *prober.Result, s config.SLA) []Verdict {
	var out []Verdict
	for _, seg := range r.Segments {
		th := s.Threshold(seg.From, seg.To)
		if th <= 0 {
			continue
		}
		v := Verdict{From: seg.From, To: seg.To, Threshold: th}
		if seg.Samples == 0 {
			v.Broken, v.Exceeded, v.Ratio = true, true, math.Inf(1)
		} else {
			v.RTT = time.Duration(seg.RTT.Median * float64(time.Second))
			v.Ratio = float64(v.RTT) / float64(th)
			v.Exceeded = v.RTT > th
		}
		out = append(out, v)
	}
	return out
}

// Annotation is how a probe run asks hops for their in-band variables
// under the module's inband mode: on the warm-up probe (always), or on one
// more probe after the measured ones when a reachable segment is over its
// SLA (on_violation).
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
