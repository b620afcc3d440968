package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
)

var testKey = Keys{[]byte("0123456789abcdef0123456789abcdef")}

func sampleHop() HopRecord {
	return HopRecord{
		ID: 0x1122334455667788, Flags: RecSynced | RecTCPInfo | RecDialed | RecKernelIn | RecKernelReply | RecTCPInfoUp, Name: "hop-b.example",
		Forward: 12 * time.Microsecond, Downstream: 20 * time.Millisecond, Return: 9 * time.Microsecond,
		WaitForward: 3 * time.Microsecond, WaitReturn: 2 * time.Microsecond,
		WallIn: 1_700_000_000_123_456_789, EstErrorMicros: 100, MaxErrorMicros: 250, Connect: 300 * time.Microsecond,
		TCP:   tcpinfo.Info{RTTMicros: 20100, RTTVarMicros: 50, MinRTTMicros: 20000, TotalRetrans: 2, SndMSS: 1448, PMTU: 1500, SndCwnd: 10},
		TCPUp: tcpinfo.Info{RTTMicros: 300, RTTVarMicros: 20, MinRTTMicros: 25, TotalRetrans: 1, SndMSS: 65483, PMTU: 65535, SndCwnd: 10},
		Vars:  []Var{{Name: "load1", Value: 7.2}, {Name: "if_in_errors", Value: 3}},
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, signed := range []bool{false, true} {
		var s *Signer
		if signed {
			s = NewSigner(testKey)
		} else {
			s = NewSigner(nil)
		}
		for _, dataLen := range []int{0, 1, 1400, 40000} {
			data := bytes.Repeat([]byte{0xab}, dataLen)
			p := ProbeHeader{Seq: 42, Flags: ProbeWarmup | ProbeAnnotate, BudgetMicros: 5_000_000}
			path := []uint64{1, 2, 3}
			fr := AppendRequest(nil, KindProbeRequest, p, data, path, s)
			if err := s.Verify(fr); err != nil {
				t.Fatalf("signed=%v: verify own frame: %v", signed, err)
			}
			v, err := Parse(fr, DefaultMaxFrameBytes, DefaultMaxHops)
			if err != nil {
				t.Fatalf("signed=%v len=%d: %v", signed, dataLen, err)
			}
			p.Count, p.DataLen = 3, uint32(dataLen)
			if v.Probe != p || v.Header.Kind != KindProbeRequest || v.Header.Signed() != signed {
				t.Errorf("parsed %+v %+v, want %+v", v.Header, v.Probe, p)
			}
			if !bytes.Equal(v.Data(fr), data) || !reflect.DeepEqual(PathIDs(v.Tail(fr)), path) {
				t.Errorf("data or path differ after round trip")
			}
			if !PathContains(v.Tail(fr), 2) || PathContains(v.Tail(fr), 4) {
				t.Errorf("PathContains wrong")
			}
			zero := AppendZeroRequest(nil, KindProbeRequest, ProbeHeader{Seq: 42, Flags: ProbeWarmup | ProbeAnnotate, BudgetMicros: 5_000_000}, dataLen, path, s)
			if dataLen > 0 {
				data = make([]byte, dataLen)
			}
			if want := AppendRequest(nil, KindProbeRequest, ProbeHeader{Seq: 42, Flags: ProbeWarmup | ProbeAnnotate, BudgetMicros: 5_000_000}, data, path, s); !bytes.Equal(zero, want) {
				t.Errorf("AppendZeroRequest differs from AppendRequest with zero data")
			}
		}
	}
}

func TestReplyRoundTrip(t *testing.T) {
	hop := sampleHop()
	end := HopRecord{ID: 9, Flags: RecEnd, Name: "z", Forward: 5 * time.Microsecond}
	er := ErrorRecord{ID: 7, Name: "c", Peer: "[::1]:9000", Reason: peer.ReasonRefused, Side: SideDownstream, Message: "dial tcp [::1]:9000: connection refused"}
	var recs []byte
	recs = AppendHop(recs, &hop)
	recs = AppendHop(recs, &end)
	recs = AppendError(recs, &er)
	s := NewSigner(testKey)
	fr := AppendReply(nil, KindProbeReply, ProbeHeader{Seq: 1}, []byte("pad"), recs, 3, s)
	v, err := Parse(fr, DefaultMaxFrameBytes, DefaultMaxHops)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseRecords(v.Tail(fr), int(v.Probe.Count))
	if err != nil {
		t.Fatal(err)
	}
	want := []Record{{Kind: RecordHop, Hop: hop}, {Kind: RecordHop, Hop: end}, {Kind: RecordError, Err: er}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("records:\n got %+v\nwant %+v", got, want)
	}
	name, ok := FirstHopName(v.Tail(fr))
	if !ok || string(name) != hop.Name {
		t.Errorf("FirstHopName = %q, %v", name, ok)
	}
	ef := AppendErrorFrame(nil, &er, s)
	if err := s.Verify(ef); err != nil {
		t.Fatal(err)
	}
	gotErr, err := ParseErrorFrame(ef, DefaultMaxFrameBytes)
	if err != nil || gotErr != er {
		t.Errorf("error frame: %+v, %v", gotErr, err)
	}
}

func TestRecordClipsLongFields(t *testing.T) {
	long := string(bytes.Repeat([]byte("n"), 300))
	h := HopRecord{Name: long}
	for i := 0; i < MaxVars+5; i++ {
		h.Vars = append(h.Vars, Var{Name: long, Value: math.Pi})
	}
	b := AppendHop(nil, &h)
	if len(b) > MaxHopRecordLen {
		t.Fatalf("record of %d bytes exceeds MaxHopRecordLen %d", len(b), MaxHopRecordLen)
	}
	recs, err := ParseRecords(b, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs[0].Hop.Name) != MaxNameLen || len(recs[0].Hop.Vars) != MaxVars {
		t.Errorf("name %d bytes, %d vars; want clipped to %d and %d", len(recs[0].Hop.Name), len(recs[0].Hop.Vars), MaxNameLen, MaxVars)
	}
}

func TestAppendHopDoesNotAllocate(t *testing.T) {
	h := sampleHop()
	buf := make([]byte, 0, MaxHopRecordLen)
	if n := testing.AllocsPerRun(100, func() { buf = AppendHop(buf[:0], &h) }); n != 0 {
		t.Errorf("AppendHop allocates %v times per call with enough capacity", n)
	}
}

func validRequest() []byte {
	return AppendRequest(nil, KindProbeRequest, ProbeHeader{Seq: 1}, []byte("data"), []uint64{5}, nil)
}

func validReply() []byte {
	h := sampleHop()
	return AppendReply(nil, KindProbeReply, ProbeHeader{Seq: 1}, nil, AppendHop(nil, &h), 1, nil)
}

func TestParseRejectsMalformed(t *testing.T) {
	mut := func(base func() []byte, f func([]byte) []byte) []byte { return f(base()) }
	tests := []struct {
		name  string
		frame []byte
		want  error
	}{
		{"empty", nil, ErrTruncated},
		{"short header", []byte("SSEG"), ErrTruncated},
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ErrBadMagic},
		{"version 1", mut(validRequest, func(b []byte) []byte { b[4] = 1; return b }), ErrBadVersion},
		{"kind 0", mut(validRequest, func(b []byte) []byte { b[5] = 0; return b }), ErrBadKind},
		{"kind 9", mut(validRequest, func(b []byte) []byte { b[5] = 9; return b }), ErrBadKind},
		{"unknown flag", mut(validRequest, func(b []byte) []byte { b[6] = 0x80; return b }), ErrMalformed},
		{"reserved byte", mut(validRequest, func(b []byte) []byte { b[7] = 1; return b }), ErrMalformed},
		{"length beyond max", mut(validRequest, func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 1<<30); return b }), ErrTooLarge},
		{"length beyond data", mut(validRequest, func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], uint32(len(b))); return b }), ErrTruncated},
		{"too short for probe header", mut(validRequest, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[8:], 4)
			return b[:HeaderLen+4]
		}), ErrTruncated},
		{"data length beyond frame", mut(validRequest, func(b []byte) []byte { binary.BigEndian.PutUint32(b[HeaderLen+16:], 1000); return b }), ErrMalformed},
		{"path count mismatch", mut(validRequest, func(b []byte) []byte { b[HeaderLen+10] = 3; return b }), ErrMalformed},
		{"too many hops", mut(validRequest, func(b []byte) []byte { b[HeaderLen+10] = 200; return b }), ErrTooManyHops},
		{"reserved probe byte", mut(validRequest, func(b []byte) []byte { b[HeaderLen+11] = 1; return b }), ErrMalformed},
		{"error kind parsed as probe", AppendErrorFrame(nil, &ErrorRecord{Name: "x", Peer: "y"}, nil), ErrMalformed},
		{"reply record count too high", mut(validReply, func(b []byte) []byte { b[HeaderLen+10] = 2; return b }), ErrMalformed},
		{"reply record count too low", mut(validReply, func(b []byte) []byte { b[HeaderLen+10] = 0; return b }), ErrMalformed},
		{"record length past end", mut(validReply, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[MinFrameLen:], 60000)
			return b
		}), ErrMalformed},
		{"record length too small", mut(validReply, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[MinFrameLen:], 3)
			return b
		}), ErrMalformed},
		{"record kind unknown", mut(validReply, func(b []byte) []byte { b[MinFrameLen+2] = 7; return b }), ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.frame, DefaultMaxFrameBytes, DefaultMaxHops)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Parse = %v, want %v", err, tc.want)
			}
		})
	}
}

