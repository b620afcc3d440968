package stamp

import (
	"net/netip"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
)

// Request is what a reflector knows of one received test packet besides
// its bytes, and the session state it keeps for it.
type Request struct {
	Mode Mode
	// Auth verifies authenticated packets and HMAC TLVs; nil: no keys.
	Auth *Auth
	// Verified: the caller already checked the packet's HMAC (Verify)
	// with key KeyIndex, before it created state for the packet.
	Verified bool
	KeyIndex int
	// RxTime is T2 in Unix nanoseconds: the kernel's receive stamp
	// (RxKernel) or, without one, when the packet was read.
	RxTime   int64
	RxKernel bool
	// TTL is the request's TTL (IPv4) or Hop Limit (IPv6) at arrival.
	TTL uint8
	// TOS is the request's DS field (DSCP << 2 | ECN).
	TOS uint8
	// Src and Dst are the request's addresses and ports as received.
	Src, Dst netip.AddrPort
	// Sync is the reflector's clock state, for its Error Estimate and the
	// Timestamp Information TLV.
	Sync      clock.Sync
	TAIOffset int32
	// Stateful: the reply carries the reflector's own sequence number
	// (ReflectorSeq) instead of the sender's (RFC 8762 §4.3).
	Stateful     bool
	ReflectorSeq uint32
	// RxCount and TxCount are the session's counters including this
	// packet and its reply (Direct Measurement TLV); 0 when stateless.
	RxCount, TxCount uint32
	// Prev is the previous reflected packet of the session, for the
	// Follow-up Telemetry TLV.
	Prev PrevReflected
}

// PrevReflected is the reflector's record of the packet it reflected last
// in a session.
type PrevReflected struct {
	Valid bool
	Seq   uint32
	// Time is its transmission in Unix nanoseconds: the kernel's software
	// transmit stamp when Kernel, else T3 as written into it.
	Time   int64
	Kernel bool
}

// Reply says what Reflect made of a request and what is left to do.
type Reply struct {
	// Len is the reply's length: always the request's (symmetric; a
	// reflector never amplifies).
	Len int
	// SenderSeq and SSID are the request's.
	SenderSeq uint32
	SSID      uint16
	// Seq is the reply's sequence number.
	Seq uint32
	// TOS is the DS field to send the reply with: DSCP1 of a Class of
	// Service TLV, else the DSCP the request arrived with.
	TOS uint8
	// FollowUp: the request asked for Follow-up Telemetry, so the reply's
	// transmission should be stamped by the kernel for the next one.
	FollowUp bool
	Format   Format
	// Unrecognized, Malformed and Integrity count the TLVs flagged so.
	Unrecognized, Malformed, Integrity int

	mode Mode
	auth *Auth
	key  int
	tai  int32
}

// Reflect turns the request in pkt into its reply in place, except T3 and
// the authenticated HMAC, which Finish writes as late as possible. It
// refuses (ErrShort, ErrTooLong, ErrAuth, ErrNoKey) what must not be
// answered; TLV problems are answered with the RFC's flags instead. It
// does not allocate and never panics on input.
func Reflect(pkt []byte, req *Request, rep *Reply) error {
	if err := checkLen(pkt, req.Mode); err != nil {
		return err
	}
	*rep = Reply{Len: len(pkt), mode: req.Mode, auth: req.Auth, tai: req.TAIOffset}
	if req.Mode == Authenticated {
		k := req.KeyIndex
		if !req.Verified {
			var err error
			if k, err = req.Auth.Verify(pkt); err != nil {
				return err
			}
		}
		rep.key = k
	}
	s, _ := ParseSender(pkt, req.Mode)
	rep.SenderSeq, rep.SSID = s.Seq, s.SSID
	rep.Format = s.ErrorEstimate.Format()
	rep.TOS = req.TOS &^ 3
	rep.Seq = s.Seq
	if req.Stateful {
		rep.Seq = req.ReflectorSeq
	}
	hmacOff := reflectTLVs(pkt, req, rep)

	l := req.Mode.layout()
	p := ReflectorPacket{
		Seq:                 rep.Seq,
		ErrorEstimate:       ErrorEstimateOf(req.Sync, rep.Format),
		SSID:                s.SSID,
		ReceiveTimestamp:    NewTimestamp(req.RxTime, rep.Format, req.TAIOffset),
		SenderSeq:           s.Seq,
		SenderTimestamp:     s.Timestamp,
		SenderErrorEstimate: s.ErrorEstimate,
		SenderTTL:           req.TTL,
	}
	p.put(pkt, l)
	if hmacOff >= 0 {
		signTLVs(pkt, l.base, hmacOff, req.Auth, rep.key)
	}
	return nil
}

