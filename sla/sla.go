// Package sla compares a probe run's segments with their SLAs; the
// exporter exposes the verdicts, and a violation is what triggers the SNMP
// context.
package sla

import (
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
			v.Broken, v.Exceeded, v.Ratio = true, true, inf
		} else {
			v.RTT = time.Duration(seg.RTT.Median * float64(time.Second))
			v.Ratio = float64(v.RTT) / float64(th)
			v.Exceeded = v.RTT > th
		}
		out = append(out, v)
	}
	return out
}

var inf = func() float64 { var z float64; return 1 / z }()
