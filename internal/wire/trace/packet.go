package trace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Protocol numbers, ICMP types and TCP flags the probes use.
const (
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	icmp4Unreachable  = 3
	icmp4TimeExceeded = 11
	icmp6Unreachable  = 1
	icmp6TimeExceeded = 3
	icmp4PortUnreach  = 3
	icmp6PortUnreach  = 4

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10

	tcpHeaderLen  = 20
	ipv4HeaderMin = 20
	ipv6HeaderLen = 40
)

// synProbe writes into b (at least 20 bytes) the TCP header of a probe on
// the flow src -> dst: a SYN with sequence number seq (the probe's
// identity), no options, no data, and its checksum. It returns b[:20].
func synProbe(b []byte, src, dst netip.AddrPort, seq uint32) []byte {
	h := b[:tcpHeaderLen]
	binary.BigEndian.PutUint16(h[0:], src.Port())
	binary.BigEndian.PutUint16(h[2:], dst.Port())
	binary.BigEndian.PutUint32(h[4:], seq)
	binary.BigEndian.PutUint32(h[8:], 0)
	h[12] = tcpHeaderLen / 4 << 4
	h[13] = tcpSYN
	binary.BigEndian.PutUint16(h[14:], 65535)
	binary.BigEndian.PutUint16(h[16:], 0)
	binary.BigEndian.PutUint16(h[18:], 0)
	binary.BigEndian.PutUint16(h[16:], transportChecksum(src.Addr(), dst.Addr(), protoTCP, h))
	return h
}

// transportChecksum is the Internet checksum of a TCP or UDP segment with
// its IPv4 or IPv6 pseudo-header (RFC 793, RFC 8200 section 8.1).
func transportChecksum(src, dst netip.Addr, proto uint8, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for len(b) >= 2 {
			sum += uint32(b[0])<<8 | uint32(b[1])
			b = b[2:]
		}
		if len(b) == 1 {
			sum += uint32(b[0]) << 8
		}
	}
	s, d := src.AsSlice(), dst.AsSlice()
	add(s)
	add(d)
	if src.Is4() {
		sum += uint32(proto) + uint32(len(seg))
	} else {
		sum += uint32(len(seg)>>16) + uint32(len(seg)&0xffff) + uint32(proto)
	}
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// icmpError is an ICMP or ICMPv6 error message and the header it quotes
// (the packet that caused it, as the router received it).
type icmpError struct {
	from       netip.Addr // the router or host that sent it
	icmpType   uint8
	code       uint8
	src, dst   netip.Addr // the quoted packet's addresses
	proto      uint8
	sport      uint16
	dport      uint16
	seq        uint32 // the quoted TCP sequence number (TCP only)
	hasSeq     bool
	quotedData []byte // what the quote holds after the transport header (a slice of the input)
}

var errNotError = errors.New("not an ICMP error message")

// parseICMPv4 reads an IPv4 packet holding an ICMP message, as a raw
// ICMP socket returns it (IPv4 header included). Only destination
// unreachable and time exceeded are errors it accepts.
func parseICMPv4(pkt []byte) (icmpError, error) {
	var m icmpError
	ihl, err := ipv4Header(pkt)
	if err != nil {
		return m, fmt.Errorf("outer %w", err)
	}
	if pkt[9] != 1 {
		return m, fmt.Errorf("outer protocol %d is not ICMP", pkt[9])
	}
	m.from = netip.AddrFrom4([4]byte(pkt[12:16]))
	msg := pkt[ihl:]
	if len(msg) < 8 {
		return m, fmt.Errorf("ICMP message of %d bytes", len(msg))
	}
	m.icmpType, m.code = msg[0], msg[1]
	if m.icmpType != icmp4Unreachable && m.icmpType != icmp4TimeExceeded {
		return m, errNotError
	}
	q := msg[8:]
	qihl, err := ipv4Header(q)
	if err != nil {
		return m, fmt.Errorf("quoted %w", err)
	}
	m.src = netip.AddrFrom4([4]byte(q[12:16]))
	m.dst = netip.AddrFrom4([4]byte(q[16:20]))
	m.proto = q[9]
	return m, m.transport(q[qihl:])
}

