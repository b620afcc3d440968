package stamp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

var testKeys = frame.Keys{[]byte("0123456789abcdef0123456789abcdef"), []byte("fedcba9876543210fedcba9876543210")}

func TestTimestampFormats(t *testing.T) {
	// 1970-01-01 is 2208988800 s after NTP's epoch; half a second is
	// 0x80000000 of fraction.
	if got := NewTimestamp(5e8, FormatNTP, 0); got != Timestamp(uint64(2208988800)<<32|0x80000000) {
		t.Errorf("NTP of 0.5 s: %#x", uint64(got))
	}
	// PTP: TAI seconds and nanoseconds.
	if got := NewTimestamp(1e9+7, FormatPTP, 37); got != Timestamp(uint64(38)<<32|7) {
		t.Errorf("PTP of 1 s + 7 ns: %#x", uint64(got))
	}
	for _, ns := range []int64{0, 1, 999_999_999, 1_700_000_000_123_456_789, 2_085_978_496_000_000_000 + 12345} { // the last after NTP's 2036 wrap
		for _, f := range []Format{FormatNTP, FormatPTP} {
			got, err := NewTimestamp(ns, f, 37).UnixNano(f, 37)
			if err != nil || got-ns > 1 || ns-got > 1 {
				t.Errorf("%v %d: round trip %d %v", f, ns, got, err)
			}
		}
	}
	if _, err := Timestamp(uint64(1)<<32|1_000_000_000).UnixNano(FormatPTP, 0); !errors.Is(err, ErrTimestamp) {
		t.Errorf("PTP nanoseconds of 1e9 accepted: %v", err)
	}
}

func TestErrorEstimate(t *testing.T) {
	for _, bound := range []time.Duration{0, 1, 233 * time.Nanosecond, time.Microsecond, 16 * time.Millisecond, time.Second, 16 * time.Second, 100 * time.Hour} {
		e := NewErrorEstimate(true, FormatPTP, bound)
		got, ok := e.Bound()
		if !ok || e.Multiplier() == 0 || got < bound || (bound > time.Microsecond && got > bound+bound/100+time.Nanosecond) {
			t.Errorf("bound %v: scale %d multiplier %d states %v (%v)", bound, e.Scale(), e.Multiplier(), got, ok)
		}
		if !e.Synced() || e.Format() != FormatPTP {
			t.Errorf("bound %v: S/Z bits lost: %#04x", bound, uint16(e))
		}
	}
	// RFC 4656: error = Multiplier × 2^(Scale−32) s. Scale 22, multiplier 1
	// is 2^-10 s = 976562.5 ns, rounded up.
	if d, _ := ErrorEstimate(22<<8 | 1).Bound(); d != 976563 {
		t.Errorf("scale 22 multiplier 1: %v", d)
	}
	if _, ok := ErrorEstimate(0x8000).Bound(); ok {
		t.Error("a multiplier of 0 must state no bound")
	}
	s := ErrorEstimateOf(clock.Sync{Synced: false, MaxErrorMicros: 16_000_000}, FormatNTP)
	if s.Synced() || s.Format() != FormatNTP {
		t.Errorf("unsynchronised clock: %#04x", uint16(s))
	}
}

