package stamp

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Mode is a session's mode: the mode is configured at both ends (no bit in
// the packet says which), and it fixes the layout.
type Mode uint8

// Modes of RFC 8762 §4.
const (
	Unauthenticated Mode = iota
	Authenticated
)

func (m Mode) String() string {
	if m == Authenticated {
		return "authenticated"
	}
	return "unauthenticated"
}

// Base lengths: the fixed part before the TLVs, sender and reflector alike
// (STAMP packets are symmetric).
const (
	UnauthBaseLen = 44
	AuthBaseLen   = 112
	// HMACLen is HMAC-SHA-256 truncated to 128 bits (RFC 8762 §4.4).
	HMACLen = 16
	// MaxPacketLen is the largest UDP payload over IPv4.
	MaxPacketLen = 65507
)

// layout holds the field offsets of one mode (see the package comment).
type layout struct {
	base int
	// both packets
	seq, ts, errest, ssid, hmac int
	// reflector packets
	rxTS, sSeq, sTS, sErr, sTTL int
}

var layouts = [2]layout{
	Unauthenticated: {base: UnauthBaseLen, seq: 0, ts: 4, errest: 12, ssid: 14, hmac: -1,
		rxTS: 16, sSeq: 24, sTS: 28, sErr: 36, sTTL: 40},
	Authenticated: {base: AuthBaseLen, seq: 0, ts: 16, errest: 24, ssid: 26, hmac: 96,
		rxTS: 32, sSeq: 48, sTS: 64, sErr: 72, sTTL: 80},
}

func (m Mode) layout() *layout {
	if m == Authenticated {
		return &layouts[Authenticated]
	}
	return &layouts[Unauthenticated]
}

// BaseLen is the length of m's fixed part; TLVs start there.
func (m Mode) BaseLen() int { return m.layout().base }

// Errors of packet decoding.
var (
	// ErrShort: fewer octets than the mode's base packet.
	ErrShort = errors.New("STAMP packet shorter than its base format (44 octets unauthenticated, 112 authenticated)")
	// ErrTooLong: more octets than a UDP datagram holds.
	ErrTooLong = errors.New("STAMP packet longer than a UDP datagram")
)

// checkLen returns a sentinel (no allocation: a reflector refuses hostile
// packets at line rate).
func checkLen(b []byte, m Mode) error {
	if len(b) < m.BaseLen() {
		return ErrShort
	}
	if len(b) > MaxPacketLen {
		return ErrTooLong
	}
	return nil
}

// SenderPacket is the fixed part of a Session-Sender test packet.
type SenderPacket struct {
	Seq           uint32
	Timestamp     Timestamp
	ErrorEstimate ErrorEstimate
	// SSID identifies the session together with the addresses and ports
	// (RFC 8972 §3); 0 is an RFC 8762 sender that sets none.
	SSID uint16
}

// ParseSender decodes the fixed part of a Session-Sender packet. MBZ
// fields are ignored on receipt (RFC 8762 §4.2.1); the HMAC is checked by
// Auth, not here.
func ParseSender(b []byte, m Mode) (SenderPacket, error) {
	if err := checkLen(b, m); err != nil {
		return SenderPacket{}, err
	}
	l := m.layout()
	return SenderPacket{
		Seq:           binary.BigEndian.Uint32(b[l.seq:]),
		Timestamp:     getTimestamp(b[l.ts:]),
		ErrorEstimate: ErrorEstimate(binary.BigEndian.Uint16(b[l.errest:])),
		SSID:          binary.BigEndian.Uint16(b[l.ssid:]),
	}, nil
}

// Put writes p into the first BaseLen octets of b, zeroing the MBZ fields
// and the HMAC field (Auth.Sign fills it).
func (p *SenderPacket) Put(b []byte, m Mode) error {
	if err := checkLen(b, m); err != nil {
		return err
	}
	p.put(b, m.layout())
	return nil
}

func (p *SenderPacket) put(b []byte, l *layout) {
	clear(b[:l.base])
	binary.BigEndian.PutUint32(b[l.seq:], p.Seq)
	putTimestamp(b[l.ts:], p.Timestamp)
	binary.BigEndian.PutUint16(b[l.errest:], uint16(p.ErrorEstimate))
	binary.BigEndian.PutUint16(b[l.ssid:], p.SSID)
}

