package continuous

import (
	"slices"
	"time"
)

// windowCap bounds the samples a window keeps: the last minute at the
// default 1 s interval (and down to 0.5 s); at shorter intervals, the last
// 128 probes. 2 KiB per series: 1000 entries hold about 22 MiB of them.
const windowCap = 128

// window keeps a series' recent samples for the chain page, in constant
// memory. Samples are stamped and aged on a monotonic clock (moment): a
// step of the wall clock neither keeps old samples nor drops new ones.
type window struct {
	// samples, each stamped with a moment (monotonic ns) beside its
	// value: a probe writes one cache line per window
	samples [windowCap]struct {
		at    int64
		value float64
	}
	next int
	n    int
}

// moments turns a time into nanoseconds on a monotonic clock: its
// monotonic reading (time.Now() carries one) against the origin's. Tests
// replace it to step the wall clock under a steady monotonic one.
type moments func(time.Time) int64

// monotonicSince is the moments of a process: since origin, by the
// monotonic readings of both times (time.Time.Sub uses them when both
// carry one).
func monotonicSince(origin time.Time) moments {
	return func(t time.Time) int64 { return int64(t.Sub(origin)) }
}

func (w *window) add(at int64, v float64) {
	w.samples[w.next].at, w.samples[w.next].value = at, v
	w.next = (w.next + 1) % windowCap
	w.n = min(w.n+1, windowCap)
}

// Quantiles are a window's median and 99th percentile over a span.
type Quantiles struct {
	Median, P99 float64
	Samples     int
}

// since summarises the samples of the span before now (moments), and
// none stamped after now.
func (w *window) since(now int64, span time.Duration, scratch []float64) Quantiles {
	cut := now - int64(span)
	vals := scratch[:0]
	for i := 0; i < w.n; i++ {
		if s := &w.samples[i]; s.at >= cut && s.at <= now {
			vals = append(vals, s.value)
		}
	}
	if len(vals) == 0 {
		return Quantiles{}
	}
	slices.Sort(vals)
	return Quantiles{Median: vals[(len(vals)-1)/2], P99: vals[min(len(vals)-1, (len(vals)*99+99)/100-1)], Samples: len(vals)}
}
