package stamp

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// TLVType is a STAMP TLV's type (IANA "STAMP TLV Types", RFC 8972 §5.1).
type TLVType uint8

// TLV types of RFC 8972.
const (
	TLVExtraPadding      TLVType = 1
	TLVLocation          TLVType = 2
	TLVTimestampInfo     TLVType = 3
	TLVClassOfService    TLVType = 4
	TLVDirectMeasurement TLVType = 5
	TLVAccessReport      TLVType = 6
	TLVFollowUp          TLVType = 7
	TLVHMAC              TLVType = 8
)

var tlvNames = map[TLVType]string{
	TLVExtraPadding: "extra_padding", TLVLocation: "location", TLVTimestampInfo: "timestamp_information",
	TLVClassOfService: "class_of_service", TLVDirectMeasurement: "direct_measurement", TLVAccessReport: "access_report",
	TLVFollowUp: "follow_up_telemetry", TLVHMAC: "hmac",
}

func (t TLVType) String() string {
	if n, ok := tlvNames[t]; ok {
		return n
	}
	return "unknown"
}

// TLV flags (RFC 8972 §4): a sender sends U=1, M=0, I=0; the reflector
// sets U only on a TLV it does not recognise, M only on one it found
// malformed (a malformed sub-TLV makes its parent malformed), I on every
// TLV when the HMAC TLV did not verify, and nothing else (tlvFlags).
const (
	FlagU uint8 = 0x80 // Unrecognized
	FlagM uint8 = 0x40 // Malformed
	FlagI uint8 = 0x20 // Integrity check failed
)

// TLVHeaderLen is Flags (1), Type (1), Length (2).
const TLVHeaderLen = 4

// TLV is one TLV of a packet; Value aliases the packet.
type TLV struct {
	Flags uint8
	Type  TLVType
	Value []byte
	// Off is the offset of the TLV's header in the packet.
	Off int
}

// ErrMalformedTLV says a TLV's Length runs past the end of the packet, or a
// known TLV's value has the wrong length.
var ErrMalformedTLV = errors.New("malformed STAMP TLV")

// TLVReader walks the TLVs after a packet's base part without allocating.
// Trailing octets that are all zero are padding (RFC 8762 senders pad with
// zeros), not TLVs; fewer than 4 trailing octets are ignored.
type TLVReader struct {
	pkt []byte
	off int
	err error
}

// ReadTLVs starts reading the TLVs of pkt (mode m).
func ReadTLVs(pkt []byte, m Mode) TLVReader {
	off := m.BaseLen()
	if off > len(pkt) {
		off = len(pkt)
	}
	return TLVReader{pkt: pkt, off: off}
}

// Next returns the next TLV; false at the end or at a malformed header
// (Err then says so and Off is where it starts).
func (r *TLVReader) Next() (TLV, bool) {
	rest := r.pkt[r.off:]
	if r.err != nil || len(rest) < TLVHeaderLen || allZero(rest) {
		return TLV{}, false
	}
	n := int(binary.BigEndian.Uint16(rest[2:]))
	if TLVHeaderLen+n > len(rest) {
		r.err = ErrMalformedTLV
		return TLV{}, false
	}
	t := TLV{Flags: rest[0], Type: TLVType(rest[1]), Value: rest[TLVHeaderLen : TLVHeaderLen+n], Off: r.off}
	r.off += TLVHeaderLen + n
	return t, true
}

// Err is ErrMalformedTLV when a TLV's Length ran past the packet.
func (r *TLVReader) Err() error { return r.err }

// Off is where the reader stopped: the end of the last TLV, or the header
// of the malformed one.
func (r *TLVReader) Off() int { return r.off }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Synchronization sources (RFC 8972 §5.4) of the Timestamp Information TLV.
const (
	SyncNTP       uint8 = 1
	SyncPTP       uint8 = 2
	SyncSSU       uint8 = 3
	SyncGNSS      uint8 = 4
	SyncLocalFree uint8 = 5
)

// Timestamping methods (RFC 8972 §5.5) of the Timestamp Information and
// Follow-up Telemetry TLVs. A kernel software stamp is "SW local"; a stamp
// taken in user space, after the scheduler, is reported as "control plane".
const (
	MethodHWAssist     uint8 = 1
	MethodSWLocal      uint8 = 2
	MethodControlPlane uint8 = 3
)

// TimestampInfo is the Timestamp Information TLV's value (4 octets; RFC
// 8972 §4.3): how the reflector's receive (In) and transmit (Out)
// timestamps were synchronised and taken.
type TimestampInfo struct {
	SyncIn, MethodIn, SyncOut, MethodOut uint8
}

// ParseTimestampInfo decodes the value (optional sub-TLVs after the first 4
// octets are ignored).
func ParseTimestampInfo(v []byte) (TimestampInfo, error) {
	if len(v) < 4 {
		return TimestampInfo{}, ErrMalformedTLV
	}
	return TimestampInfo{v[0], v[1], v[2], v[3]}, nil
}

