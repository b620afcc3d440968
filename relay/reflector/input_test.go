package reflector

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/udpmsg"
)

// waitStats waits (bounded) until cond holds for the reflector's counters.
func waitStats(t *testing.T, r *Reflector, cond func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := r.Stats()
		if cond(s) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An authenticated reflector refuses a sender with another key, and counts
// it; the right key still gets answers.
func TestWrongKeyRefusedAndCounted(t *testing.T) {
	r := start(t, Config{Keys: testKeys})
	wrong := frame.Keys{[]byte("not the chain's key at all!!")}
	_, sum := probe(t, stamp.SessionOptions{Target: r.Addr().String(), Mode: stamp.Authenticated, Keys: wrong}, 5)
	if sum.Received != 0 {
		t.Errorf("wrong key answered: %+v", sum)
	}
	s := waitStats(t, r, func(s Stats) bool { return s.Refused["auth"] >= 5 })
	if s.Refused["auth"] != 5 || s.Reflected != 0 {
		t.Errorf("counters %+v", s)
	}
	// An unauthenticated sender is refused too: its 44 octets are short
	// of the authenticated base packet.
	_, sum = probe(t, stamp.SessionOptions{Target: r.Addr().String()}, 3)
	if sum.Received != 0 {
		t.Errorf("unauthenticated sender answered: %+v", sum)
	}
	_, sum = probe(t, stamp.SessionOptions{Target: r.Addr().String(), Mode: stamp.Authenticated, Keys: testKeys}, 5)
	if sum.Received != 5 {
		t.Errorf("right key: %+v", sum)
	}
	s = waitStats(t, r, func(s Stats) bool { return s.Refused["short"] >= 3 })
	if s.Refused["short"] != 3 || s.Reflected != 5 {
		t.Errorf("counters %+v", s)
	}
}

// Short, oversized, malformed and unknown-TLV packets get the RFC's
// behaviour: the first two are refused and counted, the others answered
// with their TLVs flagged; the reflector keeps serving.
func TestBadInput(t *testing.T) {
	r := start(t, Config{MaxPacketBytes: 1000})
	c, err := net.Dial("udp", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	unknownTLV := append(make([]byte, 44), 0x80, 250, 0, 4, 1, 2, 3, 4)
	malformed := append(make([]byte, 44), 0x80, byte(stamp.TLVDirectMeasurement), 0, 5, 1, 2, 3, 4, 5)
	overrun := append(make([]byte, 44), 0x80, byte(stamp.TLVExtraPadding), 0xff, 0xff, 9)
	for _, p := range [][]byte{{}, make([]byte, 43), make([]byte, 1001), unknownTLV, malformed, overrun} {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	got := map[int][]byte{}
	for len(got) < 3 {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 2048)
		n, err := c.Read(b)
		if err != nil {
			t.Fatalf("%d replies: %v", len(got), err)
		}
		got[n] = append(got[n], b[:n]...)
	}
	if u := got[len(unknownTLV)]; len(u) != len(unknownTLV) || u[44] != 0x80 || u[45] != 250 || string(u[48:52]) != "\x01\x02\x03\x04" {
		t.Errorf("unknown TLV reply %x: want it returned unchanged with U set", u)
	}
	if m := got[len(malformed)]; len(m) != len(malformed) || m[44]&stamp.FlagM == 0 || m[44]&stamp.FlagU != 0 {
		t.Errorf("malformed TLV reply flags %#x: want M, not U", m[44])
	}
	if o := got[len(overrun)]; len(o) != len(overrun) || o[44]&stamp.FlagM == 0 {
		t.Errorf("overrun TLV reply %x: want M", o)
	}
	s := waitStats(t, r, func(s Stats) bool { return s.Refused["short"] >= 2 && s.Refused["too_large"] >= 1 && s.Reflected >= 3 })
	// The empty datagram: the kernel delivers it (0 octets), short.
	if s.Refused["short"] != 2 || s.Refused["too_large"] != 1 || s.Reflected != 3 || s.Flagged["unrecognized"] != 1 || s.Flagged["malformed"] != 2 {
		t.Errorf("counters %+v", s)
	}
}

// floodSessions sends one packet for each of n SSIDs from addr (a
// loopback address of its own), as one host filling the session table.
func floodSessions(t *testing.T, r *Reflector, addr string, n int) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(addr)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := net.UDPAddrFromAddrPort(r.Addr())
	for ssid := 1; ssid <= n; ssid++ {
		pkt := make([]byte, stamp.UnauthBaseLen)
		binary.BigEndian.PutUint16(pkt[14:], uint16(ssid))
		if _, err := c.WriteToUDP(pkt, to); err != nil {
			t.Fatal(err)
		}
		// one reply back: the reflector took it (bounded wait)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadFromUDP(make([]byte, 64)); err != nil {
			t.Fatalf("flood packet %d: %v", ssid, err)
		}
	}
}

