package stamp

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
)

// TLVRequest says which TLVs a sender puts in its packets, asking the
// reflector for what they carry back.
type TLVRequest struct {
	// Location: the addresses and ports the reflector saw (NAT shows).
	Location bool
	// TimestampInfo: how the reflector synchronises and takes its stamps.
	TimestampInfo bool
	// ClassOfService: the DSCP the request arrived with, and ReturnDSCP
	// asked for the reflected packet.
	ClassOfService bool
	ReturnDSCP     uint8
	// DirectMeasurement: the session's counters both ends, so that loss
	// is named per direction.
	DirectMeasurement bool
	// FollowUp: a better T3 of the previous reflected packet.
	FollowUp bool
	// HMAC adds the HMAC TLV; authenticated sessions with TLVs always
	// carry it (RFC 8972 §4.8).
	HMAC bool
	// Unassigned adds a 4-octet TLV of this type, which no reflector
	// knows (tests of the U flag); 0 adds none.
	Unassigned TLVType
}

// Any reports whether any TLV is asked for.
func (r TLVRequest) Any() bool {
	return r.Location || r.TimestampInfo || r.ClassOfService || r.DirectMeasurement || r.FollowUp || r.HMAC || r.Unassigned != 0
}

// Template is a session's request packet, built once; Fill stamps each
// packet's own fields into a copy.
type Template struct {
	Mode Mode
	// Len is the packet's length (the UDP payload).
	Len  int
	buf  []byte
	dm   int // Direct Measurement value offset, -1: none
	hmac int // HMAC TLV header offset, -1: none
}

// MinSize is the smallest packet of mode m carrying the TLVs of r.
func MinSize(m Mode, r TLVRequest, withHMAC bool) int {
	n := m.BaseLen()
	add := func(on bool, value int) {
		if on {
			n += TLVHeaderLen + value
		}
	}
	add(r.Location, LocationRequestLen)
	add(r.TimestampInfo, 4)
	add(r.ClassOfService, ClassOfServiceLen)
	add(r.DirectMeasurement, DirectMeasurementLen)
	add(r.FollowUp, FollowUpLen)
	add(r.Unassigned != 0, 4)
	add(withHMAC, HMACLen)
	return n
}

// CheckSize is the one rule on a request's size (UDP payload) in mode m
// with the TLVs of r: 0 (the smallest) or at least the base packet, the
// TLVs and, when the packet carries them, the HMAC TLV; room left over
// holds an Extra Padding TLV (4 octets or more) when there are TLVs; at
// most a UDP datagram. It returns the size a packet gets.
func CheckSize(m Mode, size int, r TLVRequest) (int, error) {
	minSize := MinSize(m, r, signsTLVs(m, r))
	switch {
	case size == 0:
		return minSize, nil
	case size < minSize:
		return 0, fmt.Errorf("STAMP packet size %d: %s mode with these TLVs needs at least %d octets", size, m, minSize)
	case size > MaxPacketLen:
		return 0, fmt.Errorf("STAMP packet size %d: a UDP datagram holds at most %d octets", size, MaxPacketLen)
	}
	if gap := size - minSize; r.Any() && gap > 0 && gap < TLVHeaderLen {
		return 0, fmt.Errorf("STAMP packet size %d: %d octets above the %d the TLVs take cannot hold an Extra Padding TLV (4 octets or more): choose %d or at least %d", size, gap, minSize, minSize, minSize+TLVHeaderLen)
	}
	return size, nil
}

// signsTLVs reports whether a request carries the HMAC TLV: when asked
// for, and always in authenticated mode with TLVs (RFC 8972 §4.8).
func signsTLVs(m Mode, r TLVRequest) bool { return r.HMAC || (m == Authenticated && r.Any()) }

// NewTemplate builds the request packet of a session: mode m, size octets
// (CheckSize; 0: the smallest for the TLVs), the TLVs of r. The room
// between the TLVs and size is filled with an Extra Padding TLV of
// pseudo-random octets when there are TLVs (RFC 8972 §4.1), with zeros
// otherwise (RFC 8762).
func NewTemplate(m Mode, size int, r TLVRequest) (*Template, error) {
	size, err := CheckSize(m, size, r)
	if err != nil {
		return nil, err
	}
	withHMAC := signsTLVs(m, r)
	gap := size - MinSize(m, r, withHMAC)
	tlvs := r.Any()
	t := &Template{Mode: m, Len: size, buf: make([]byte, size), dm: -1, hmac: -1}
	off := m.BaseLen()
	put := func(typ TLVType, n int) []byte {
		t.buf[off], t.buf[off+1] = FlagU, byte(typ)
		binary.BigEndian.PutUint16(t.buf[off+2:], uint16(n))
		v := t.buf[off+TLVHeaderLen : off+TLVHeaderLen+n]
		off += TLVHeaderLen + n
		return v
	}
	if r.Location {
		putLocationRequest(put(TLVLocation, LocationRequestLen))
	}
	if r.TimestampInfo {
		put(TLVTimestampInfo, 4)
	}
	if r.ClassOfService {
		ClassOfService{DSCP1: r.ReturnDSCP & 0x3f}.Put(put(TLVClassOfService, ClassOfServiceLen))
	}
	if r.DirectMeasurement {
		t.dm = off + TLVHeaderLen
		put(TLVDirectMeasurement, DirectMeasurementLen)
	}
	if r.FollowUp {
		put(TLVFollowUp, FollowUpLen)
	}
	if r.Unassigned != 0 {
		put(r.Unassigned, 4)
	}
	if tlvs && gap >= TLVHeaderLen {
		pad := put(TLVExtraPadding, gap-TLVHeaderLen)
		rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		for i := range pad {
			pad[i] = byte(rng.Uint32())
		}
	}
	if withHMAC {
		t.hmac = off
		put(TLVHMAC, HMACLen)
	}
	return t, nil
}

// Fields are a sender packet's own values.
type Fields struct {
	Seq           uint32
	Timestamp     Timestamp
	ErrorEstimate ErrorEstimate
	SSID          uint16
	// SenderTx is the session's count of packets sent, this one included
	// (Direct Measurement TLV).
	SenderTx uint32
}

// Fill writes a packet into buf (at least Len octets) and returns its
// length. auth signs the HMAC TLV and, in authenticated mode, the packet;
// call Fill right before sending, so that the timestamp is late.
func (t *Template) Fill(buf []byte, f Fields, auth *Auth) (int, error) {
	if len(buf) < t.Len {
		return 0, fmt.Errorf("buffer of %d octets for a %d-octet STAMP packet", len(buf), t.Len)
	}
	p := buf[:t.Len]
	copy(p, t.buf)
	sp := SenderPacket{Seq: f.Seq, Timestamp: f.Timestamp, ErrorEstimate: f.ErrorEstimate, SSID: f.SSID}
	sp.put(p, t.Mode.layout())
	if t.dm >= 0 {
		binary.BigEndian.PutUint32(p[t.dm:], f.SenderTx)
	}
	if t.hmac >= 0 {
		if auth == nil {
			return 0, ErrNoKey
		}
		copy(p[t.hmac+TLVHeaderLen:], auth.tlvMAC(0, p[0:4], p[t.Mode.BaseLen():t.hmac]))
	}
	if t.Mode == Authenticated {
		if err := auth.Sign(p, 0); err != nil {
			return 0, err
		}
	}
	return t.Len, nil
}