// The byte offsets of RFC 8762 §4.2.1, §4.2.2, §4.3.1 and §4.3.2 (with RFC
// 8972's SSID), written out here and not taken from the codec.
func TestLayoutsFromRFC(t *testing.T) {
	type off struct{ seq, ts, ee, ssid, rx, sseq, sts, see, ttl, hmac, base int }
	for _, tc := range []struct {
		m Mode
		o off
	}{
		{Unauthenticated, off{0, 4, 12, 14, 16, 24, 28, 36, 40, -1, 44}},
		{Authenticated, off{0, 16, 24, 26, 32, 48, 64, 72, 80, 96, 112}},
	} {
		o := tc.o
		b := make([]byte, o.base+8)
		binary.BigEndian.PutUint32(b[o.seq:], 0x01020304)
		binary.BigEndian.PutUint64(b[o.ts:], 0x1111111122222222)
		binary.BigEndian.PutUint16(b[o.ee:], 0x8123)
		binary.BigEndian.PutUint16(b[o.ssid:], 0xbeef)
		s, err := ParseSender(b, tc.m)
		if err != nil || s.Seq != 0x01020304 || s.Timestamp != 0x1111111122222222 || s.ErrorEstimate != 0x8123 || s.SSID != 0xbeef {
			t.Errorf("%v sender %+v %v", tc.m, s, err)
		}
		binary.BigEndian.PutUint64(b[o.rx:], 0x3333333344444444)
		binary.BigEndian.PutUint32(b[o.sseq:], 0x05060708)
		binary.BigEndian.PutUint64(b[o.sts:], 0x5555555566666666)
		binary.BigEndian.PutUint16(b[o.see:], 0x4001)
		b[o.ttl] = 63
		r, err := ParseReflector(b, tc.m)
		want := ReflectorPacket{Seq: 0x01020304, Timestamp: 0x1111111122222222, ErrorEstimate: 0x8123, SSID: 0xbeef, ReceiveTimestamp: 0x3333333344444444,
			SenderSeq: 0x05060708, SenderTimestamp: 0x5555555566666666, SenderErrorEstimate: 0x4001, SenderTTL: 63}
		if err != nil || r != want {
			t.Errorf("%v reflector %+v %v", tc.m, r, err)
		}
		// And back: Put writes the same octets and zeroes the rest.
		out := make([]byte, o.base)
		for i := range out {
			out[i] = 0xff
		}
		if err := r.Put(out, tc.m); err != nil || !bytes.Equal(out, b[:o.base]) {
			t.Errorf("%v reflector put:\n%x\nwant\n%x", tc.m, out, b[:o.base])
		}
		if _, err := ParseSender(b[:o.base-1], tc.m); !errors.Is(err, ErrShort) {
			t.Errorf("%v: %d octets accepted: %v", tc.m, o.base-1, err)
		}
	}
}

// request builds a sender packet with the given TLVs after the base.
func request(m Mode, tlvs ...[]byte) []byte {
	b := make([]byte, m.BaseLen())
	binary.BigEndian.PutUint32(b, 7)
	for _, t := range tlvs {
		b = append(b, t...)
	}
	return b
}

func tlv(flags uint8, typ TLVType, value []byte) []byte {
	b := []byte{flags, byte(typ), 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(len(value)))
	return append(b, value...)
}

func reflect(t *testing.T, pkt []byte, req Request) (Reply, ReplyTLVs) {
	t.Helper()
	var rep Reply
	n := len(pkt)
	if err := Reflect(pkt, &req, &rep); err != nil {
		t.Fatal(err)
	}
	Finish(pkt, &rep, time.Now().UnixNano())
	if rep.Len != n || len(pkt) != n {
		t.Fatalf("reply length %d for a %d-octet request", rep.Len, n)
	}
	return rep, ParseReplyTLVs(pkt, req.Mode, req.Auth)
}