// recordWith encodes a hop record after changing the sample.
func recordWith(change func(*HopRecord)) []byte {
	h := sampleHop()
	change(&h)
	return AppendHop(nil, &h)
}

// rawName writes name into a hop record without the encoder's clipping.
func rawName(name string) []byte {
	h := sampleHop()
	h.Name, h.Vars = "", nil
	b := AppendHop(nil, &h)
	b = append(b[:hopFixedLen], byte(len(name)))
	b = append(b, name...)
	b = append(b, 0)
	binary.BigEndian.PutUint16(b, uint16(len(b)))
	return b
}

// errorWith writes an error record with raw strings.
func errorWith(name, peerName, msg string, reason, side byte) []byte {
	b := []byte{0, 0, byte(RecordError), 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, reason, side, byte(len(name)), byte(len(peerName))}
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(append(append(b, name...), peerName...), msg...)
	binary.BigEndian.PutUint16(b, uint16(len(b)))
	return b
}

// Every rule a peer's record is held to: the source and every relay apply
// them through the same decoder.
func TestParseRecordsRejectsMalformed(t *testing.T) {
	h := sampleHop()
	hop := AppendHop(nil, &h)
	er := AppendError(nil, &ErrorRecord{Name: "c", Peer: "z", Message: "m"})
	tests := []struct {
		name string
		b    []byte
		n    int
		want string
	}{
		{"name length beyond record", func() []byte { b := bytes.Clone(hop); b[hopFixedLen] = 60; return b }(), 1, ""},
		{"name longer than allowed", rawName(strings.Repeat("n", MaxNameLen+1)), 1, "at most 64"},
		{"empty name", rawName(""), 1, "empty name"},
		{"name not UTF-8", rawName("z\xff\"}"), 1, "not UTF-8"},
		{"name with a quote", rawName(`z"}`), 1, `'"'`},
		{"name with a newline", rawName("z\nCRITICAL"), 1, `'\n'`},
		{"var count beyond record", func() []byte { b := bytes.Clone(hop); b[hopFixedLen+1+len(h.Name)] = 30; return b }(), 1, ""},
		{"too many vars", func() []byte { b := bytes.Clone(hop); b[hopFixedLen+1+len(h.Name)] = MaxVars + 1; return b }(), 1, ""},
		{"variable name not a label name", recordWith(func(h *HopRecord) { h.Vars = []Var{{Name: "load 1", Value: 1}} }), 1, "not a label name"},
		{"variable NaN", recordWith(func(h *HopRecord) { h.Vars = []Var{{Name: "load1", Value: math.NaN()}} }), 1, "finite"},
		{"variable Inf", recordWith(func(h *HopRecord) { h.Vars = []Var{{Name: "load1", Value: math.Inf(1)}} }), 1, "finite"},
		{"trailing bytes in record", func() []byte {
			b := append(bytes.Clone(hop), 0)
			binary.BigEndian.PutUint16(b, uint16(len(b)))
			return b
		}(), 1, "trailing"},
		{"negative duration", func() []byte { b := bytes.Clone(hop); b[offForward] = 0xff; return b }(), 1, "negative"},
		{"duration over a day", func() []byte {
			b := bytes.Clone(hop)
			binary.BigEndian.PutUint64(b[offDownstream:], uint64(25*time.Hour))
			return b
		}(), 1, "over"},
		{"unknown flag", func() []byte { b := bytes.Clone(hop); b[offFlags] |= 0x80; return b }(), 1, "unknown flags"},
		{"forward wait exceeds forward", recordWith(func(h *HopRecord) { h.WaitForward = h.Forward + 1 }), 1, "forward wait"},
		{"return wait exceeds return", recordWith(func(h *HopRecord) { h.WaitReturn = h.Return + 1 }), 1, "return wait"},
		{"end host with a downstream", recordWith(func(h *HopRecord) { h.Flags |= RecEnd }), 1, "end host"},
		{"reflector record not the end", recordWith(func(h *HopRecord) { h.Flags |= RecReflector }), 1, "STAMP reflector"},
		{"reflector record with a wait", recordWith(func(h *HopRecord) {
			h.Flags, h.Downstream, h.Return, h.WaitReturn, h.WaitForward = RecEnd|RecReflector, 0, 0, 0, h.Forward/2
		}), 1, "STAMP reflector"},
		{"error side out of range", errorWith("c", "z", "m", 1, 9), 1, "side"},
		{"error reason unknown", errorWith("c", "z", "m", 200, 0), 1, "reason"},
		{"error flags set", func() []byte { b := bytes.Clone(er); b[offFlags+1] = 1; return b }(), 1, "flags"},
		{"error message beyond record", func() []byte { b := bytes.Clone(er); binary.BigEndian.PutUint16(b[17:], 400); return b }(), 1, ""},
		{"error name not UTF-8", errorWith("c\xff", "z", "m", 1, 0), 1, "not UTF-8"},
		{"error peer with a space", errorWith("c", "z z", "m", 1, 0), 1, "peer"},
		{"error message with an escape", errorWith("c", "z", "evil \x1b[31m red", 1, 0), 1, "control"},
		{"error message not UTF-8", errorWith("c", "z", "bad \xc3", 1, 0), 1, "UTF-8"},
		{"fewer records than count", hop, 2, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecords(tc.b, tc.n)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseRecords = %v, want ErrMalformed", err)
			}
			if peer.Classify(err) != peer.ReasonBadFrame {
				t.Errorf("reason %v, want bad_frame", peer.Classify(err))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			// The relay's check (no decoding) refuses the same records.
			if checkRecords(tc.b, tc.n) == nil {
				t.Errorf("checkRecords accepted what ParseRecords refused")
			}
			var br *BadRecord
			if tc.n == 1 && errors.As(err, &br) && br.Index != 0 {
				t.Errorf("refusal names record %d, want 0", br.Index)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	signed := NewSigner(testKey)
	unsigned := NewSigner(nil)
	other := NewSigner(Keys{[]byte("another-key-0123456789")})
	rotating := NewSigner(Keys{[]byte("another-key-0123456789"), testKey[0]})
	sf := AppendRequest(nil, KindProbeRequest, ProbeHeader{Seq: 1}, nil, []uint64{1}, signed)
	uf := validRequest()
	tampered := bytes.Clone(sf)
	tampered[HeaderLen] ^= 1
	tests := []struct {
		name   string
		s      *Signer
		frame  []byte
		wantOK bool
	}{
		{"unsigned hop, unsigned frame", unsigned, uf, true},
		{"unsigned hop, signed frame", unsigned, sf, false},
		{"keyed hop, unsigned frame", signed, uf, false},
		{"keyed hop, good signature", signed, sf, true},
		{"keyed hop, tampered", signed, tampered, false},
		{"other key", other, sf, false},
		{"second key during rollover", rotating, sf, true},
	}
	for _, tc := range tests {
		err := tc.s.Verify(tc.frame)
		if (err == nil) != tc.wantOK {
			t.Errorf("%s: Verify = %v, want ok=%v", tc.name, err, tc.wantOK)
		}
		if err != nil && !errors.Is(err, ErrAuth) {
			t.Errorf("%s: error %v is not ErrAuth", tc.name, err)
		}
	}
}

// ParseKeys reads a key file's text (config.ReadKeyFile reads the file by
// the rule of every secret file): one key per non-empty line, trimmed, at
// least 16 bytes, at most two.
func TestParseKeys(t *testing.T) {
	tests := []struct {
		name, content string
		wantKeys      int
		wantErr       string
	}{
		{"one key", "0123456789abcdef0123\n", 1, ""},
		{"two keys with blank lines", "\n0123456789abcdef0123\n\n  fedcba9876543210fedc  \n", 2, ""},
		{"short key", "short\n", 0, "at least 16"},
		{"empty", "\n\n", 0, "holds no key"},
		{"three keys", "0123456789abcdef01\n0123456789abcdef02\n0123456789abcdef03\n", 0, "at most 2"},
	}
	for _, tc := range tests {
		keys, err := ParseKeys([]byte(tc.content), tc.name)
		if tc.wantErr == "" && (err != nil || len(keys) != tc.wantKeys) || tc.wantErr != "" && (err == nil || !contains(err.Error(), tc.wantErr) || !contains(err.Error(), tc.name)) {
			t.Errorf("%s: ParseKeys = %d keys, %v; want %d keys, error %q naming the file", tc.name, len(keys), err, tc.wantKeys, tc.wantErr)
		}
	}
}

// A ring's signer follows the ring (REVIEW-2 F-B): after a Set, frames
// signed with a dropped key are refused and what it signs carries the
// new first key; during a rollover (two keys) both verify. Following an
// unchanged ring allocates nothing; a NewSigner keeps its keys.
func TestSignerFollowsTheRing(t *testing.T) {
	oldKey, newKey := []byte("old-0123456789abcdef"), []byte("new-0123456789abcdef")
	signedBy := func(k []byte) []byte {
		return AppendRequest(nil, KindProbeRequest, ProbeHeader{Seq: 1}, nil, []uint64{1}, NewSigner(Keys{k}))
	}
	ring := NewKeyRing(Keys{oldKey})
	s, fixed := ring.Signer(), NewSigner(ring.Current())
	if err := s.Verify(signedBy(oldKey)); err != nil {
		t.Fatalf("before the reload: %v", err)
	}
	if n := testing.AllocsPerRun(100, s.Follow); n != 0 {
		t.Errorf("Follow of an unchanged ring: %v allocations", n)
	}
	ring.Set(Keys{newKey, oldKey})
	s.Follow()
	for _, k := range [][]byte{oldKey, newKey} {
		if err := s.Verify(signedBy(k)); err != nil {
			t.Errorf("rollover: a frame signed with %s: %v", k, err)
		}
	}
	if err := NewSigner(Keys{newKey}).Verify(AppendRequest(nil, KindProbeRequest, ProbeHeader{Seq: 1}, nil, []uint64{1}, s)); err != nil {
		t.Errorf("rollover: the signer does not sign with the new first key: %v", err)
	}
	ring.Set(Keys{newKey})
	s.Follow()
	if err := s.Verify(signedBy(oldKey)); !errors.Is(err, ErrAuth) {
		t.Errorf("the old key dropped: a frame signed with it: %v, want ErrAuth", err)
	}
	fixed.Follow()
	if err := fixed.Verify(signedBy(oldKey)); err != nil {
		t.Errorf("a NewSigner changed its keys: %v", err)
	}
}

// chunkReader returns its data in reads of at most n bytes.
type chunkReader struct {
	data []byte
	n    int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), c.n, len(c.data))
	copy(p, c.data[:k])
	c.data = c.data[k:]
	return k, nil
}

func TestReaderSplitsAndBatches(t *testing.T) {
	var stream []byte
	var want [][]byte
	for i, size := range []int{0, 10, 3000, 20000, 60000, 5, 17000, 100} {
		f := AppendRequest(nil, KindStreamRequest, ProbeHeader{Seq: uint64(i)}, bytes.Repeat([]byte{byte(i)}, size), []uint64{1}, nil)
		want = append(want, f)
		stream = append(stream, f...)
	}
	for _, chunk := range []int{1, 7, 512, 4096, 65536, 1 << 20} {
		r := NewReader(&chunkReader{data: stream, n: chunk}, DefaultMaxFrameBytes)
		var got [][]byte
		for {
			err := r.Fill()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
			for {
				f, err := r.Next()
				if err != nil {
					t.Fatalf("chunk %d: %v", chunk, err)
				}
				if f == nil {
					break
				}
				got = append(got, bytes.Clone(f))
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("chunk %d: got %d frames, want %d (or contents differ)", chunk, len(got), len(want))
		}
	}
}

func TestReaderErrors(t *testing.T) {
	f := validRequest()
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"clean end", nil, io.EOF},
		{"cut in header", f[:5], ErrPartialFrame},
		{"cut in body", f[:len(f)-1], ErrPartialFrame},
		{"garbage", []byte("garbage garbage garbage"), ErrBadMagic},
		{"oversized", func() []byte { b := bytes.Clone(f); binary.BigEndian.PutUint32(b[8:], 1<<30); return b }(), ErrTooLarge},
	}
	for _, tc := range tests {
		r := NewReader(bytes.NewReader(tc.in), DefaultMaxFrameBytes)
		if err := r.Fill(); !errors.Is(err, tc.want) {
			t.Errorf("%s: Fill = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	h := sampleHop()
	f.Add(validRequest())
	f.Add(validReply())
	f.Add(AppendRequest(nil, KindStreamRequest, ProbeHeader{Seq: 3}, []byte("x"), []uint64{1, 2}, NewSigner(testKey)))
	f.Add(AppendErrorFrame(nil, &ErrorRecord{Name: "c", Peer: "z", Message: "m"}, nil))
	f.Add(AppendReply(nil, KindProbeReply, ProbeHeader{Seq: 1}, nil, rawName("z\xff\"}"), 1, nil))
	f.Add(AppendReply(nil, KindStreamReply, ProbeHeader{}, []byte("d"), AppendHop(nil, &h), 1, nil))
	f.Add([]byte("SSEG\x02\x02\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := Parse(b, DefaultMaxFrameBytes, DefaultMaxHops)
		if err == nil {
			_ = v.Data(b)
			tail := v.Tail(b)
			if v.Header.Kind.IsReply() {
				if _, err := ParseRecords(tail, int(v.Probe.Count)); err != nil {
					t.Fatalf("Parse accepted a reply whose records do not parse: %v", err)
				}
				FirstHopName(tail)
			} else {
				PathContains(tail, 1)
			}
		}
		_, _ = ParseErrorFrame(b, DefaultMaxFrameBytes)
		_ = NewSigner(testKey).Verify(b)
		recs, err := ParseRecords(b, 3)
		// Into an array that holds another reply's records (names kept
		// when equal): the same records, the same error.
		prev, _ := ParseRecords(recordsOf(t, validReply()), 1)
		into, errInto := ParseRecordsInto(prev, b, 3)
		if (err == nil) != (errInto == nil) || len(recs) != len(into) || len(recs) > 0 && !reflect.DeepEqual(recs, into) {
			t.Fatalf("ParseRecordsInto gave %+v (%v), ParseRecords %+v (%v)", into, errInto, recs, err)
		}
		FirstHopName(b)
	})
}

func recordsOf(t *testing.T, fr []byte) []byte {
	v, err := Parse(fr, DefaultMaxFrameBytes, DefaultMaxHops)
	if err != nil {
		t.Fatal(err)
	}
	return v.Tail(fr)
}

// A source that decodes the same chain's replies every second keeps the
// hops' names: no allocation per reply.
func TestParseRecordsIntoKeepsNames(t *testing.T) {
	h := sampleHop()
	h.Vars = nil // variables come on annotation probes only
	z := HopRecord{Name: "z", Flags: RecEnd}
	tail := AppendHop(AppendHop(nil, &h), &z)
	recs, err := ParseRecordsInto(nil, tail, 2)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := ParseRecords(tail, 2)
	if !reflect.DeepEqual(recs, want) {
		t.Fatalf("ParseRecordsInto %+v, ParseRecords %+v", recs, want)
	}
	if n := testing.AllocsPerRun(100, func() { recs, _ = ParseRecordsInto(recs, tail, 2) }); n != 0 {
		t.Errorf("%v allocations per reply of an unchanged chain", n)
	}
	// A renamed hop gets its new name.
	z.Name = "y"
	recs, _ = ParseRecordsInto(recs, AppendHop(AppendHop(nil, &h), &z), 2)
	if recs[1].Hop.Name != "y" || recs[0].Hop.Name != h.Name {
		t.Errorf("names %q %q after a rename", recs[0].Hop.Name, recs[1].Hop.Name)
	}
}

func FuzzReader(f *testing.F) {
	f.Add(append(validRequest(), validReply()...), 3)
	f.Add([]byte("garbage"), 1)
	f.Fuzz(func(t *testing.T, b []byte, chunk int) {
		if chunk <= 0 {
			chunk = 1
		}
		r := NewReader(&chunkReader{data: b, n: chunk}, 4096)
		for i := 0; i < 1000; i++ {
			if err := r.Fill(); err != nil {
				return
			}
			for {
				fr, err := r.Next()
				if err != nil {
					return
				}
				if fr == nil {
					break
				}
				if _, err := ParseHeader(fr, 4096); err != nil {
					t.Fatalf("Next returned a frame with a bad header: %v", err)
				}
			}
		}
	})
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestParseDoesNotAllocate(t *testing.T) {
	fr := validReply()
	if n := testing.AllocsPerRun(100, func() {
		if _, err := Parse(fr, DefaultMaxFrameBytes, DefaultMaxHops); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Parse of a valid reply allocates %v times", n)
	}
}

func TestRecordIter(t *testing.T) {
	h := sampleHop()
	end := HopRecord{ID: 9, Flags: RecEnd, Name: "z", Forward: 5 * time.Microsecond}
	recs := AppendError(AppendHop(AppendHop(nil, &h), &end), &ErrorRecord{Name: "z", Peer: "y"})
	it := NewRecordIter(recs)
	var kinds []RecordKind
	var times []HopTimes
	for {
		k, rec, ok := it.Next()
		if !ok {
			break
		}
		kinds = append(kinds, k)
		if k == RecordHop {
			times = append(times, ReadHopTimes(rec))
		}
	}
	if !reflect.DeepEqual(kinds, []RecordKind{RecordHop, RecordHop, RecordError}) {
		t.Fatalf("kinds %v", kinds)
	}
	want := HopTimes{ID: h.ID, Name: []byte(h.Name), Flags: h.Flags, Forward: h.Forward, Downstream: h.Downstream, Return: h.Return,
		WaitForward: h.WaitForward, WaitReturn: h.WaitReturn}
	if !reflect.DeepEqual(times[0], want) || string(times[1].Name) != "z" || times[1].Flags != RecEnd {
		t.Errorf("times %+v", times)
	}
}

func FuzzParseKeys(f *testing.F) {
	for _, s := range []string{"0123456789abcdef0123456789abcdef\n", "a\nb\n", "\n\n", "k1-0123456789abcdef\r\nk2-0123456789abcdef\r\n", "x\ny\nz"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseKeys(data, "fuzz")
		if err != nil {
			return
		}
		if len(keys) < 1 || len(keys) > 2 {
			t.Fatalf("%d keys accepted", len(keys))
		}
		for _, k := range keys {
			if len(k) < MinKeyLen || bytes.ContainsAny(k, "\n") || len(bytes.TrimSpace(k)) != len(k) {
				t.Fatalf("key %q accepted", k)
			}
		}
		// What one holder of the file signs, another verifies, also one
		// further in the rollover (the keys in the other order); a hop
		// without the signing key refuses it.
		fr := AppendRequest(nil, KindProbeRequest, ProbeHeader{Seq: 1}, nil, nil, NewSigner(keys))
		if err := NewSigner(keys).Verify(fr); err != nil {
			t.Fatalf("own signature refused: %v", err)
		}
		if err := NewSigner(Keys{keys[len(keys)-1], keys[0]}).Verify(fr); err != nil {
			t.Fatalf("signature refused mid-rollover: %v", err)
		}
		if err := NewSigner(Keys{append([]byte("other"), keys[0]...)}).Verify(fr); err == nil {
			t.Fatal("signature accepted with another key")
		}
	})
}

// CheckReplyInto is CheckReply and ParseRecords in one pass: the same
// verdict, the same error, the same records (those before a refused one).
func FuzzCheckReplyInto(f *testing.F) {
	h := sampleHop()
	z := HopRecord{Name: "z", Flags: RecEnd}
	f.Add(validReply(), uint64(1))
	f.Add(AppendReply(nil, KindProbeReply, ProbeHeader{Seq: 7}, nil, AppendHop(AppendHop(nil, &h), &z), 2, nil), uint64(7))
	bad := HopRecord{Name: "bad", Forward: MaxDuration + 1}
	f.Add(AppendReply(nil, KindProbeReply, ProbeHeader{Seq: 2}, nil, AppendHop(AppendHop(nil, &h), &bad), 2, nil), uint64(2))
	f.Add(AppendErrorFrame(nil, &ErrorRecord{Name: "c", Peer: "z", Message: "m"}, nil), uint64(0))
	f.Add(validRequest(), uint64(1))
	f.Fuzz(func(t *testing.T, b []byte, seq uint64) {
		want := Expect{Request: KindProbeRequest, Seq: seq}
		rep, err := CheckReply(b, nil, DefaultMaxFrameBytes, want)
		prev, _ := ParseRecords(recordsOf(t, validReply()), 1)
		repInto, recs, errInto := CheckReplyInto(b, nil, DefaultMaxFrameBytes, want, prev)
		if fmt.Sprint(err) != fmt.Sprint(errInto) || !reflect.DeepEqual(rep, repInto) {
			t.Fatalf("CheckReplyInto: %+v, %v; CheckReply: %+v, %v", repInto, errInto, rep, err)
		}
		var br *BadRecord
		if rep.View.TailOff == 0 || err != nil && !errors.As(err, &br) {
			return
		}
		parsed, _ := ParseRecords(rep.View.Tail(b), int(rep.View.Probe.Count))
		if len(parsed) != len(recs) || len(recs) > 0 && !reflect.DeepEqual(parsed, recs) {
			t.Fatalf("CheckReplyInto decoded %+v, ParseRecords %+v", recs, parsed)
		}
	})
}
