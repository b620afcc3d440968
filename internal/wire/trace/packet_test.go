package trace

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	local4  = netip.MustParseAddrPort("10.0.1.1:40000")
	remote4 = netip.MustParseAddrPort("10.0.3.2:9000")
	router4 = netip.MustParseAddr("10.0.1.2")
	local6  = netip.MustParseAddrPort("[fd00:1::1]:40000")
	remote6 = netip.MustParseAddrPort("[fd00:3::2]:9000")
	router6 = netip.MustParseAddr("fd00:1::2")
)

// ipv4 is an IPv4 header (20 bytes, or more with options) and payload.
func ipv4(src, dst netip.Addr, proto byte, options int, payload []byte) []byte {
	ihl := 20 + options
	b := make([]byte, ihl, ihl+len(payload))
	b[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(ihl+len(payload)))
	b[8], b[9] = 1, proto
	copy(b[12:], src.AsSlice())
	copy(b[16:], dst.AsSlice())
	return append(b, payload...)
}

// ipv6 is an IPv6 header and payload.
func ipv6(src, dst netip.Addr, next byte, payload []byte) []byte {
	b := make([]byte, 40, 40+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6], b[7] = next, 1
	copy(b[8:], src.AsSlice())
	copy(b[24:], dst.AsSlice())
	return append(b, payload...)
}

func icmp(typ, code byte, quote []byte) []byte {
	return append([]byte{typ, code, 0, 0, 0, 0, 0, 0}, quote...)
}

// timeExceeded4 is what a router sends when a probe with sequence number
// seq expires there, quoting quoteLen bytes of the probe's TCP header.
func timeExceeded4(seq uint32, quoteLen int) []byte {
	var b [tcpHeaderLen]byte
	probe := synProbe(b[:], local4, remote4, seq)
	return ipv4(router4, local4.Addr(), 1, 0, icmp(icmp4TimeExceeded, 0, ipv4(local4.Addr(), remote4.Addr(), protoTCP, 0, probe[:quoteLen])))
}

func timeExceeded6(seq uint32, quoteLen int) []byte {
	var b [tcpHeaderLen]byte
	probe := synProbe(b[:], local6, remote6, seq)
	return icmp(icmp6TimeExceeded, 0, ipv6(local6.Addr(), remote6.Addr(), protoTCP, probe[:quoteLen]))
}

// The probe's checksum is right: summing the segment with its pseudo
// header, checksum included, gives zero.
func TestSynProbe(t *testing.T) {
	for _, f := range [][2]netip.AddrPort{{local4, remote4}, {local6, remote6}} {
		var b [tcpHeaderLen]byte
		seg := synProbe(b[:], f[0], f[1], 0xdeadbeef)
		if transportChecksum(f[0].Addr(), f[1].Addr(), protoTCP, seg) != 0 {
			t.Errorf("%v: checksum does not verify", f)
		}
		s, err := parseTCP(seg, len(seg))
		if err != nil || s.sport != f[0].Port() || s.dport != f[1].Port() || s.seq != 0xdeadbeef || s.flags != tcpSYN || s.payload != 0 {
			t.Errorf("%v: %+v, %v", f, s, err)
		}
	}
}

