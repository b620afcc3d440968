package continuous

import (
	"slices"
	"strconv"
	"time"
)

// windowCap bounds the samples a window keeps: the last minute at the
// default 1 s interval (and down to 0.5 s); at shorter intervals, the last
// 127 probes. 127 and not 128 so that a window (1528 bytes) fits the
// allocator's 1536-byte class and a hop's two windows its 3072-byte one.
const windowCap = 127

// window keeps a series' recent samples for the chain page, in constant
// memory. Samples are stamped and aged on a monotonic clock (moment): a
// step of the wall clock neither keeps old samples nor drops new ones.
// Values are kept as float32 (seconds to seven significant digits, more
// than the page shows): as float64, with the moments interleaved, the
// windows of 10 000 entries held 121 of the exporter's 412 MB in use.
type window struct {
	// the samples' moments (monotonic ns) and values
	at      [windowCap]int64
	value   [windowCap]float32
	next, n uint8
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
	w.at[w.next], w.value[w.next] = at, float32(v)
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
	for i := range int(w.n) {
		if at := w.at[i]; at >= cut && at <= now {
			vals = append(vals, float64(w.value[i]))
		}
	}
	if len(vals) == 0 {
		return Quantiles{}
	}
	slices.Sort(vals)
	return Quantiles{Median: decimal32(vals[(len(vals)-1)/2]), P99: decimal32(vals[min(len(vals)-1, (len(vals)*99+99)/100-1)]), Samples: len(vals)}
}

// decimal32 is a value kept as float32 as the float64 of its shortest
// decimal form: 0.001, not 0.0010000000474974513, on the page.
func decimal32(v float64) float64 {
	var buf [32]byte
	d, err := strconv.ParseFloat(string(strconv.AppendFloat(buf[:0], v, 'g', -1, 32)), 64)
	if err != nil {
		return v
	}
	return d
}
