package stamp

import (
	"net/netip"
	"testing"
)

func seeds(f *testing.F) {
	auth := NewAuth(testKeys)
	for _, m := range []Mode{Unauthenticated, Authenticated} {
		tm, _ := NewTemplate(m, 0, TLVRequest{Location: true, TimestampInfo: true, ClassOfService: true, DirectMeasurement: true, FollowUp: true, HMAC: true, Unassigned: 99})
		b := make([]byte, tm.Len)
		_, _ = tm.Fill(b, Fields{Seq: 1}, auth)
		f.Add(b, m == Authenticated)
	}
	f.Add(make([]byte, 44), false)
	f.Add(append(make([]byte, 44), 0x80, 2, 0, 200), false)
	f.Add(append(make([]byte, 44), 0x80, 2, 0, 8, 0, 1, 2, 3, 0, 4, 0, 16), false)
}

// FuzzParse: every decoder takes any bytes without panicking.
func FuzzParse(f *testing.F) {
	seeds(f)
	auth := NewAuth(testKeys)
	f.Fuzz(func(t *testing.T, b []byte, authenticated bool) {
		m := Unauthenticated
		if authenticated {
			m = Authenticated
		}
		_, _ = ParseSender(b, m)
		_, _ = ParseReflector(b, m)
		_ = ParseReplyTLVs(b, m, auth)
		r := ReadTLVs(b, m)
		for {
			x, ok := r.Next()
			if !ok {
				break
			}
			_, _ = ParseLocation(x.Value)
			_, _ = ParseClassOfService(x.Value)
			_, _ = ParseDirectMeasurement(x.Value)
			_, _ = ParseFollowUp(x.Value)
			_, _ = ParseTimestampInfo(x.Value)
		}
		_, _ = auth.Verify(b)
	})
}

// FuzzReflect: bytes → reply. A reply is never larger than its request,
// always decodes, and echoes the request's sequence number.
func FuzzReflect(f *testing.F) {
	seeds(f)
	auth := NewAuth(testKeys)
	f.Fuzz(func(t *testing.T, b []byte, authenticated bool) {
		m := Unauthenticated
		if authenticated {
			m = Authenticated
		}
		n := len(b)
		s, serr := ParseSender(b, m)
		req := Request{Mode: m, Auth: auth, Src: netip.MustParseAddrPort("192.0.2.1:1"), Dst: netip.MustParseAddrPort("[2001:db8::1]:862"), Stateful: true, RxTime: 1e18}
		var rep Reply
		if err := Reflect(b, &req, &rep); err != nil {
			return
		}
		Finish(b, &rep, 1e18+1)
		if rep.Len != n || len(b) != n {
			t.Fatalf("reply of %d octets for %d", rep.Len, n)
		}
		r, err := ParseReflector(b, m)
		if err != nil || serr != nil || r.SenderSeq != s.Seq || r.SSID != s.SSID {
			t.Fatalf("reply does not decode or echo: %+v %v %v", r, err, serr)
		}
		_ = ParseReplyTLVs(b, m, auth)
		if m == Authenticated {
			if _, err := auth.Verify(b); err != nil {
				t.Fatalf("authenticated reply does not verify: %v", err)
			}
		}
	})
}