func TestReflectFlagsTLVs(t *testing.T) {
	src, dst := netip.MustParseAddrPort("192.0.2.1:40000"), netip.MustParseAddrPort("198.51.100.2:862")
	base := Request{Mode: Unauthenticated, RxTime: time.Now().UnixNano(), RxKernel: true, TTL: 60, TOS: 46<<2 | 1, Src: src, Dst: dst,
		Stateful: true, ReflectorSeq: 3, RxCount: 4, TxCount: 4}
	t.Run("known", func(t *testing.T) { testReflectKnownTLVs(t, base) })
	t.Run("unknown and malformed", func(t *testing.T) {
		pkt := request(Unauthenticated, tlv(FlagU, 200, []byte{9, 9}), tlv(FlagU, TLVClassOfService, []byte{1, 2}), tlv(FlagU, TLVDirectMeasurement, make([]byte, 8)))
		want200 := append([]byte(nil), pkt[44:50]...)
		rep, got := reflect(t, pkt, base)
		if rep.Unrecognized != 1 || rep.Malformed != 2 || len(got.Unrecognized) != 1 || got.Unrecognized[0] != 200 || len(got.Malformed) != 2 {
			t.Errorf("reply %+v tlvs %+v", rep, got)
		}
		if !bytes.Equal(pkt[44:50], want200) {
			t.Errorf("unknown TLV changed: %x, want %x", pkt[44:50], want200)
		}
	})
	t.Run("overrun", func(t *testing.T) {
		pkt := request(Unauthenticated, []byte{FlagU, byte(TLVExtraPadding), 0, 50, 1, 2})
		rep, got := reflect(t, pkt, base)
		if rep.Malformed != 1 || !got.Overrun || pkt[44]&FlagM == 0 {
			t.Errorf("overrun: reply %+v tlvs %+v flags %#x", rep, got, pkt[44])
		}
	})
	t.Run("zero padding", func(t *testing.T) {
		pkt := request(Unauthenticated, make([]byte, 30))
		rep, _ := reflect(t, pkt, base)
		if rep.Unrecognized+rep.Malformed != 0 || !allZero(pkt[44:]) {
			t.Errorf("RFC 8762 zero padding treated as TLVs: %+v %x", rep, pkt[44:])
		}
	})
	t.Run("hmac tlv", func(t *testing.T) { testReflectHMACTLV(t, base) })
}

// Location, Class of Service, Direct Measurement and Extra Padding
// TLVs are filled in as RFC 8972 says, none flagged.
func testReflectKnownTLVs(t *testing.T, base Request) {
	loc := make([]byte, LocationRequestLen)
	putLocationRequest(loc)
	cos := make([]byte, 4)
	ClassOfService{DSCP1: 10}.Put(cos)
	pkt := request(Unauthenticated, tlv(FlagU, TLVLocation, loc), tlv(FlagU, TLVClassOfService, cos), tlv(FlagU, TLVDirectMeasurement, make([]byte, 12)),
		tlv(FlagU, TLVExtraPadding, []byte{1, 2, 3}))
	rep, got := reflect(t, pkt, base)
	if len(got.Unrecognized)+len(got.Malformed)+len(got.Integrity) != 0 || !got.HasLocation || !got.HasClassOfService || !got.HasDirectMeasurement {
		t.Fatalf("%+v", got)
	}
	if got.Location != (Location{DstPort: 862, SrcPort: 40000, Dst: base.Dst.Addr(), Src: base.Src.Addr()}) {
		t.Errorf("location %+v", got.Location)
	}
	if got.ClassOfService != (ClassOfService{DSCP1: 10, DSCP2: 46, ECN: 1}) || rep.TOS != 10<<2 {
		t.Errorf("class of service %+v, reply TOS %d", got.ClassOfService, rep.TOS)
	}
	if got.DirectMeasurement.ReflectorRx != 4 || got.DirectMeasurement.ReflectorTx != 4 || rep.Seq != 3 {
		t.Errorf("counters %+v seq %d", got.DirectMeasurement, rep.Seq)
	}
}

// An HMAC TLV that verifies leaves the TLVs usable; under another key
// every TLV comes back with I set and none is used.
func testReflectHMACTLV(t *testing.T, base Request) {
	auth := NewAuth(testKeys)
	tm, err := NewTemplate(Unauthenticated, 0, TLVRequest{DirectMeasurement: true, HMAC: true})
	if err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, tm.Len)
	if _, err := tm.Fill(pkt, Fields{Seq: 1, SenderTx: 2}, auth); err != nil {
		t.Fatal(err)
	}
	good := append([]byte(nil), pkt...)
	req := base
	req.Auth = auth
	_, got := reflect(t, pkt, req)
	if !got.HMACPresent || !got.HMACValid || len(got.Integrity) != 0 || !got.HasDirectMeasurement {
		t.Errorf("valid HMAC TLV: %+v", got)
	}
	// Another key: every TLV comes back with I set.
	pkt = append([]byte(nil), good...)
	req.Auth = NewAuth(frame.Keys{[]byte("another key, 16+ octets")})
	rep, got := reflect(t, pkt, req)
	if !got.Unverified || got.HasDirectMeasurement {
		t.Errorf("a reply whose HMAC TLV does not verify: its TLVs used: %+v", got)
	}
	if flags := ParseReplyTLVs(pkt, Unauthenticated, nil); rep.Integrity != 2 || len(flags.Integrity) != 2 {
		t.Errorf("wrong key: %+v %+v", rep, flags)
	}
}

