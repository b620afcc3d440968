package continuous

import (
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A continuous entry's histograms are observed on every probe (five or
// six per probe, thousands of probes a second) and read only at a scrape.
// client_golang's histogram keeps its native buckets in a sync.Map (a
// map lookup per observation, an allocation per new bucket) and two
// copies of every count for lock-free writers; ours has one writer at a
// time (the entry's, under the entry's lock) and keeps the counts in
// plain arrays. At a scrape it fills the same dto.Histogram a
// client_golang histogram with the same options would — classic buckets,
// native sparse buckets, the limit on their number and its resets — so
// names, series and values are what they were (tested against
// client_golang's own histogram).

// Native histogram settings of every continuous histogram (client_golang's
// NativeHistogramBucketFactor, NativeHistogramMaxBucketNumber and
// NativeHistogramMinResetDuration; no widening of the zero bucket).
const (
	nativeBucketFactor = 1.1
	nativeMaxBuckets   = 160
	nativeMinReset     = time.Hour
	// The schema bucketFactor gives: the largest n with 2^(2^-n) ≤ 1.1.
	nativeSchema int32 = 3
	// Schemas run from -4 (each bucket a factor 2^16) to 8.
	nativeSchemaMin = -4
)

// nativeZeroThreshold is client_golang's default: observations at most
// this far from zero count in the zero bucket.
var nativeZeroThreshold = prometheus.DefNativeHistogramZeroThreshold

// nativeBounds[schema] are the fractions of a power of two where the
// buckets of a positive schema start: 2^(i/2^schema - 1) for i below
// 2^schema (the Prometheus native histogram boundaries). Each is the one
// before it times 2^(2^-schema), or, every other one, the coarser
// schema's — so the floats are exactly those client_golang and
// Prometheus use (a value on a boundary falls in the same bucket).
var nativeBounds = func() [9][]float64 {
	var b [9][]float64
	b[0] = []float64{0.5}
	for s := 1; s <= 8; s++ {
		factor := math.Exp2(math.Exp2(float64(-s)))
		b[s] = make([]float64, 1<<s)
		b[s][0] = 0.5
		for i := 1; i < len(b[s]); i++ {
			if i%2 == 0 {
				b[s][i] = b[s-1][i/2]
			} else {
				b[s][i] = b[s][i-1] * factor
			}
		}
	}
	return b
}()

// nativeKey is the index of the native bucket v (positive or negative,
// not NaN) falls in under schema: bucket k holds (2^((k-1)/2^s), 2^(k/2^s)].
func nativeKey(v float64, schema int32) int {
	inf := math.IsInf(v, 0)
	if inf {
		// As the largest float, one bucket further.
		v = math.MaxFloat64
	}
	frac, exp := frexp(math.Abs(v))
	var key int
	if schema > 0 {
		bounds := nativeBounds[schema]
		key = searchBounds(bounds, frac) + (exp-1)*len(bounds)
	} else {
		key = exp
		if frac == 0.5 {
			key--
		}
		offset := (1 << -schema) - 1
		key = (key + offset) >> -schema
	}
	if inf {
		key++
	}
	return key
}

// frexp is math.Frexp of a positive x, read off its bits when it is a
// normal number.
func frexp(x float64) (float64, int) {
	const mantissa = 1<<52 - 1
	bits := math.Float64bits(x)
	e := int(bits>>52) & 0x7ff
	if e == 0 || e == 0x7ff {
		return math.Frexp(x)
	}
	return math.Float64frombits(bits&mantissa | 1022<<52), e - 1022
}

// searchBounds is sort.SearchFloat64s without its calls: the first of
// the ascending bounds at least v (len(bounds) for none).
func searchBounds(bounds []float64, v float64) int {
	lo, hi := 0, len(bounds)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if bounds[mid] < v {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// sparseBuckets are native buckets of one sign: counts of consecutive
// keys from lo. Keys seen since the last reset have a count of at least
// one; the others are zero.
type sparseBuckets struct {
	lo     int
	counts []int64
}

// add counts n at key and says whether the bucket is new. The array grows
// to take in a key outside it (rarely: a distribution's range settles).
func (b *sparseBuckets) add(key int, n int64) bool {
	switch {
	case len(b.counts) == 0:
		b.lo = key
		b.counts = append(b.counts[:0], 0)
	case key < b.lo:
		grow := b.lo - key
		b.counts = append(b.counts, make([]int64, grow)...)
		copy(b.counts[grow:], b.counts)
		clear(b.counts[:grow])
		b.lo = key
	case key >= b.lo+len(b.counts):
		b.counts = append(b.counts, make([]int64, key-b.lo-len(b.counts)+1)...)
	}
	c := &b.counts[key-b.lo]
	created := *c == 0
	*c += n
	return created
}

func (b *sparseBuckets) reset() { b.counts = b.counts[:0] }

// halve merges the buckets into those of the next lower schema (each
// twice as wide) and returns how many buckets there are then: key k goes
// to (k+1)/2 for k > 0, k/2 otherwise (client_golang's doubleBucketWidth).
func (b *sparseBuckets) halve() int {
	var merged sparseBuckets
	n := 0
	for i, c := range b.counts {
		if c == 0 {
			continue
		}
		k := b.lo + i
		if k > 0 {
			k++
		}
		if merged.add(k/2, c) {
			n++
		}
	}
	*b = merged
	return n
}

// histogram is one series of an entry: a histogram with classic buckets
// (bounds; none with --continuous.classic-buckets=false) and native ones.
// Observations and writes hold mu, the entry's lock.
type histogram struct {
	// What an observation writes comes first, in one cache line mostly:
	// a probe of ten thousand entries finds them cold.
	count uint64
	sum   float64
	// populated is how many native buckets hold observations: at most
	// nativeMaxBuckets, then their width doubles (or all counts start
	// again, an hour after they last did).
	populated int
	schema    int32
	pos       sparseBuckets
	classic   []uint64
	bounds    []float64
	// resetAt, when set, is when the counts start from zero again (an
	// hour after the width last doubled); created is when they last did.
	resetAt time.Time
	zero    uint64
	neg     sparseBuckets
	created time.Time

	desc   *prometheus.Desc
	labels []*dto.LabelPair
	mu     *sync.Mutex
	now    func() time.Time
}

func newHistogram(desc *prometheus.Desc, labels []*dto.LabelPair, bounds []float64, mu *sync.Mutex, now func() time.Time) *histogram {
	return &histogram{desc: desc, labels: labels, bounds: bounds, mu: mu, now: now,
		classic: make([]uint64, len(bounds)), schema: nativeSchema, created: now()}
}

// classicBucket is the classic bucket of v: the first whose upper bound
// is at least v; len(bounds) for +Inf (and NaN).
func (h *histogram) classicBucket(v float64) int {
	n := len(h.bounds)
	if n == 0 || v <= h.bounds[0] {
		return 0
	}
	if v > h.bounds[n-1] {
		return n
	}
	if n < 35 {
		for i, b := range h.bounds {
			if v <= b {
				return i
			}
		}
		return n
	}
	return searchBounds(h.bounds, v)
}

// observe records v. The caller holds mu.
func (h *histogram) observe(v float64, now time.Time) {
	h.resetIfDue(now)
	h.add(v)
	if h.populated > nativeMaxBuckets {
		h.limit(v, now)
	}
}

func (h *histogram) add(v float64) {
	if i := h.classicBucket(v); i < len(h.classic) {
		h.classic[i]++
	}
	h.sum += v
	if !math.IsNaN(v) {
		key := nativeKey(v, h.schema)
		switch {
		case v > nativeZeroThreshold:
			if h.pos.add(key, 1) {
				h.populated++
			}
		case v < -nativeZeroThreshold:
			if h.neg.add(key, 1) {
				h.populated++
			}
		default:
			h.zero++
		}
	}
	h.count++
}

// limit keeps the native buckets at most nativeMaxBuckets: all counts
// start again with v when they last did an hour ago or more (and no such
// reset is due), else the buckets double in width until they fit, and
// the counts start again an hour after they last did.
func (h *histogram) limit(v float64, now time.Time) {
	if h.resetAt.IsZero() && now.Sub(h.created) >= nativeMinReset {
		h.reset(now)
		h.add(v)
		return
	}
	if h.resetAt.IsZero() {
		h.resetAt = h.created.Add(nativeMinReset)
	}
	if h.schema == nativeSchemaMin {
		return
	}
	h.schema--
	h.populated = h.pos.halve() + h.neg.halve()
}

// resetIfDue starts the counts again when a reset is due.
func (h *histogram) resetIfDue(now time.Time) {
	if !h.resetAt.IsZero() && !now.Before(h.resetAt) {
		h.reset(now)
	}
}

func (h *histogram) reset(now time.Time) {
	h.count, h.sum, h.zero, h.schema, h.populated = 0, 0, 0, nativeSchema, 0
	clear(h.classic)
	h.pos.reset()
	h.neg.reset()
	h.created, h.resetAt = now, time.Time{}
}

// Desc implements prometheus.Metric.
func (h *histogram) Desc() *prometheus.Desc { return h.desc }

// histogramOut holds a written histogram's values in as few allocations
// as a scrape of ten thousand entries' histograms can afford.
type histogramOut struct {
	h         dto.Histogram
	count     uint64
	sum       float64
	zero      uint64
	threshold float64
	schema    int32
	buckets   []dto.Bucket
	bucketPtr []*dto.Bucket
	cumulate  []uint64
}

// Write implements prometheus.Metric: the histogram as client_golang's
// histogram.Write gives it.
func (h *histogram) Write(out *dto.Metric) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.resetIfDue(h.now())
	o := &histogramOut{count: h.count, sum: h.sum, zero: h.zero, threshold: nativeZeroThreshold, schema: h.schema}
	o.h.SampleCount, o.h.SampleSum = &o.count, &o.sum
	o.h.CreatedTimestamp = timestamppb.New(h.created)
	if n := len(h.bounds); n > 0 {
		o.buckets, o.bucketPtr, o.cumulate = make([]dto.Bucket, n), make([]*dto.Bucket, n), make([]uint64, n)
		var cum uint64
		for i := range h.bounds {
			cum += h.classic[i]
			o.cumulate[i] = cum
			o.buckets[i].CumulativeCount, o.buckets[i].UpperBound = &o.cumulate[i], &h.bounds[i]
			o.bucketPtr[i] = &o.buckets[i]
		}
		o.h.Bucket = o.bucketPtr
	}
	o.h.ZeroThreshold, o.h.Schema, o.h.ZeroCount = &o.threshold, &o.schema, &o.zero
	o.h.NegativeSpan, o.h.NegativeDelta = spans(&h.neg)
	o.h.PositiveSpan, o.h.PositiveDelta = spans(&h.pos)
	if o.threshold == 0 && o.zero == 0 && len(o.h.PositiveSpan) == 0 && len(o.h.NegativeSpan) == 0 {
		// Without this, a native histogram without observations looks
		// like a classic one to a scraper.
		var zero int32
		var none uint32
		o.h.PositiveSpan = []*dto.BucketSpan{{Offset: &zero, Length: &none}}
	}
	out.Label = h.labels
	out.Histogram = &o.h
	return nil
}

// spans encodes native buckets as spans and deltas: a gap of one or two
// empty buckets stays inside a span, a longer one starts the next.
func spans(b *sparseBuckets) ([]*dto.BucketSpan, []int64) {
	nSpans, nDeltas, next, first := 0, 0, 0, true
	for i, c := range b.counts {
		if c == 0 {
			continue
		}
		k := b.lo + i
		if first || k-next > 2 {
			nSpans++
			nDeltas++
		} else {
			nDeltas += k - next + 1
		}
		next, first = k+1, false
	}
	if nSpans == 0 {
		return nil, nil
	}
	type span struct {
		s      dto.BucketSpan
		offset int32
		length uint32
	}
	all := make([]span, nSpans)
	ptrs := make([]*dto.BucketSpan, 0, nSpans)
	deltas := make([]int64, 0, nDeltas)
	var prev int64
	next, first = 0, true
	for i, c := range b.counts {
		if c == 0 {
			continue
		}
		k := b.lo + i
		if first || k-next > 2 {
			sp := &all[len(ptrs)]
			sp.offset = int32(k - next)
			sp.s.Offset, sp.s.Length = &sp.offset, &sp.length
			ptrs = append(ptrs, &sp.s)
		} else {
			for range k - next {
				all[len(ptrs)-1].length++
				deltas = append(deltas, -prev)
				prev = 0
			}
		}
		all[len(ptrs)-1].length++
		deltas = append(deltas, c-prev)
		prev, next, first = c, k+1, false
	}
	return ptrs, deltas
}