func TestParseICMP(t *testing.T) {
	udpQuote := ipv4(local4.Addr(), remote4.Addr(), protoUDP, 0,
		append([]byte{0x9c, 0x40, 0x23, 0x28, 0, 16, 0, 0}, udpProbe(make([]byte, 8), 77)...))
	withOptions := ipv4(router4, local4.Addr(), 1, 0, icmp(icmp4Unreachable, 13,
		ipv4(local4.Addr(), remote4.Addr(), protoTCP, 8, synProbe(make([]byte, 20), local4, remote4, 5)[:8])))
	for _, tc := range []struct {
		name string
		pkt  []byte
		v6   bool
		want icmpError
		err  bool
	}{
		{name: "time exceeded, 8 bytes quoted", pkt: timeExceeded4(42, 8),
			want: icmpError{from: router4, icmpType: 11, src: local4.Addr(), dst: remote4.Addr(), proto: protoTCP, sport: 40000, dport: 9000, seq: 42, hasSeq: true}},
		{name: "whole probe quoted", pkt: timeExceeded4(43, 20),
			want: icmpError{from: router4, icmpType: 11, src: local4.Addr(), dst: remote4.Addr(), proto: protoTCP, sport: 40000, dport: 9000, seq: 43, hasSeq: true}},
		{name: "quoted header with options", pkt: withOptions,
			want: icmpError{from: router4, icmpType: 3, code: 13, src: local4.Addr(), dst: remote4.Addr(), proto: protoTCP, sport: 40000, dport: 9000, seq: 5, hasSeq: true}},
		{name: "UDP probe quoted", pkt: ipv4(router4, local4.Addr(), 1, 0, icmp(icmp4TimeExceeded, 0, udpQuote)),
			want: icmpError{from: router4, icmpType: 11, src: local4.Addr(), dst: remote4.Addr(), proto: protoUDP, sport: 40000, dport: 9000}},
		{name: "too little quoted", pkt: timeExceeded4(1, 4), err: true},
		{name: "echo reply", pkt: ipv4(router4, local4.Addr(), 1, 0, icmp(0, 0, make([]byte, 28))), err: true},
		{name: "not ICMP", pkt: ipv4(router4, local4.Addr(), 6, 0, make([]byte, 40)), err: true},
		{name: "truncated", pkt: timeExceeded4(1, 8)[:30], err: true},
		{name: "bad quoted version", pkt: ipv4(router4, local4.Addr(), 1, 0, icmp(11, 0, append([]byte{0x65}, make([]byte, 27)...))), err: true},
		{name: "IPv6 time exceeded", pkt: timeExceeded6(44, 8), v6: true,
			want: icmpError{from: router6, icmpType: 3, src: local6.Addr(), dst: remote6.Addr(), proto: protoTCP, sport: 40000, dport: 9000, seq: 44, hasSeq: true}},
		{name: "IPv6 too little quoted", pkt: timeExceeded6(44, 7), v6: true, err: true},
		{name: "IPv6 echo reply", pkt: icmp(129, 0, make([]byte, 48)), v6: true, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m icmpError
			var err error
			if tc.v6 {
				m, err = parseICMPv6(tc.pkt, router6)
			} else {
				m, err = parseICMPv4(tc.pkt)
			}
			if tc.err {
				if err == nil {
					t.Fatalf("no error for %x", tc.pkt)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m.quotedData = nil
			if !reflect.DeepEqual(m, tc.want) {
				t.Errorf("got  %+v\nwant %+v", m, tc.want)
			}
		})
	}
	if m, err := parseICMPv4(ipv4(router4, local4.Addr(), 1, 0, icmp(icmp4TimeExceeded, 0, udpQuote))); err != nil {
		t.Fatal(err)
	} else if id, ok := udpProbeID(m.quotedData); !ok || id != 77 {
		t.Errorf("UDP probe identity %d (%v), want 77", id, ok)
	}
	if _, err := parseICMPv4(ipv4(router4, local4.Addr(), 1, 0, icmp(8, 0, nil))); !errors.Is(err, errNotError) {
		t.Errorf("echo request: %v, want errNotError", err)
	}
	if _, ok := udpProbeID([]byte("ssts\x00\x00\x00\x01")); ok {
		t.Error("a payload without the magic gave an identity")
	}
}

func TestParseTCPv4(t *testing.T) {
	ack := make([]byte, 32)
	binary.BigEndian.PutUint16(ack[0:], 9000)
	binary.BigEndian.PutUint16(ack[2:], 40000)
	binary.BigEndian.PutUint32(ack[8:], 1234)
	ack[12], ack[13] = 8<<4, tcpACK // 32-byte header with options
	s, err := parseTCPv4(ipv4(remote4.Addr(), local4.Addr(), protoTCP, 0, append(ack, "data"...)))
	if err != nil || s.sport != 9000 || s.dport != 40000 || s.ack != 1234 || s.flags != tcpACK || s.payload != 4 {
		t.Errorf("%+v, %v", s, err)
	}
	for _, bad := range [][]byte{
		ipv4(remote4.Addr(), local4.Addr(), protoUDP, 0, ack),
		ipv4(remote4.Addr(), local4.Addr(), protoTCP, 0, ack[:12]),
		ipv4(remote4.Addr(), local4.Addr(), protoTCP, 0, append([]byte{}, ack[:20]...)), // offset 32 in 20 bytes
	} {
		if s, err := parseTCPv4(bad); err == nil {
			t.Errorf("%x: %+v, want an error", bad, s)
		}
	}
}

// cmsg is one control message as the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

// extErrData is sock_extended_err with an IPv4 offender.
func extErrData(origin, typ, code byte, offender netip.Addr) []byte {
	d := make([]byte, sizeofExtErr+16)
	binary.NativeEndian.PutUint32(d, uint32(unix.EHOSTUNREACH))
	d[4], d[5], d[6] = origin, typ, code
	binary.NativeEndian.PutUint16(d[sizeofExtErr:], unix.AF_INET)
	copy(d[sizeofExtErr+4:], offender.AsSlice())
	return d
}

func TestParseControl(t *testing.T) {
	ts := make([]byte, 16)
	binary.NativeEndian.PutUint64(ts, 12)
	binary.NativeEndian.PutUint64(ts[8:], 345)
	b := append(cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, ts), cmsg(unix.SOL_IP, unix.IP_RECVERR, extErrData(eeOriginICMP, 11, 0, router4))...)
	ns, ee, ok := parseControl(b)
	if ns != 12_000_000_345 || !ok || ee.origin != eeOriginICMP || ee.icmpType != 11 || ee.offender != router4 {
		t.Errorf("stamp %d, error %+v (%v)", ns, ee, ok)
	}
	for n := range len(b) {
		parseControl(b[:n]) // never reads past what it is given
	}
	d6 := make([]byte, sizeofExtErr+28)
	d6[4], d6[5], d6[6] = eeOriginICMP6, 1, 4
	binary.NativeEndian.PutUint16(d6[sizeofExtErr:], unix.AF_INET6)
	copy(d6[sizeofExtErr+8:], remote6.Addr().AsSlice())
	if _, ee, ok := parseControl(cmsg(unix.SOL_IPV6, unix.IPV6_RECVERR, d6)); !ok || ee.offender != remote6.Addr() || ee.code != 4 {
		t.Errorf("IPv6: %+v (%v)", ee, ok)
	}
}

