package stamp

import (
	"math/bits"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
)

// ErrorEstimate is the 16-bit Error Estimate of RFC 4656 §4.1.2 with the Z
// bit of RFC 8186: S (bit 15) the clock is synchronised to UTC by an
// external source, Z (bit 14) the timestamp's format, Scale (6 bits) and
// Multiplier (8 bits): the error is Multiplier × 2^(Scale − 32) seconds.
// A Multiplier of 0 is invalid (the RFC forbids it): no bound is known.
type ErrorEstimate uint16

const (
	errestS = 0x8000
	errestZ = 0x4000
)

// NewErrorEstimate encodes a clock state: synced sets S, f sets Z, and
// bound, rounded up to the next representable value (an estimate never
// claims better than it knows), sets Scale and Multiplier.
func NewErrorEstimate(synced bool, f Format, bound time.Duration) ErrorEstimate {
	var e ErrorEstimate
	if synced {
		e |= errestS
	}
	if f == FormatPTP {
		e |= errestZ
	}
	scale, mult := scaleMultiplier(bound)
	return e | ErrorEstimate(scale)<<8 | ErrorEstimate(mult)
}

// ErrorEstimateOf is the Error Estimate of a kernel clock state: S only
// when the kernel says the clock is synchronised (STA_UNSYNC clear), the
// bound from the kernel's maximum error (adjtimex maxerror, which grows by
// 500 ppm of the time since the daemon last disciplined the clock).
func ErrorEstimateOf(s clock.Sync, f Format) ErrorEstimate {
	return NewErrorEstimate(s.Synced, f, time.Duration(s.MaxErrorMicros)*time.Microsecond)
}

// scaleMultiplier finds the smallest Scale whose Multiplier (≤ 255) covers
// bound: Multiplier = ceil(bound × 2^(32 − Scale) / 1 s).
func scaleMultiplier(bound time.Duration) (uint8, uint8) {
	if bound <= 0 {
		return 0, 1
	}
	ns := uint64(bound)
	for scale := uint(0); scale < 64; scale++ {
		// ns × 2^(32−scale) / 1e9, as a 128-bit product (scale ≤ 32) or
		// a shift right (scale > 32).
		var m uint64
		if scale <= 32 {
			hi, lo := bits.Mul64(ns, 1<<(32-scale))
			if hi >= 1e9 {
				continue
			}
			q, r := bits.Div64(hi, lo, 1e9)
			m = q
			if r != 0 {
				m++
			}
		} else {
			div := uint64(1e9) << (scale - 32)
			if scale-32 >= 34 { // 1e9 << 34 overflows: m rounds up to 1
				m = 1
			} else {
				m = ns / div
				if ns%div != 0 {
					m++
				}
			}
		}
		if m == 0 {
			m = 1
		}
		if m <= 255 {
			return uint8(scale), uint8(m)
		}
	}
	return 63, 255
}

// Synced reports the S bit.
func (e ErrorEstimate) Synced() bool { return e&errestS != 0 }

// Format is the Z bit: the format of the timestamp this estimate goes with.
func (e ErrorEstimate) Format() Format {
	if e&errestZ != 0 {
		return FormatPTP
	}
	return FormatNTP
}

// Scale is the 6-bit exponent.
func (e ErrorEstimate) Scale() uint8 { return uint8(e>>8) & 0x3f }

// Multiplier is the 8-bit mantissa.
func (e ErrorEstimate) Multiplier() uint8 { return uint8(e) }

// Bound is the error the estimate states, rounded up to a nanosecond;
// false when the Multiplier is 0 (invalid) or the bound exceeds what a
// Duration holds.
func (e ErrorEstimate) Bound() (time.Duration, bool) {
	m := uint64(e.Multiplier())
	if m == 0 {
		return 0, false
	}
	scale := uint(e.Scale())
	v := m * 1e9 // at most 2.55e11: m × 2^scale × 1e9 / 2^32 ns
	if scale >= 32 {
		sh := scale - 32
		if bits.Len64(v)+int(sh) > 63 {
			return 0, false
		}
		return time.Duration(v << sh), true
	}
	div := uint64(1) << (32 - scale)
	q := v / div
	if v%div != 0 {
		q++ // rounded up: never claim better than the estimate
	}
	return time.Duration(q), true
}