// PeekSSID reads a request's SSID (0 when the packet is too short), for
// finding its session before Reflect.
func PeekSSID(pkt []byte, m Mode) uint16 {
	l := m.layout()
	if len(pkt) < l.base {
		return 0
	}
	return uint16(pkt[l.ssid])<<8 | uint16(pkt[l.ssid+1])
}

// Finish writes T3 (Unix nanoseconds) and, in authenticated mode, the
// HMAC over the finished base packet.
func Finish(pkt []byte, rep *Reply, t3 int64) {
	if len(pkt) < rep.mode.BaseLen() {
		return
	}
	l := rep.mode.layout()
	putTimestamp(pkt[l.ts:], NewTimestamp(t3, rep.Format, rep.tai))
	if rep.mode == Authenticated && rep.auth != nil {
		_ = rep.auth.Sign(pkt, rep.key)
	}
}

// hmacState is what the first pass found of the HMAC TLV.
type hmacState uint8

const (
	hmacAbsent hmacState = iota
	hmacOK
	hmacFailed
)

// checkHMACTLV finds the HMAC TLV (it must be the last TLV) and verifies
// it over the request's sequence number and the TLVs before it. It returns
// the HMAC TLV's offset (-1: none, or not last).
func checkHMACTLV(pkt []byte, req *Request) (int, hmacState) {
	r := ReadTLVs(pkt, req.Mode)
	off, last := -1, TLV{}
	for {
		t, ok := r.Next()
		if !ok {
			break
		}
		last = t
		if t.Type == TLVHMAC && off < 0 {
			off = t.Off
		}
	}
	if off < 0 || last.Off != off || r.Err() != nil {
		return -1, hmacAbsent
	}
	if len(last.Value) != HMACLen || req.Auth == nil {
		return off, hmacFailed
	}
	base := req.Mode.BaseLen()
	l := req.Mode.layout()
	if req.Auth.find(last.Value, pkt[l.seq:l.seq+4], pkt[base:off]) < 0 {
		return off, hmacFailed
	}
	return off, hmacOK
}

// reflectTLVs rewrites the request's TLVs into the reply's (same offsets,
// same lengths) and returns the offset of an HMAC TLV to sign (-1: none).
// Every TLV's flags are set as RFC 8972 §4 says (tlvFlags); when the HMAC
// TLV does not verify, no TLV is acted on (their values come back as they
// came), and each is flagged I.
func reflectTLVs(pkt []byte, req *Request, rep *Reply) int {
	hmacOff, state := checkHMACTLV(pkt, req)
	failed := state == hmacFailed
	r := ReadTLVs(pkt, req.Mode)
	for {
		t, ok := r.Next()
		if !ok {
			break
		}
		known, wellFormed := recognised(t.Type), true
		if known {
			wellFormed = wellFormedTLV(t, t.Off == hmacOff)
		}
		// A Location is answered even with a malformed sub-TLV: the
		// others are filled, the bad one flagged.
		if known && !failed && (wellFormed || t.Type == TLVLocation) {
			wellFormed = reflectTLV(t, req, rep) && wellFormed
		}
		pkt[t.Off] = tlvFlags(known, wellFormed, failed, rep)
	}
	if r.Err() != nil {
		// A Length past the end: flagged M, the rest returned as it came.
		pkt[r.Off()] = tlvFlags(recognised(TLVType(pkt[r.Off()+1])), false, failed, rep)
	}
	if failed {
		return -1
	}
	return hmacOff
}

