package prober

import (
	"crypto/rand"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// tlvAt returns the offset of the first TLV of type typ in a reply of
// mode m, -1 when there is none.
func tlvAt(pkt []byte, m stamp.Mode, typ stamp.TLVType) int {
	for off := m.BaseLen(); off+stamp.TLVHeaderLen <= len(pkt); {
		if stamp.TLVType(pkt[off+1]) == typ {
			return off
		}
		off += stamp.TLVHeaderLen + int(binary.BigEndian.Uint16(pkt[off+2:]))
	}
	return -1
}

// An authenticated session whose replies' TLVs were changed on the path by
// someone without the key (the base packet's HMAC verifies, the HMAC TLV
// does not, or is gone): the times are used, the TLVs' values are not —
// no DSCP at the reflector, no re-marking, no loss per direction — and
// every output says how many replies' TLVs were unverified.
func TestSTAMPTLVsWithoutIntegrity(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(pkt []byte)
	}{
		{"hmac tlv wrong", func(pkt []byte) { pkt[len(pkt)-1] ^= 0xff }},
		{"hmac tlv gone", func(pkt []byte) {
			if off := tlvAt(pkt, stamp.Authenticated, stamp.TLVHMAC); off >= 0 {
				pkt[off+1] = byte(stamp.TLVExtraPadding)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFakeWith(t, &fakeReflector{auth: stamp.NewAuth(stampKeys), mangle: func(_ int, pkt []byte) []byte {
				if off := tlvAt(pkt, stamp.Authenticated, stamp.TLVClassOfService); off >= 0 {
					c, _ := stamp.ParseClassOfService(pkt[off+4 : off+8])
					c.DSCP2 = 46 // "re-marked to EF on the way there"
					c.Put(pkt[off+4 : off+8])
				}
				tc.tamper(pkt)
				return pkt
			}})
			o := stampOpts(f.addr(), STAMPOptions{Authenticated: true, TLVs: allTLVs, PacketTimeout: 200 * time.Millisecond})
			o.Keys, o.Count = stampKeys, 5
			res := run(t, o)
			if !res.Success {
				t.Fatalf("the base packets verify, their times are good: %+v", res.Failure)
			}
			seg := res.Segments[0]
			if d := seg.DSCP; d.AtReflector != nil || d.ForwardRemarked != nil {
				t.Errorf("DSCP from unverified TLVs: at reflector %v, forward re-marked %v", d.AtReflector, d.ForwardRemarked)
			}
			if seg.Loss.ByDirection {
				t.Errorf("loss named per direction from unverified counters: %+v", seg.Loss)
			}
			if seg.BadReplies == nil || seg.BadReplies.TLVUnverified != 6 {
				t.Errorf("replies with unverified TLVs: %+v, want 6", seg.BadReplies)
			}
		})
	}
}

// Replies a sender must refuse (RFC 8762 §4: a reflector answers with the
// request's size and echoes its sequence number, timestamp and Error
// Estimate): refused and counted by reason; when every reply was refused,
// the failure says what came back, never that nothing did.
func TestSTAMPRepliesRefused(t *testing.T) {
	for _, tc := range []struct {
		name, reason, text string
		mangle             func(pkt []byte) []byte
		count              func(f *stamp.ReplyFaults) int
	}{
		{"echo", "bad_frame", "echo other sender fields", func(pkt []byte) []byte { pkt[30] ^= 1; return pkt },
			func(f *stamp.ReplyFaults) int { return f.Echo }},
		{"smaller", "bad_frame", "not the size of the request", func(pkt []byte) []byte { return pkt[:len(pkt)-4] },
			func(f *stamp.ReplyFaults) int { return f.WrongSize }},
		{"larger", "bad_frame", "not the size of the request", func(pkt []byte) []byte { return append(pkt, make([]byte, 1000)...) },
			func(f *stamp.ReplyFaults) int { return f.WrongSize }},
		{"garbage", "bad_frame", "undecodable", func(pkt []byte) []byte { _, _ = rand.Read(pkt); return pkt },
			func(f *stamp.ReplyFaults) int { return f.Undecodable }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFakeWith(t, &fakeReflector{mangle: func(_ int, pkt []byte) []byte { return tc.mangle(pkt) }})
			o := stampOpts(f.addr(), STAMPOptions{TLVs: stamp.TLVRequest{DirectMeasurement: true}, PacketTimeout: 100 * time.Millisecond})
			o.Count = 3
			res := run(t, o)
			if res.Success || res.Failure == nil || res.Failure.Reason != tc.reason || strings.Contains(res.Failure.Message, "no STAMP reply") ||
				!strings.Contains(res.Failure.Message, tc.text) {
				t.Fatalf("every reply refused: %+v", res.Failure)
			}
			seg := res.Segments[0]
			if seg.Loss.Lost != 4 || seg.BadReplies == nil || tc.count(seg.BadReplies) != 4 {
				t.Errorf("loss %+v, bad replies %+v", seg.Loss, seg.BadReplies)
			}
		})
	}
}
