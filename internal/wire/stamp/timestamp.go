package stamp

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"time"
)

// Format is a timestamp's format: the Z bit of the Error Estimate that
// travels with it (RFC 8186 §2.3, RFC 8762 §4.2.1).
type Format uint8

// Timestamp formats.
const (
	// FormatNTP is the NTP 64-bit format: seconds since 1900-01-01 UTC
	// and a binary fraction of a second (RFC 5905 §6).
	FormatNTP Format = 0
	// FormatPTP is PTPv2's truncated format: seconds since 1970-01-01 TAI
	// (32 bits) and nanoseconds (32 bits).
	FormatPTP Format = 1
)

func (f Format) String() string {
	if f == FormatPTP {
		return "ptp"
	}
	return "ntp"
}

// Timestamp is a timestamp as it is on the wire (8 octets, big-endian);
// its format is the Z bit of the Error Estimate beside it.
type Timestamp uint64

// ntpUnixOffset is 1970-01-01 minus 1900-01-01 in seconds.
const ntpUnixOffset = 2208988800

// DefaultTAIOffset is TAI − UTC since 2017-01-01 (37 s). It converts the
// system clock (UTC) to PTP's TAI when the kernel does not know the offset
// (adjtimex reports 0 until a time daemon sets it).
const DefaultTAIOffset = 37

// ErrTimestamp marks a timestamp field that holds no valid time (a PTP
// nanoseconds field of a second or more).
var ErrTimestamp = errors.New("invalid timestamp")

// NewTimestamp encodes a Unix time in nanoseconds (UTC, as the system clock
// keeps it) in format f. taiOffset is TAI − UTC in seconds, for PTP.
func NewTimestamp(unixNano int64, f Format, taiOffset int32) Timestamp {
	sec := unixNano / 1e9
	ns := unixNano % 1e9
	if ns < 0 {
		sec--
		ns += 1e9
	}
	if f == FormatPTP {
		s := uint32(sec + int64(taiOffset))
		return Timestamp(uint64(s)<<32 | uint64(ns))
	}
	s := uint32(sec + ntpUnixOffset)
	// fraction = ns * 2^32 / 1e9, rounded to nearest.
	frac := (uint64(ns)<<32 + 5e8) / 1e9
	if frac > 0xffffffff {
		frac = 0xffffffff
	}
	return Timestamp(uint64(s)<<32 | frac)
}

// UnixNano decodes t (in format f) to Unix nanoseconds, UTC. NTP seconds
// wrap in 2036: a seconds field with its top bit clear is read as the era
// after the wrap (RFC 4330 §3), which covers 1968 to 2104.
func (t Timestamp) UnixNano(f Format, taiOffset int32) (int64, error) {
	sec := uint32(t >> 32)
	low := uint32(t)
	if f == FormatPTP {
		if low >= 1e9 {
			return 0, ErrTimestamp
		}
		return (int64(sec)-int64(taiOffset))*1e9 + int64(low), nil
	}
	era := int64(0)
	if sec&0x80000000 == 0 {
		era = 1 << 32
	}
	hi, _ := bits.Mul64(uint64(low), 1e9)
	lo := uint64(low) * 1e9
	ns := int64((hi<<32 | lo>>32) + (lo>>31)&1) // round(low * 1e9 / 2^32)
	return (int64(sec)+era-ntpUnixOffset)*1e9 + ns, nil
}

// Time is UnixNano as a time.Time; the zero time when t is invalid.
func (t Timestamp) Time(f Format, taiOffset int32) time.Time {
	ns, err := t.UnixNano(f, taiOffset)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func getTimestamp(b []byte) Timestamp    { return Timestamp(binary.BigEndian.Uint64(b)) }
func putTimestamp(b []byte, t Timestamp) { binary.BigEndian.PutUint64(b, uint64(t)) }