// routeReply is the kernel's RTM_NEWROUTE answer for request seq.
func routeReply(seq uint32, attrs ...[]byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN+sizeofRtMsg)
	binary.NativeEndian.PutUint16(b[4:], unix.RTM_NEWROUTE)
	binary.NativeEndian.PutUint32(b[8:], seq)
	b[unix.NLMSG_HDRLEN] = unix.AF_INET
	for _, a := range attrs {
		b = append(b, a...)
	}
	binary.NativeEndian.PutUint32(b, uint32(len(b)))
	return b
}

func rtAttr(typ uint16, v []byte) []byte { return appendAttr(nil, typ, v) }

func TestParseRouteReply(t *testing.T) {
	oif := rtAttr(rtaOif, binary.NativeEndian.AppendUint32(nil, 3))
	gw := rtAttr(rtaGateway, router4.AsSlice())
	r, done, err := parseRouteReply(routeReply(1, oif, gw), 1)
	if err != nil || !done || r.oif != 3 || r.gateway != router4 {
		t.Errorf("%+v %v %v", r, done, err)
	}
	if _, done, _ := parseRouteReply(routeReply(2, oif), 1); done {
		t.Error("an answer to another request was taken")
	}
	e := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(e, uint32(len(e)))
	binary.NativeEndian.PutUint16(e[4:], unix.NLMSG_ERROR)
	binary.NativeEndian.PutUint32(e[8:], 1)
	binary.NativeEndian.PutUint32(e[unix.NLMSG_HDRLEN:], uint32(0xffffffff-uint32(unix.ENETUNREACH)+1))
	if _, done, err := parseRouteReply(e, 1); !done || !errors.Is(err, unix.ENETUNREACH) {
		t.Errorf("kernel error: %v %v", done, err)
	}
	if _, _, err := parseRouteReply(routeReply(1, gw), 1); err == nil {
		t.Error("a route without an interface gave no error")
	}
	req := routeRequest(local4, remote4, protoTCP, 7, 2, 9)
	if binary.NativeEndian.Uint32(req) != uint32(len(req)) || binary.NativeEndian.Uint16(req[4:]) != unix.RTM_GETROUTE {
		t.Errorf("request header %x", req[:16])
	}
}