// Put writes the first 4 octets of the value.
func (t TimestampInfo) Put(v []byte) {
	v[0], v[1], v[2], v[3] = t.SyncIn, t.MethodIn, t.SyncOut, t.MethodOut
}

// ClassOfService is the Class of Service TLV's value (4 octets; RFC 8972
// §4.4): DSCP1 (6 bits) the DSCP the sender asks for the reflected packet,
// DSCP2 (6) the DSCP the request arrived with, ECN (2) its ECN, RP (2) set
// to 1 by a reflector that did not use DSCP1, then 16 reserved bits.
type ClassOfService struct {
	DSCP1, DSCP2, ECN, RP uint8
}

// ClassOfServiceLen is the value's length.
const ClassOfServiceLen = 4

// ParseClassOfService decodes the value.
func ParseClassOfService(v []byte) (ClassOfService, error) {
	if len(v) != ClassOfServiceLen {
		return ClassOfService{}, ErrMalformedTLV
	}
	return ClassOfService{DSCP1: v[0] >> 2, DSCP2: (v[0]&3)<<4 | v[1]>>4, ECN: v[1] >> 2 & 3, RP: v[1] & 3}, nil
}

// Put writes the value (reserved bits zero).
func (c ClassOfService) Put(v []byte) {
	v[0] = c.DSCP1<<2 | (c.DSCP2>>4)&3
	v[1] = (c.DSCP2&0xf)<<4 | (c.ECN&3)<<2 | c.RP&3
	v[2], v[3] = 0, 0
}

// DirectMeasurement is the Direct Measurement TLV's value (12 octets; RFC
// 8972 §4.5): the session's counters, each including this packet.
type DirectMeasurement struct {
	SenderTx, ReflectorRx, ReflectorTx uint32
}

// DirectMeasurementLen is the value's length.
const DirectMeasurementLen = 12

// ParseDirectMeasurement decodes the value.
func ParseDirectMeasurement(v []byte) (DirectMeasurement, error) {
	if len(v) != DirectMeasurementLen {
		return DirectMeasurement{}, ErrMalformedTLV
	}
	return DirectMeasurement{binary.BigEndian.Uint32(v), binary.BigEndian.Uint32(v[4:]), binary.BigEndian.Uint32(v[8:])}, nil
}

// Put writes the value.
func (d DirectMeasurement) Put(v []byte) {
	binary.BigEndian.PutUint32(v, d.SenderTx)
	binary.BigEndian.PutUint32(v[4:], d.ReflectorRx)
	binary.BigEndian.PutUint32(v[8:], d.ReflectorTx)
}

// FollowUp is the Follow-up Telemetry TLV's value (16 octets; RFC 8972
// §4.7): the reflector's sequence number of the packet it reflected before
// this one in the session, a better timestamp of that packet's
// transmission (here the kernel's software transmit stamp), and how it was
// taken. All zero when there is no earlier packet.
type FollowUp struct {
	Seq       uint32
	Timestamp Timestamp
	Method    uint8
}

// FollowUpLen is the value's length.
const FollowUpLen = 16

// ParseFollowUp decodes the value.
func ParseFollowUp(v []byte) (FollowUp, error) {
	if len(v) != FollowUpLen {
		return FollowUp{}, ErrMalformedTLV
	}
	return FollowUp{Seq: binary.BigEndian.Uint32(v), Timestamp: getTimestamp(v[4:]), Method: v[12]}, nil
}

// Put writes the value (reserved octets zero).
func (f FollowUp) Put(v []byte) {
	binary.BigEndian.PutUint32(v, f.Seq)
	putTimestamp(v[4:], f.Timestamp)
	v[12], v[13], v[14], v[15] = f.Method, 0, 0, 0
}

// Location sub-TLV types (RFC 8972 §4.2, IANA "STAMP Sub-TLV Types"): the
// sender asks with a zeroed request sub-TLV, the reflector answers by
// changing its type to the variant it fills.
const (
	SubSourceMAC     uint8 = 1
	SubSourceEUI48   uint8 = 2
	SubSourceEUI64   uint8 = 3
	SubDestIP        uint8 = 4
	SubDestIPv4      uint8 = 5
	SubDestIPv6      uint8 = 6
	SubSourceIP      uint8 = 7
	SubSourceIPv4    uint8 = 8
	SubSourceIPv6    uint8 = 9
	locationAddrLen        = 16
	locationPortsLen       = 4
)

// Location is what the reflector saw of a request (RFC 8972 §4.2): the
// ports and addresses in its IP and UDP headers, so that a NAT between the
// ends shows.
type Location struct {
	DstPort, SrcPort uint16
	Dst, Src         netip.Addr
}

