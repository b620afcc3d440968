package stamp

import (
	"fmt"
	"hash/fnv"
	"math"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// A reflector is a hop of a chain like any other: these are the rules that
// turn a reply into what the segment arithmetic reads, for the source that
// measures to a reflector and for a relay whose next hop is one.

// HopID is the identity a reflector, which reports none, gets in a chain:
// fixed per address, so that it keeps its label from run to run and from
// one measuring hop to another, and apart from the relays' random ones.
func HopID(address string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("stamp reflector " + address))
	return h.Sum64() | 1<<62
}

// Around is T4 − T1 of a received packet, on the sender's clock: what the
// sender measured around the reflector. An error when the sender's wall
// clock stepped during the exchange (negative, or over a day).
func (p *PacketResult) Around() (time.Duration, error) {
	d := time.Duration(p.T4 - p.BestT1())
	if d < 0 || d > frame.MaxDuration {
		return 0, fmt.Errorf("the sender's clock stepped during the exchange (T4 − T1 = %v): the packet is not measured", d)
	}
	return d, nil
}

// ReflectorRecord is the reflector's record of a received packet
// (frame.RecReflector: no waits): its residence T3 − T2 as the end host's
// forward time, T2 as its wall clock
// at request-in, its clock from its Error Estimate, and whether it took T2
// from the kernel (Timestamp Information TLV). A residence below 0 or over
// a day is refused: no reflector holds a packet so.
func (p *PacketResult) ReflectorRecord(id uint64, name string) (frame.HopRecord, error) {
	res := time.Duration(p.T3 - p.T2)
	if p.TimestampError {
		return frame.HopRecord{}, fmt.Errorf("the reply holds no valid timestamp (T2 or T3)")
	}
	if res < 0 || res > frame.MaxDuration {
		return frame.HopRecord{}, fmt.Errorf("the reply says the reflector held the packet %v (T3 − T2): a reflector's residence lies within 0 and a day", res)
	}
	rec := frame.HopRecord{ID: id, Name: name, Flags: frame.RecEnd | frame.RecReflector, Forward: res, WallIn: p.T2}
	if ti := p.TLVs.TimestampInfo; p.TLVs.HasTimestampInfo && (ti.MethodIn == MethodSWLocal || ti.MethodIn == MethodHWAssist) {
		rec.Flags |= frame.RecKernelIn
	}
	SetRecordClock(&rec, p.ReflectorError)
	return rec, nil
}

// SetRecordClock gives a record the clock an Error Estimate states:
// synchronised (S) with its error bound in microseconds (rounded up), else
// not synchronised.
func SetRecordClock(rec *frame.HopRecord, e ErrorEstimate) {
	bound, ok := e.Bound()
	if !ok || !e.Synced() {
		return
	}
	rec.Flags |= frame.RecSynced
	micros := min((bound+time.Microsecond-1)/time.Microsecond, math.MaxUint32)
	rec.MaxErrorMicros, rec.EstErrorMicros = uint32(micros), uint32(micros)
}