// ipv4Header checks an IPv4 header at the start of b and returns its length.
func ipv4Header(b []byte) (int, error) {
	if len(b) < ipv4HeaderMin {
		return 0, fmt.Errorf("IPv4 header: %d bytes", len(b))
	}
	if b[0]>>4 != 4 {
		return 0, fmt.Errorf("IPv4 header: version %d", b[0]>>4)
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < ipv4HeaderMin || ihl > len(b) {
		return 0, fmt.Errorf("IPv4 header: length %d in %d bytes", ihl, len(b))
	}
	return ihl, nil
}

// parseICMPv6 reads an ICMPv6 message as a raw ICMPv6 socket returns it
// (no IPv6 header; from is the sender the socket reported).
func parseICMPv6(msg []byte, from netip.Addr) (icmpError, error) {
	m := icmpError{from: from}
	if len(msg) < 8 {
		return m, fmt.Errorf("ICMPv6 message of %d bytes", len(msg))
	}
	m.icmpType, m.code = msg[0], msg[1]
	if m.icmpType != icmp6Unreachable && m.icmpType != icmp6TimeExceeded {
		return m, errNotError
	}
	q := msg[8:]
	if len(q) < ipv6HeaderLen {
		return m, fmt.Errorf("quoted IPv6 header: %d bytes", len(q))
	}
	if q[0]>>4 != 6 {
		return m, fmt.Errorf("quoted IPv6 header: version %d", q[0]>>4)
	}
	m.src = netip.AddrFrom16([16]byte(q[8:24]))
	m.dst = netip.AddrFrom16([16]byte(q[24:40]))
	// The probes carry no extension headers: anything else is not ours.
	m.proto = q[6]
	return m, m.transport(q[ipv6HeaderLen:])
}

// transport reads the quoted transport header: ports always (RFC 792
// guarantees 8 bytes), the TCP sequence number, and for UDP the quoted
// payload.
func (m *icmpError) transport(t []byte) error {
	if len(t) < 8 {
		return fmt.Errorf("quoted transport header: %d bytes", len(t))
	}
	m.sport = binary.BigEndian.Uint16(t[0:])
	m.dport = binary.BigEndian.Uint16(t[2:])
	switch m.proto {
	case protoTCP:
		m.seq, m.hasSeq = binary.BigEndian.Uint32(t[4:]), true
	case protoUDP:
		m.quotedData = t[8:]
	}
	return nil
}

// segment is the part of an incoming TCP segment the far-end check needs.
type segment struct {
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	window       uint16
	payload      int
}

// parseTCPv4 reads a TCP segment in an IPv4 packet (raw TCP socket, IPv4
// header included).
func parseTCPv4(pkt []byte) (segment, error) {
	ihl, err := ipv4Header(pkt)
	if err != nil {
		return segment{}, err
	}
	total := int(binary.BigEndian.Uint16(pkt[2:]))
	if total < ihl || total > len(pkt) {
		// The socket filter may cut the packet: the length is the header's.
		total = max(total, ihl)
	}
	if pkt[9] != protoTCP {
		return segment{}, fmt.Errorf("protocol %d is not TCP", pkt[9])
	}
	return parseTCP(pkt[ihl:], total-ihl)
}

// parseTCP reads a TCP header at the start of b; length is the whole
// segment's length (header and payload), which may exceed len(b).
func parseTCP(b []byte, length int) (segment, error) {
	if len(b) < tcpHeaderLen {
		return segment{}, fmt.Errorf("TCP header: %d bytes", len(b))
	}
	doff := int(b[12]>>4) * 4
	if doff < tcpHeaderLen || doff > length {
		return segment{}, fmt.Errorf("TCP header: data offset %d in a segment of %d bytes", doff, length)
	}
	return segment{
		sport:   binary.BigEndian.Uint16(b[0:]),
		dport:   binary.BigEndian.Uint16(b[2:]),
		seq:     binary.BigEndian.Uint32(b[4:]),
		ack:     binary.BigEndian.Uint32(b[8:]),
		flags:   b[13],
		window:  binary.BigEndian.Uint16(b[14:]),
		payload: length - doff,
	}, nil
}

// udpMagic starts the payload of every UDP probe; the probe's identity
// follows it.
var udpMagic = [4]byte{'s', 's', 't', 'r'}

const udpProbeLen = 8

// udpProbe writes a UDP probe's payload into b (8 bytes).
func udpProbe(b []byte, id uint32) []byte {
	copy(b, udpMagic[:])
	binary.BigEndian.PutUint32(b[4:], id)
	return b[:udpProbeLen]
}

// udpProbeID reads the identity from a quoted UDP probe payload; ok is
// false when the router quoted too little of it.
func udpProbeID(quoted []byte) (id uint32, ok bool) {
	if len(quoted) < udpProbeLen || [4]byte(quoted[:4]) != udpMagic {
		return 0, false
	}
	return binary.BigEndian.Uint32(quoted[4:]), true
}