// ReflectorPacket is the fixed part of a Session-Reflector test packet.
type ReflectorPacket struct {
	// Seq is the reflector's own counter (stateful) or the sender's
	// (stateless, RFC 8762 §4.3).
	Seq uint32
	// Timestamp is T3, when the reflector sent the packet.
	Timestamp     Timestamp
	ErrorEstimate ErrorEstimate
	SSID          uint16
	// ReceiveTimestamp is T2, when the reflector received the request,
	// in the format of ErrorEstimate.
	ReceiveTimestamp Timestamp
	// The request's fields as the reflector received them.
	SenderSeq           uint32
	SenderTimestamp     Timestamp
	SenderErrorEstimate ErrorEstimate
	// SenderTTL is the TTL (Hop Limit) of the request at the reflector.
	SenderTTL uint8
}

// ParseReflector decodes the fixed part of a Session-Reflector packet.
func ParseReflector(b []byte, m Mode) (ReflectorPacket, error) {
	if err := checkLen(b, m); err != nil {
		return ReflectorPacket{}, err
	}
	l := m.layout()
	return ReflectorPacket{
		Seq:                 binary.BigEndian.Uint32(b[l.seq:]),
		Timestamp:           getTimestamp(b[l.ts:]),
		ErrorEstimate:       ErrorEstimate(binary.BigEndian.Uint16(b[l.errest:])),
		SSID:                binary.BigEndian.Uint16(b[l.ssid:]),
		ReceiveTimestamp:    getTimestamp(b[l.rxTS:]),
		SenderSeq:           binary.BigEndian.Uint32(b[l.sSeq:]),
		SenderTimestamp:     getTimestamp(b[l.sTS:]),
		SenderErrorEstimate: ErrorEstimate(binary.BigEndian.Uint16(b[l.sErr:])),
		SenderTTL:           b[l.sTTL],
	}, nil
}

// Put writes p into the first BaseLen octets of b, zeroing MBZ and HMAC.
func (p *ReflectorPacket) Put(b []byte, m Mode) error {
	if err := checkLen(b, m); err != nil {
		return err
	}
	p.put(b, m.layout())
	return nil
}

func (p *ReflectorPacket) put(b []byte, l *layout) {
	clear(b[:l.base])
	binary.BigEndian.PutUint32(b[l.seq:], p.Seq)
	putTimestamp(b[l.ts:], p.Timestamp)
	binary.BigEndian.PutUint16(b[l.errest:], uint16(p.ErrorEstimate))
	binary.BigEndian.PutUint16(b[l.ssid:], p.SSID)
	putTimestamp(b[l.rxTS:], p.ReceiveTimestamp)
	binary.BigEndian.PutUint32(b[l.sSeq:], p.SenderSeq)
	putTimestamp(b[l.sTS:], p.SenderTimestamp)
	binary.BigEndian.PutUint16(b[l.sErr:], uint16(p.SenderErrorEstimate))
	b[l.sTTL] = p.SenderTTL
}

// How a process chooses its STAMP mode (--stamp.auth, for a reflector
// and for the probe and check commands' senders alike).
const (
	AuthAuto = "auto" // authenticated when the process has a key file
	AuthOn   = "on"
	AuthOff  = "off"
)

// ChooseMode is the one rule that turns a --stamp.auth setting into a
// mode: auto is authenticated exactly when the process has a key
// (--relay.auth-key-file), on requires one, off is unauthenticated.
func ChooseMode(setting string, haveKey bool) (Mode, error) {
	switch setting {
	case AuthAuto, "":
		if haveKey {
			return Authenticated, nil
		}
		return Unauthenticated, nil
	case AuthOn:
		if !haveKey {
			return Unauthenticated, errors.New("--stamp.auth=on needs the chain's key: set --relay.auth-key-file")
		}
		return Authenticated, nil
	case AuthOff:
		return Unauthenticated, nil
	}
	return Unauthenticated, fmt.Errorf("--stamp.auth %q: auto, on or off", setting)
}