func FuzzParseICMPv4(f *testing.F) {
	f.Add(timeExceeded4(1, 8))
	f.Add(timeExceeded4(2, 20))
	f.Add(ipv4(router4, local4.Addr(), 1, 0, icmp(icmp4Unreachable, 3, ipv4(local4.Addr(), remote4.Addr(), protoUDP, 4, make([]byte, 16)))))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseICMPv4(b)
		if err == nil && (!m.from.Is4() || !m.src.Is4() || len(m.quotedData) > len(b)) {
			t.Fatalf("%+v from %x", m, b)
		}
	})
}

func FuzzParseICMPv6(f *testing.F) {
	f.Add(timeExceeded6(1, 8))
	f.Add(timeExceeded6(2, 20))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseICMPv6(b, router6)
		if err == nil && (!m.src.Is6() || len(m.quotedData) > len(b)) {
			t.Fatalf("%+v from %x", m, b)
		}
	})
}

func FuzzParseTCP(f *testing.F) {
	f.Add(ipv4(remote4.Addr(), local4.Addr(), protoTCP, 0, synProbe(make([]byte, 20), remote4, local4, 1)), true)
	f.Add(synProbe(make([]byte, 20), remote6, local6, 1), false)
	f.Fuzz(func(t *testing.T, b []byte, v4 bool) {
		var s segment
		var err error
		if v4 {
			s, err = parseTCPv4(b)
		} else {
			s, err = parseTCP(b, len(b))
		}
		if err == nil && s.payload < 0 {
			t.Fatalf("negative payload %d from %x", s.payload, b)
		}
	})
}

func FuzzParseControl(f *testing.F) {
	f.Add(append(cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, make([]byte, 16)), cmsg(unix.SOL_IP, unix.IP_RECVERR, extErrData(2, 11, 0, router4))...))
	f.Fuzz(func(t *testing.T, b []byte) {
		// cmsg headers are read in place: fuzz an aligned copy.
		buf := make([]uint64, (len(b)+7)/8)
		c := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(buf))), len(buf)*8)[:len(b)]
		copy(c, b)
		parseControl(c)
	})
}

func FuzzParseRouteReply(f *testing.F) {
	f.Add(routeReply(1, rtAttr(rtaOif, []byte{3, 0, 0, 0}), rtAttr(rtaGateway, router4.AsSlice())))
	f.Add(routeReply(1, rtAttr(rtaVia, append([]byte{2, 0}, router4.AsSlice()...))))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, done, err := parseRouteReply(b, 1)
		if done && err == nil && r.oif == 0 {
			t.Fatalf("a route without an interface from %x", b)
		}
	})
}
