package frame

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// samplePath is b's trace of c through two routers, the second silent.
func samplePath() *Path {
	return &Path{Method: PathTCP, Status: PathReached, Probes: 3, MaxTTL: 30, Packets: 9, Duration: 1200 * time.Millisecond,
		Local:  netip.MustParseAddrPort("10.61.1.1:40000"),
		Remote: netip.MustParseAddrPort("10.61.3.2:9000"),
		Reason: "tcp: CAP_NET_RAW", Route: "via 10.61.1.2 dev eth1",
		Hops: []PathHop{
			{TTL: 1, Sent: 3, Answered: 3, Address: netip.MustParseAddr("10.61.1.2"), Min: 80 * time.Microsecond, Median: 90 * time.Microsecond, Max: 120 * time.Microsecond},
			{TTL: 2, Sent: 3},
			{TTL: 3, Flags: PathHopFarEnd, Sent: 3, Answered: 3, Address: netip.MustParseAddr("fd61:3::2"), Min: 20 * time.Millisecond, Median: 20100 * time.Microsecond, Max: 21 * time.Millisecond},
		}}
}

func pathRecord(p *Path) []byte {
	h := sampleHop()
	h.Flags &^= RecEnd
	h.Path = p
	return AppendHop(nil, &h)
}

func TestPathRoundTrip(t *testing.T) {
	for _, p := range []*Path{samplePath(), NoPath(PathDisabled, "b runs with --no-trace.enabled"), NoPath(PathRunning, "")} {
		rec := pathRecord(p)
		recs, err := ParseRecords(rec, 1)
		if err != nil {
			t.Fatalf("%s: %v", p.Status, err)
		}
		got := recs[0].Hop
		if got.Flags&RecPath == 0 {
			t.Errorf("%s: RecPath not set", p.Status)
		}
		if !reflect.DeepEqual(got.Path, p) {
			t.Errorf("%s: decoded\n%+v\nwant\n%+v", p.Status, got.Path, p)
		}
	}
	// Without a path, the record is as before: no flag, no section.
	h := sampleHop()
	h.Flags |= RecPath
	recs, err := ParseRecords(AppendHop(nil, &h), 1)
	if err != nil || recs[0].Hop.Path != nil || recs[0].Hop.Flags&RecPath != 0 {
		t.Errorf("a record without a path: %v, flags %#x, path %v", err, recs[0].Hop.Flags, recs[0].Hop.Path)
	}
}

// A path's text is made valid and cut to its bound by the encoder, so
// that what a relay sends is always accepted.
func TestPathClipsText(t *testing.T) {
	p := samplePath()
	p.Reason = "udp: " + strings.Repeat("x", 400) + "\x1b[31m"
	p.Route = "dev \xffeth0"
	recs, err := ParseRecords(pathRecord(p), 1)
	if err != nil {
		t.Fatal(err)
	}
	got := recs[0].Hop.Path
	if len(got.Reason) > MaxPathText || !strings.HasPrefix(got.Reason, "udp: xxx") || strings.Contains(got.Route, "\xff") {
		t.Errorf("reason %q (%d bytes), route %q", got.Reason, len(got.Reason), got.Route)
	}
}

// pathBytes is the path section of a record (after the name and vars).
func pathSection(rec []byte) (prefix []byte, section []byte) {
	h := sampleHop()
	h.Flags &^= RecEnd
	plain := AppendHop(nil, &h)
	return rec[:len(plain)], rec[len(plain):]
}

// withSection rebuilds a record with another path section.
func withSection(prefix, section []byte) []byte {
	rec := append(bytes.Clone(prefix), section...)
	rec[0], rec[1] = byte(len(rec)>>8), byte(len(rec))
	rec[3] |= byte(RecPath >> 8)
	return rec
}

