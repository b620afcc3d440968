package timing

import (
	"math"
	"math/bits"
	"time"
)

// Accumulator summarises an unbounded series of durations in constant
// memory (stream mode sees millions of frames): exact count, min, max and
// jitter, and quantiles from a log-linear histogram with 16 buckets per
// power of two (within 1/16 of the true value).
type Accumulator struct {
	count     int64
	min, max  time.Duration
	last      time.Duration
	jitterSum float64
	buckets   [accBuckets]uint64
}

const accBuckets = 16 + 54*16

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 1024 {
		return int(v >> 6)
	}
	exp := bits.Len64(v) - 1
	sub := int(v>>(exp-4)) & 15
	return 16 + (exp-10)*16 + sub
}

// bucketMid is the middle of a bucket's range.
func bucketMid(i int) time.Duration {
	if i < 16 {
		return time.Duration(i<<6 + 32)
	}
	exp := (i-16)/16 + 10
	sub := (i - 16) % 16
	lo := uint64(16+sub) << (exp - 4)
	width := uint64(1) << (exp - 4)
	return time.Duration(lo + width/2)
}

// Add records one sample.
func (a *Accumulator) Add(d time.Duration) {
	if a.count == 0 || d < a.min {
		a.min = d
	}
	if a.count == 0 || d > a.max {
		a.max = d
	}
	if a.count > 0 {
		a.jitterSum += math.Abs(float64(d - a.last))
	}
	a.last = d
	a.count++
	a.buckets[bucketOf(d)]++
}

// Count is the number of samples.
func (a *Accumulator) Count() int64 { return a.count }

// Quantile returns the q-quantile (0..1), clamped to the exact min and max.
func (a *Accumulator) Quantile(q float64) time.Duration {
	if a.count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(a.count)))
	rank = max(rank, 1)
	var seen uint64
	for i, n := range a.buckets {
		seen += n
		if seen >= rank {
			return min(max(bucketMid(i), a.min), a.max)
		}
	}
	return a.max
}

// Stats returns the summary in the same shape as Summarise.
func (a *Accumulator) Stats() Stats {
	s := Stats{Count: int(a.count), Min: a.min, Max: a.max, Median: a.Quantile(0.5)}
	if a.count > 1 {
		s.Jitter = time.Duration(a.jitterSum / float64(a.count-1))
	}
	return s
}