// One host fills the session table (review finding 3): a new sender is
// still answered — statelessly, so without counters — never left
// without a reply; the reflector counts why.
func TestSessionsFullAnsweredStatelessly(t *testing.T) {
	r := start(t, Config{MaxSessions: 10})
	floodSessions(t, r, "127.0.0.2", 10)
	res, sum := probe(t, stamp.SessionOptions{Target: r.Addr().String(), TLVs: stamp.TLVRequest{DirectMeasurement: true}}, 3)
	if sum.Received != 3 {
		t.Fatalf("a new sender with the table full: %d of 3 answered", sum.Received)
	}
	for _, p := range res.Packets {
		if p.ReflectorSeq != p.Seq || p.TLVs.DirectMeasurement.ReflectorRx != 0 {
			t.Errorf("a stateless answer copies the sender's numbers and keeps no counters: %+v", p)
		}
	}
	if s := waitStats(t, r, func(s Stats) bool { return s.Stateless["sessions"] >= 3 }); s.Stateless["sessions"] != 3 {
		t.Errorf("counters %+v", s)
	}
}

// --stamp.max-sessions-per-address: a host that opened its share gets
// stateless answers for more; the other hosts keep getting sessions.
func TestSessionsPerAddress(t *testing.T) {
	r := start(t, Config{MaxSessions: 100, MaxSessionsPerAddress: 5})
	floodSessions(t, r, "127.0.0.2", 20)
	res, sum := probe(t, stamp.SessionOptions{Target: r.Addr().String(), TLVs: stamp.TLVRequest{DirectMeasurement: true}}, 3)
	if sum.Received != 3 || !sum.LossByDirection {
		t.Fatalf("another host: %+v", sum)
	}
	if last := res.Packets[2]; last.TLVs.DirectMeasurement.ReflectorRx != 3 || last.ReflectorSeq != 2 {
		t.Errorf("another host's session: %+v", last)
	}
	s := waitStats(t, r, func(s Stats) bool { return s.Stateless["address"] >= 15 })
	if s.Stateless["address"] != 15 || s.Stateless["sessions"] != 0 {
		t.Errorf("counters %+v", s)
	}
	if v := (Config{MaxSessions: 10, MaxSessionsPerAddress: 11}); v.Validate() == nil {
		t.Error("a per-address bound over the table's was accepted")
	}
}

// The per-address share counts an IPv6 sender by its /64 (REVIEW-2 F-E):
// a host cycling through the addresses of its /64 holds one share, not
// one per address; IPv4 senders (IPv4-mapped ones too) are counted per
// address. Sessions forgotten when idle give their sender's share back.
func TestSessionsPerAddressCountIPv6By64(t *testing.T) {
	const timeout = int64(time.Second)
	tests := []struct {
		name    string
		senders []string // each opens one session (its own port)
		want    []int    // get's answer per sender: 0 a session, else why not
	}{
		{"one IPv6 /64, many addresses", []string{"[2001:db8::1]:1", "[2001:db8::2]:1", "[2001:db8::ffff:1]:1", "[2001:db8::1]:2"},
			[]int{0, 0, noSessionAddress, noSessionAddress}},
		{"IPv6 /64s apart", []string{"[2001:db8::1]:1", "[2001:db8::2]:1", "[2001:db8:0:1::1]:1", "[2001:db8:1::1]:1"},
			[]int{0, 0, 0, 0}},
		{"IPv4 per address", []string{"192.0.2.1:1", "192.0.2.1:2", "192.0.2.1:3", "192.0.2.2:1", "192.0.2.3:1"},
			[]int{0, 0, noSessionAddress, 0, 0}},
		{"IPv4-mapped per address", []string{"[::ffff:192.0.2.1]:1", "[::ffff:192.0.2.1]:2", "[::ffff:192.0.2.2]:1", "192.0.2.1:3"},
			[]int{0, 0, 0, noSessionAddress}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSessions(100, 2, timeout)
			open := func(now int64, when string) {
				for i, a := range tc.senders {
					idx, why := s.get(netip.MustParseAddrPort(a), 7, now)
					if idx >= 0 {
						why = 0
					}
					if why != tc.want[i] {
						t.Errorf("%s: %s: session %d, why %d; want why %d (0: a session)", when, a, idx, why, tc.want[i])
					}
				}
			}
			open(1, "first")
			// Idle past the timeout: forgotten, their shares given back
			// whole.
			s.sweep(1 + 2*timeout)
			if s.live() != 0 || len(s.byAddr) != 0 {
				t.Errorf("after the sessions went idle: %d live, shares of %v still counted", s.live(), s.byAddr)
			}
			open(2+2*timeout, "after the sweep")
		})
	}
}