func TestPathRejectsMalformed(t *testing.T) {
	prefix, good := pathSection(pathRecord(samplePath()))
	encode := func(change func(p *Path)) []byte {
		p := samplePath()
		change(p)
		_, s := pathSection(pathRecord(p))
		return s
	}
	// Offsets in the sample's section: the fixed part, then the
	// addresses (1+4+2 each), the texts, the count.
	hopsOff := pathFixedLen + 2*(1+4+2) + 1 + len(samplePath().Reason) + 1 + len(samplePath().Route) + 1
	hop0 := hopsOff
	tests := []struct {
		name    string
		section []byte
		want    string
	}{
		{"method", func() []byte { s := bytes.Clone(good); s[0] = 3; return s }(), "unknown trace method"},
		{"status", func() []byte { s := bytes.Clone(good); s[1] = 0; return s }(), "unknown trace status"},
		{"status beyond", func() []byte { s := bytes.Clone(good); s[1] = 10; return s }(), "unknown trace status"},
		{"traced without probes", encode(func(p *Path) { p.Method = PathNone }), "sent no probe"},
		{"hops without a trace", encode(func(p *Path) { p.Status = PathDisabled }), "lists 3 TTLs"},
		{"probes", encode(func(p *Path) { p.Probes = 11 }), "trace bounds"},
		{"more TTLs than max", encode(func(p *Path) { p.MaxTTL = 2 }), "3 TTLs in a trace bounded by 2"},
		{"reached, no TTL", encode(func(p *Path) { p.Hops = nil }), "lists no TTL"},
		{"reached, not at the far end", encode(func(p *Path) { p.Hops[2].Flags = 0 }), "does not end at it"},
		{"TTL order", encode(func(p *Path) { p.Hops[1].TTL = 3 }), "listed at position 2"},
		{"TTL flags", func() []byte { s := bytes.Clone(good); s[hop0+1] = 0x80; return s }(), "unknown flags"},
		{"answered more than sent", encode(func(p *Path) { p.Hops[0].Answered = 4 }), "4 of 3 probes answered"},
		{"sent too many", encode(func(p *Path) { p.Hops[0].Sent, p.Hops[0].Answered = 21, 1 }), "at most 20 sent"},
		{"silent with an address", encode(func(p *Path) { p.Hops[1].Address = netip.MustParseAddr("10.0.0.1") }), "no probe answered"},
		{"silent with an rtt", encode(func(p *Path) { p.Hops[1].Max = time.Millisecond }), "no probe answered"},
		{"answered without address", encode(func(p *Path) { p.Hops[0].Address = netip.Addr{} }), "without an address"},
		{"rtt order", encode(func(p *Path) { p.Hops[0].Min = time.Second }), "out of order"},
		{"address length", func() []byte { s := bytes.Clone(good); s[pathFixedLen] = 5; return s }(), "local address of 5 bytes"},
		{"port without address", func() []byte {
			s := append([]byte{}, good[:pathFixedLen]...)
			s = append(s, 0, 0x23, 0x28)
			return append(s, good[pathFixedLen+7:]...)
		}(), "a port without an address"},
		{"reason not text", func() []byte {
			s := bytes.Clone(good)
			s[pathFixedLen+2*7+1] = 0x07
			return s
		}(), "trace reason"},
		{"negative rtt", func() []byte { s := bytes.Clone(good); s[hop0+4+1+4] = 0xff; return s }(), "negative"},
		{"truncated", good[:len(good)-3], "needs"},
		{"trailing", append(bytes.Clone(good), 0), "trailing"},
	}
	for _, tc := range tests {
		_, err := ParseRecords(withSection(prefix, tc.section), 1)
		var br *BadRecord
		if err == nil || !errors.As(err, &br) || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a bad record saying %q", tc.name, err, tc.want)
		}
	}
	// The end host has no next hop to trace.
	h := sampleHop()
	h.Flags |= RecEnd
	h.Downstream, h.Return, h.WaitReturn = 0, 0, 0
	h.Path = samplePath()
	if _, err := ParseRecords(AppendHop(nil, &h), 1); err == nil || !strings.Contains(err.Error(), "end host's record carries a path") {
		t.Errorf("end host with a path: %v", err)
	}
}

// A relay checks every downstream reply (CheckReply) without allocating,
// path sections included.
func TestCheckReplyWithPathsDoesNotAllocate(t *testing.T) {
	recs := append(pathRecord(samplePath()), pathRecord(NoPath(PathFailed, "trace: not an established TCP connection"))...)
	end := sampleHop()
	recs = append(recs, AppendHop(nil, &end)...)
	sign := NewSigner(testKey)
	fr := AppendReply(nil, KindProbeReply, ProbeHeader{Seq: 7, Flags: ProbeTrace | ProbePath}, nil, recs, 3, sign)
	want := Expect{Request: KindProbeRequest, Seq: 7}
	if _, err := CheckReply(fr, sign, DefaultMaxFrameBytes, want); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = CheckReply(fr, sign, DefaultMaxFrameBytes, want) }); n != 0 {
		t.Errorf("CheckReply of a reply with paths: %v allocations", n)
	}
	// A hop's record with a full path still fits the record's length.
	p := samplePath()
	p.MaxTTL = MaxPathTTL
	p.Hops = nil
	for i := 1; i <= MaxPathTTL; i++ {
		p.Hops = append(p.Hops, PathHop{TTL: uint8(i), Sent: 3, Answered: 1, Address: netip.MustParseAddr("fd00::1"), Min: 1, Median: 1, Max: 1})
	}
	p.Hops[MaxPathTTL-1].Flags = PathHopFarEnd
	p.Reason, p.Route = strings.Repeat("r", MaxPathText), strings.Repeat("v", MaxPathText)
	if got, _ := pathSection(pathRecord(p)); len(pathRecord(p))-len(got) > MaxPathLen {
		t.Errorf("a full path section is %d bytes, MaxPathLen %d", len(pathRecord(p))-len(got), MaxPathLen)
	}
	if _, err := ParseRecords(pathRecord(p), 1); err != nil {
		t.Errorf("a full path: %v", err)
	}
}

func FuzzPathRecord(f *testing.F) {
	_, good := pathSection(pathRecord(samplePath()))
	f.Add(good)
	_, none := pathSection(pathRecord(NoPath(PathDisabled, "off")))
	f.Add(none)
	f.Add([]byte{1, 1, 3, 30, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 3, 3, 0})
	prefix, _ := pathSection(pathRecord(samplePath()))
	f.Fuzz(func(t *testing.T, section []byte) {
		if len(prefix)+len(section) > 0xffff {
			return
		}
		rec := withSection(prefix, section)
		recs, err := ParseRecords(rec, 1)
		if err != nil {
			return
		}
		// Whatever was accepted encodes back to something accepted,
		// with the same meaning.
		again, err := ParseRecords(AppendHop(nil, &recs[0].Hop), 1)
		if err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
		if !reflect.DeepEqual(again[0].Hop.Path, recs[0].Hop.Path) {
			t.Fatalf("path changed on re-encoding:\n%+v\n%+v", recs[0].Hop.Path, again[0].Hop.Path)
		}
		if err := checkRecords(rec, 1); err != nil {
			t.Fatalf("checkRecords refuses what ParseRecords accepted: %v", err)
		}
	})
}