func TestAuthenticatedReflect(t *testing.T) {
	auth := NewAuth(testKeys)
	tm, err := NewTemplate(Authenticated, 0, TLVRequest{})
	if err != nil || tm.Len != AuthBaseLen {
		t.Fatal(tm, err)
	}
	pkt := make([]byte, tm.Len)
	if _, err := tm.Fill(pkt, Fields{Seq: 5, Timestamp: 99, SSID: 1}, auth); err != nil {
		t.Fatal(err)
	}
	forged := append([]byte(nil), pkt...)
	forged[20] ^= 1
	var rep Reply
	if err := Reflect(forged, &Request{Mode: Authenticated, Auth: auth}, &rep); !errors.Is(err, ErrAuth) {
		t.Errorf("forged packet: %v", err)
	}
	if err := Reflect(append([]byte(nil), pkt...), &Request{Mode: Authenticated, Auth: NewAuth(frame.Keys{[]byte("a different key....")})}, &rep); !errors.Is(err, ErrAuth) {
		t.Errorf("wrong key: %v", err)
	}
	if err := Reflect(pkt, &Request{Mode: Authenticated, Auth: auth}, &rep); err != nil {
		t.Fatal(err)
	}
	Finish(pkt, &rep, time.Now().UnixNano())
	// The reply verifies with the second key too (a rollover), and its
	// HMAC covers the first 96 octets: T3 included.
	if _, err := NewAuth(testKeys[1:]).Verify(pkt); err == nil {
		t.Error("reply signed with the second key: should be the one that verified")
	}
	if k, err := auth.Verify(pkt); err != nil || k != 0 {
		t.Errorf("reply HMAC: key %d %v", k, err)
	}
	pkt[17] ^= 1
	if _, err := auth.Verify(pkt); !errors.Is(err, ErrAuth) {
		t.Errorf("changed T3 verified: %v", err)
	}
}

func TestReflectAllocatesNothing(t *testing.T) {
	auth := NewAuth(testKeys)
	tm, _ := NewTemplate(Authenticated, 400, TLVRequest{Location: true, TimestampInfo: true, ClassOfService: true, DirectMeasurement: true, FollowUp: true})
	orig := make([]byte, tm.Len)
	if _, err := tm.Fill(orig, Fields{Seq: 5}, auth); err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, len(orig))
	req := Request{Mode: Authenticated, Auth: auth, Src: netip.MustParseAddrPort("[2001:db8::1]:5"), Dst: netip.MustParseAddrPort("[2001:db8::2]:862"), Stateful: true}
	var rep Reply
	allocs := testing.AllocsPerRun(100, func() {
		copy(pkt, orig)
		if err := Reflect(pkt, &req, &rep); err != nil {
			t.Fatal(err)
		}
		Finish(pkt, &rep, 1)
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per packet", allocs)
	}
}

func TestTemplateSizes(t *testing.T) {
	if _, err := NewTemplate(Unauthenticated, 50, TLVRequest{ClassOfService: true}); err == nil {
		t.Error("a size 2 octets above the TLVs was accepted (no room for an Extra Padding TLV)")
	}
	tm, err := NewTemplate(Unauthenticated, 1000, TLVRequest{ClassOfService: true})
	if err != nil || tm.Len != 1000 {
		t.Fatal(err)
	}
	r := ReadTLVs(tm.buf, Unauthenticated)
	var types []TLVType
	for {
		x, ok := r.Next()
		if !ok {
			break
		}
		types = append(types, x.Type)
		if x.Flags != FlagU {
			t.Errorf("request TLV %v flags %#x, want U only", x.Type, x.Flags)
		}
	}
	if len(types) != 2 || types[1] != TLVExtraPadding || r.Off() != 1000 {
		t.Errorf("TLVs %v end at %d", types, r.Off())
	}
	if _, err := NewTemplate(Unauthenticated, 43, TLVRequest{}); err == nil {
		t.Error("43 octets accepted")
	}
}

