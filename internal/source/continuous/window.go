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
// memory.
type window struct {
	at    [windowCap]int64 // Unix ns
	value [windowCap]float64
	next  int
	n     int
}

func (w *window) add(at time.Time, v float64) {
	w.at[w.next], w.value[w.next] = at.UnixNano(), v
	w.next = (w.next + 1) % windowCap
	w.n = min(w.n+1, windowCap)
}

// Quantiles are a window's median and 99th percentile over a span.
type Quantiles struct {
	Median, P99 float64
	Samples     int
}

// since summarises the samples newer than span before now.
func (w *window) since(now time.Time, span time.Duration, scratch []float64) Quantiles {
	cut := now.Add(-span).UnixNano()
	vals := scratch[:0]
	for i := 0; i < w.n; i++ {
		if w.at[i] >= cut {
			vals = append(vals, w.value[i])
		}
	}
	if len(vals) == 0 {
		return Quantiles{}
	}
	slices.Sort(vals)
	return Quantiles{Median: vals[(len(vals)-1)/2], P99: vals[min(len(vals)-1, (len(vals)*99+99)/100-1)], Samples: len(vals)}
}