// tlvFlags is the one rule on a reflected TLV's flags (RFC 8972 §4): U
// when the reflector does not recognise its type, M when it is malformed
// (its Length wrong for its type, past the packet, or a sub-TLV
// malformed), I when the HMAC TLV failed; every other bit zero (a sender's
// M and I, the reserved bits). It counts the flags it sets.
func tlvFlags(known, wellFormed, integrityFailed bool, rep *Reply) uint8 {
	var f uint8
	if !known {
		f |= FlagU
		rep.Unrecognized++
	}
	if !wellFormed {
		f |= FlagM
		rep.Malformed++
	}
	if integrityFailed {
		f |= FlagI
		rep.Integrity++
	}
	return f
}

// recognised reports whether the reflector implements a TLV type.
func recognised(t TLVType) bool {
	switch t {
	case TLVExtraPadding, TLVLocation, TLVTimestampInfo, TLVClassOfService, TLVDirectMeasurement, TLVFollowUp, TLVHMAC:
		return true
	}
	return false
}

// wellFormedTLV checks a recognised TLV's Length (and a Location's
// sub-TLVs) without changing it; hmacLast marks the HMAC TLV that closes
// the list (an HMAC TLV anywhere else is malformed).
func wellFormedTLV(t TLV, hmacLast bool) bool {
	switch t.Type {
	case TLVLocation:
		return walkLocation(t.Value, nil)
	case TLVTimestampInfo:
		return len(t.Value) >= 4
	case TLVClassOfService:
		return len(t.Value) == ClassOfServiceLen
	case TLVDirectMeasurement:
		return len(t.Value) == DirectMeasurementLen
	case TLVFollowUp:
		return len(t.Value) == FollowUpLen
	case TLVHMAC:
		return hmacLast && len(t.Value) == HMACLen
	}
	return true // Extra Padding: any length
}

// reflectTLV answers one well-formed, recognised TLV in place; false when
// answering found it malformed after all (a Location sub-TLV).
func reflectTLV(t TLV, req *Request, rep *Reply) bool {
	switch t.Type {
	case TLVLocation:
		return fillLocation(t.Value, req.Src, req.Dst)
	case TLVTimestampInfo:
		ti := reflectorTimestampInfo(req)
		ti.Put(t.Value)
	case TLVClassOfService:
		c, _ := ParseClassOfService(t.Value)
		c.DSCP2, c.ECN, c.RP = req.TOS>>2, req.TOS&3, 0
		c.Put(t.Value)
		rep.TOS = c.DSCP1 << 2
	case TLVDirectMeasurement:
		d, _ := ParseDirectMeasurement(t.Value)
		d.ReflectorRx, d.ReflectorTx = req.RxCount, req.TxCount
		d.Put(t.Value)
	case TLVFollowUp:
		followUp(req, rep.Format).Put(t.Value)
		rep.FollowUp = true
	}
	return true
}

func reflectorTimestampInfo(req *Request) TimestampInfo {
	sync := SyncLocalFree
	if req.Sync.Synced {
		// The kernel's clock discipline (ntpd, chrony, or phc2sys) does
		// not say which protocol feeds it; NTP is what hosts run.
		sync = SyncNTP
	}
	in := MethodControlPlane
	if req.RxKernel {
		in = MethodSWLocal
	}
	return TimestampInfo{SyncIn: sync, MethodIn: in, SyncOut: sync, MethodOut: MethodControlPlane}
}

func followUp(req *Request, f Format) FollowUp {
	if !req.Prev.Valid {
		return FollowUp{}
	}
	m := MethodControlPlane
	if req.Prev.Kernel {
		m = MethodSWLocal
	}
	return FollowUp{Seq: req.Prev.Seq, Timestamp: NewTimestamp(req.Prev.Time, f, req.TAIOffset), Method: m}
}

// signTLVs fills the HMAC TLV at off over the packet's sequence number and
// the TLVs before it; without a key the TLV is flagged I instead.
func signTLVs(pkt []byte, base, off int, a *Auth, key int) {
	val := pkt[off+TLVHeaderLen : off+TLVHeaderLen+HMACLen]
	if a == nil {
		clear(val)
		pkt[off] |= FlagI
		return
	}
	if key < 0 || key >= len(a.macs) {
		key = 0
	}
	copy(val, a.tlvMAC(key, pkt[0:4], pkt[base:off]))
}