// The reflector's TLV flags are exactly RFC 8972 §4's: U only on a TLV it
// does not recognise, M on a malformed one (a Length wrong for its type, a
// TLV running past the packet, a malformed sub-TLV: its parent too), I on
// every TLV when the HMAC TLV does not verify; whatever else a sender set
// (M, I, reserved bits) is cleared.
func TestReflectFlagsExactlyRFC8972(t *testing.T) {
	src, dst := netip.MustParseAddrPort("192.0.2.1:40000"), netip.MustParseAddrPort("198.51.100.2:862")
	base := Request{Mode: Unauthenticated, RxTime: time.Now().UnixNano(), Src: src, Dst: dst}
	flagsOf := func(pkt []byte) []uint8 {
		var out []uint8
		for off := UnauthBaseLen; off+TLVHeaderLen <= len(pkt); {
			out = append(out, pkt[off])
			off += TLVHeaderLen + int(binary.BigEndian.Uint16(pkt[off+2:]))
		}
		return out
	}
	t.Run("sender flags cleared", func(t *testing.T) {
		pkt := request(Unauthenticated, tlv(FlagU|FlagM|FlagI|0x1f, TLVDirectMeasurement, make([]byte, 12)), tlv(FlagU|FlagI, 200, []byte{1, 2, 3, 4}))
		reflect(t, pkt, base)
		if got := flagsOf(pkt); got[0] != 0 || got[1] != FlagU {
			t.Errorf("flags %#x, want [0 0x80]", got)
		}
	})
	t.Run("overrun", func(t *testing.T) {
		for _, tc := range []struct {
			typ  TLVType
			want uint8
		}{{TLVExtraPadding, FlagM}, {200, FlagU | FlagM}} {
			pkt := request(Unauthenticated, []byte{FlagU, byte(tc.typ), 0, 50, 1, 2})
			reflect(t, pkt, base)
			if pkt[44] != tc.want {
				t.Errorf("type %d running past the packet: flags %#x, want %#x", tc.typ, pkt[44], tc.want)
			}
		}
	})
	t.Run("hmac fails", func(t *testing.T) {
		auth := NewAuth(testKeys)
		tm, err := NewTemplate(Unauthenticated, 0, TLVRequest{ClassOfService: true, DirectMeasurement: true, HMAC: true, Unassigned: 200})
		if err != nil {
			t.Fatal(err)
		}
		pkt := make([]byte, tm.Len)
		if _, err := tm.Fill(pkt, Fields{Seq: 1, SenderTx: 2}, auth); err != nil {
			t.Fatal(err)
		}
		req := base
		req.Auth = NewAuth(frame.Keys{[]byte("another key, 16+ octets")})
		rep, _ := reflect(t, pkt, req)
		// class of service, direct measurement, the unassigned type, HMAC
		want := []uint8{FlagI, FlagI, FlagU | FlagI, FlagI}
		if got := flagsOf(pkt); !bytes.Equal(got, want) || rep.Integrity != 4 || rep.Unrecognized != 1 {
			t.Errorf("flags %#x, want %#x; reply %+v", got, want, rep)
		}
	})
	t.Run("malformed sub-TLV marks its parent", func(t *testing.T) {
		loc := make([]byte, LocationRequestLen)
		putLocationRequest(loc)
		binary.BigEndian.PutUint16(loc[4+2:], 12) // Destination IP Address sub-TLV of 12 octets
		binary.BigEndian.PutUint16(loc[4+TLVHeaderLen+12+2:], 20)
		pkt := request(Unauthenticated, tlv(FlagU, TLVLocation, loc))
		rep, _ := reflect(t, pkt, base)
		if pkt[44] != FlagM || pkt[48+4]&FlagM == 0 || rep.Malformed != 1 {
			t.Errorf("Location with a malformed address sub-TLV: parent flags %#x, sub-TLV flags %#x, reply %+v", pkt[44], pkt[48+4], rep)
		}
	})
}