// LocationRequestLen is the value of the Location TLV a sender sends: the
// two ports and the Destination and Source IP Address sub-TLVs.
const LocationRequestLen = locationPortsLen + 2*(TLVHeaderLen+locationAddrLen)

// putLocationRequest writes a sender's Location value: zero ports and two
// zeroed address sub-TLVs (with U set, as every requested TLV).
func putLocationRequest(v []byte) {
	clear(v[:LocationRequestLen])
	o := locationPortsLen
	for _, t := range [2]uint8{SubDestIP, SubSourceIP} {
		v[o], v[o+1] = FlagU, t
		binary.BigEndian.PutUint16(v[o+2:], locationAddrLen)
		o += TLVHeaderLen + locationAddrLen
	}
}

// ParseLocation decodes a reflector's Location value.
func ParseLocation(v []byte) (Location, error) {
	if len(v) < locationPortsLen {
		return Location{}, ErrMalformedTLV
	}
	l := Location{DstPort: binary.BigEndian.Uint16(v), SrcPort: binary.BigEndian.Uint16(v[2:])}
	rest := v[locationPortsLen:]
	for len(rest) >= TLVHeaderLen {
		n := int(binary.BigEndian.Uint16(rest[2:]))
		if TLVHeaderLen+n > len(rest) {
			return l, ErrMalformedTLV
		}
		val := rest[TLVHeaderLen : TLVHeaderLen+n]
		switch rest[1] {
		case SubDestIPv4:
			l.Dst = addr4(val)
		case SubDestIPv6:
			l.Dst = addr16(val)
		case SubSourceIPv4:
			l.Src = addr4(val)
		case SubSourceIPv6:
			l.Src = addr16(val)
		}
		rest = rest[TLVHeaderLen+n:]
	}
	return l, nil
}

func addr4(v []byte) netip.Addr {
	if len(v) < 4 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(v[:4]))
}

func addr16(v []byte) netip.Addr {
	if len(v) < 16 {
		return netip.Addr{}
	}
	return netip.AddrFrom16([16]byte(v[:16]))
}

// fillLocation answers a Location request in place (the value keeps its
// length); false when the value or one of its sub-TLVs is malformed.
func fillLocation(v []byte, src, dst netip.AddrPort) bool {
	return walkLocation(v, &locationAnswer{src: src, dst: dst})
}

// locationAnswer is what a reflector writes into a Location TLV.
type locationAnswer struct{ src, dst netip.AddrPort }

// walkLocation checks a Location value (RFC 8972 §4.2): the two ports,
// then sub-TLVs, each within the value, an address sub-TLV of 16 octets
// (trailing zero octets are padding). With a, it answers in place: the
// ports, each address sub-TLV's variant and address (a malformed one
// flagged M), every other sub-TLV flagged U (the source MAC, which a UDP
// socket never sees, and unknown types). False when anything is
// malformed: the Location TLV itself is then flagged M.
func walkLocation(v []byte, a *locationAnswer) bool {
	if len(v) < locationPortsLen {
		return false
	}
	if a != nil {
		binary.BigEndian.PutUint16(v, a.dst.Port())
		binary.BigEndian.PutUint16(v[2:], a.src.Port())
	}
	ok := true
	for rest := v[locationPortsLen:]; len(rest) > 0 && !allZero(rest); {
		if len(rest) < TLVHeaderLen {
			return false
		}
		n := int(binary.BigEndian.Uint16(rest[2:]))
		if TLVHeaderLen+n > len(rest) {
			return false
		}
		val := rest[TLVHeaderLen : TLVHeaderLen+n]
		addr := rest[1] == SubDestIP || rest[1] == SubSourceIP
		if addr && n != locationAddrLen {
			ok = false
		}
		if a != nil {
			rest[0], rest[1] = a.sub(rest[1], val)
		}
		rest = rest[TLVHeaderLen+n:]
	}
	return ok
}

// sub answers one sub-TLV and returns its flags and type.
func (a *locationAnswer) sub(typ uint8, val []byte) (uint8, uint8) {
	switch typ {
	case SubDestIP:
		return putAddr(val, a.dst.Addr(), SubDestIPv4, SubDestIPv6)
	case SubSourceIP:
		return putAddr(val, a.src.Addr(), SubSourceIPv4, SubSourceIPv6)
	}
	return FlagU, typ
}

// putAddr writes a into a 16-octet address sub-TLV value and returns the
// sub-TLV's flags and type: the v4 or v6 variant, or the request flagged
// malformed when the value is not 16 octets.
func putAddr(val []byte, a netip.Addr, t4, t6 uint8) (uint8, uint8) {
	if len(val) != locationAddrLen {
		return FlagM, t4 - 1
	}
	clear(val)
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		copy(val, b[:])
		return 0, t4
	}
	b := a.As16()
	copy(val, b[:])
	return 0, t6
}