// The rate bound refuses what is over it (counted as rate).
func TestRateBounded(t *testing.T) {
	r := start(t, Config{MaxRate: 100}) // a burst of 32, then 100/s
	_, sum := probe(t, stamp.SessionOptions{Target: r.Addr().String()}, 200)
	s := waitStats(t, r, func(s Stats) bool { return s.Refused["rate"]+s.Reflected >= 200 })
	if s.Refused["rate"] == 0 || sum.Received >= 200 || uint64(sum.Received) != s.Reflected {
		t.Errorf("200 packets in about 0.2 s at 100/s: %d answered, counters %+v", sum.Received, s)
	}
}

// newOffline is a reflector whose loop the test drives itself.
func newOffline(t testing.TB, cfg Config) *Reflector {
	cfg.Address = "127.0.0.1:0"
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.conn.Close() })
	return r
}

// FuzzReflector: packet bytes → the reflector's whole batch path
// (handle: checks, session, Reflect, Finish) → the bytes it hands to
// sendmmsg, read where they leave. What is sent must pass checkSent.
func FuzzReflector(f *testing.F) {
	for _, m := range []stamp.Mode{stamp.Unauthenticated, stamp.Authenticated} {
		tm, _ := stamp.NewTemplate(m, 0, stamp.TLVRequest{Location: true, TimestampInfo: true, ClassOfService: true, DirectMeasurement: true, FollowUp: true, HMAC: true})
		b := make([]byte, tm.Len)
		_, _ = tm.Fill(b, stamp.Fields{Seq: 1}, stamp.NewAuth(testKeys))
		f.Add(b, m == stamp.Authenticated)
	}
	f.Add(append(make([]byte, 44), 0x80, 2, 0, 8, 0, 0, 0, 0, 0x80, 4, 0, 16), false)
	un, au := newOffline(f, Config{}), newOffline(f, Config{Keys: testKeys})
	var sent [][]byte
	for _, r := range []*Reflector{un, au} {
		r.send = func(b *udpmsg.Batch, n int) (int, error) {
			k := 0
			for i := range b.Msgs[:n] {
				if m := &b.Msgs[i]; m.Send {
					sent = append(sent, append([]byte(nil), m.Buf[:m.N]...))
					k++
				}
			}
			return k, nil
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, authenticated bool) {
		r := un
		if authenticated {
			r = au
		}
		if len(b) > r.cfg.MaxPacketBytes+1 {
			return
		}
		m := &r.batch.Msgs[0]
		m.Buf = m.Buf[:cap(m.Buf)]
		m.N = copy(m.Buf, b)
		m.Buf = m.Buf[:m.N]
		m.Addr, m.Local = netip.MustParseAddrPort("192.0.2.7:4000"), netip.MustParseAddr("192.0.2.8")
		m.Truncated = len(b) > m.N
		sent = sent[:0]
		r.handle(1)
		if len(sent) > 1 {
			t.Fatalf("%d replies to one request", len(sent))
		}
		for _, reply := range sent {
			if err := checkSent(b, reply, r.mode, r.auth); err != nil {
				t.Fatalf("request %x, reply %x: %v", b, reply, err)
			}
		}
	})
}

// checkSent is what every reply the reflector sends must be: never larger
// than its request (no amplification; STAMP's replies are symmetric, so
// exactly its size), a reflector packet that decodes, echoing the
// request's sequence number, SSID, timestamp and Error Estimate, and in
// authenticated mode signed with the chain's key.
func checkSent(request, reply []byte, m stamp.Mode, auth *stamp.Auth) error {
	if len(reply) != len(request) {
		return fmt.Errorf("a reply of %d octets to a request of %d", len(reply), len(request))
	}
	req, err := stamp.ParseSender(request, m)
	if err != nil {
		return fmt.Errorf("a reply to a request that does not decode: %w", err)
	}
	rep, err := stamp.ParseReflector(reply, m)
	if err != nil {
		return fmt.Errorf("the reply does not decode: %w", err)
	}
	if rep.SenderSeq != req.Seq || rep.SSID != req.SSID || rep.SenderTimestamp != req.Timestamp || rep.SenderErrorEstimate != req.ErrorEstimate {
		return fmt.Errorf("the reply echoes %+v for the request %+v", rep, req)
	}
	if m == stamp.Authenticated {
		if _, err := auth.Verify(reply); err != nil {
			return fmt.Errorf("the authenticated reply: %w", err)
		}
	}
	return nil
}

// checkSent fails on what the reflector must never send.
func TestCheckSentCanFail(t *testing.T) {
	tm, _ := stamp.NewTemplate(stamp.Unauthenticated, 0, stamp.TLVRequest{DirectMeasurement: true})
	req := make([]byte, tm.Len)
	_, _ = tm.Fill(req, stamp.Fields{Seq: 9, SSID: 3, Timestamp: 77}, nil)
	good := append([]byte(nil), req...)
	var rep stamp.Reply
	if err := stamp.Reflect(good, &stamp.Request{Mode: stamp.Unauthenticated}, &rep); err != nil {
		t.Fatal(err)
	}
	if err := checkSent(req, good, stamp.Unauthenticated, nil); err != nil {
		t.Fatalf("a good reply: %v", err)
	}
	for name, bad := range map[string][]byte{
		"larger":        append(append([]byte(nil), good...), 0),
		"smaller":       good[:len(good)-1],
		"short":         good[:20],
		"another echo":  func() []byte { b := append([]byte(nil), good...); b[24] ^= 1; return b }(),
		"another SSID":  func() []byte { b := append([]byte(nil), good...); b[15] ^= 1; return b }(),
		"the timestamp": func() []byte { b := append([]byte(nil), good...); b[30] ^= 1; return b }(),
	} {
		if err := checkSent(req, bad, stamp.Unauthenticated, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	au := stamp.NewAuth(testKeys)
	tm, _ = stamp.NewTemplate(stamp.Authenticated, 0, stamp.TLVRequest{})
	req = make([]byte, tm.Len)
	_, _ = tm.Fill(req, stamp.Fields{Seq: 9}, au)
	unsigned := append([]byte(nil), req...)
	if err := stamp.Reflect(unsigned, &stamp.Request{Mode: stamp.Authenticated, Auth: au}, &rep); err != nil {
		t.Fatal(err)
	}
	if err := checkSent(req, unsigned, stamp.Authenticated, au); err == nil {
		t.Error("an authenticated reply without its HMAC (Finish not called): accepted")
	}
}

// A batch through the loop allocates nothing.
func TestLoopAllocatesNothing(t *testing.T) {
	r := newOffline(t, Config{})
	c, err := udpmsg.Dial(t.Context(), r.Addr().String(), udpmsg.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tm, _ := stamp.NewTemplate(stamp.Unauthenticated, 0, stamp.TLVRequest{Location: true, TimestampInfo: true, ClassOfService: true, DirectMeasurement: true, FollowUp: true})
	out := udpmsg.NewBatch(8, tm.Len)
	for i := range out.Msgs {
		out.Msgs[i].N, _ = tm.Fill(out.Msgs[i].Buf[:cap(out.Msgs[i].Buf)], stamp.Fields{Seq: uint32(i)}, nil)
		out.Msgs[i].Send = true
	}
	in := udpmsg.NewBatch(8, 2048)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := c.Send(out, 8); err != nil {
			t.Fatal(err)
		}
		got := 0
		for got < 8 {
			n, err := r.conn.Recv(r.batch)
			if err != nil {
				t.Fatal(err)
			}
			r.handle(n)
			got += n
		}
		for got > 0 {
			n, err := c.Recv(in)
			if err != nil {
				t.Fatal(err)
			}
			got -= n
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per batch of 8", allocs)
	}
}
