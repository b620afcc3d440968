package frame

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// errWait is a feed with nothing more to read now (EAGAIN).
var errWait = errors.New("nothing to read now")

// feed hands its data to ReadOnce in reads of at most n bytes.
type feed struct {
	data []byte
	n    int
}

func (f *feed) read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, errWait
	}
	k := min(len(p), f.n, len(f.data))
	copy(p, f.data[:k])
	f.data = f.data[k:]
	return k, nil
}

// readAll calls ReadOnce until the feed is empty, the frame complete, or
// an error; check runs after every read.
func readAll(r *Reader, f *feed, check func()) error {
	for i := 0; i < 1<<20; i++ {
		_, err := r.ReadOnce(f.read)
		if check != nil {
			check()
		}
		if errors.Is(err, errWait) || r.Complete() {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return errors.New("no progress")
}

func bigFrame(size int, seq uint64) []byte {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7) ^ byte(seq)
	}
	return AppendRequest(nil, KindStreamRequest, ProbeHeader{Seq: seq}, data, []uint64{1}, nil)
}

// A header claims nothing of the budget: eight connections that send only
// a header claiming 1.9 MiB hold none of it, and a 300 KiB frame beside
// them is read whole, its buffer never more than four times what arrived.
func TestClaimsHoldNoBudget(t *testing.T) {
	const maxFrame = 2 << 20
	b := NewBufferBudget(8<<20, maxFrame)
	claim := make([]byte, HeaderLen)
	PutHeader(claim, Header{Kind: KindStreamRequest, Length: 1900<<10 - HeaderLen})
	var claims []*Reader
	for i := 0; i < 8; i++ {
		r := NewReader(nil, maxFrame)
		r.Budget = b
		if err := readAll(r, &feed{data: bytes.Clone(claim), n: 1 << 20}, nil); err != nil {
			t.Fatal(err)
		}
		// A few more reads with nothing new, as an event loop may do.
		for k := 0; k < 3; k++ {
			if _, err := r.ReadOnce((&feed{}).read); !errors.Is(err, errWait) {
				t.Fatal(err)
			}
		}
		if len(r.buf) > greedyReadBuffer {
			t.Fatalf("a 12-byte claim got a %d-byte buffer", len(r.buf))
		}
		claims = append(claims, r)
	}
	if b.Used() != 0 {
		t.Fatalf("8 header-only claims hold %d bytes of the budget, want 0", b.Used())
	}
	fr := bigFrame(300<<10, 1)
	r := NewReader(nil, maxFrame)
	r.Budget = b
	f := &feed{data: fr, n: 16 << 10}
	err := readAll(r, f, func() {
		if arrived := r.Buffered(); r.charged > growthFactor*arrived {
			t.Fatalf("buffer charges %d bytes for %d that arrived", r.charged, arrived)
		}
	})
	if err != nil {
		t.Fatalf("300 KiB frame beside 8 claims: %v", err)
	}
	got, err := r.Next()
	if err != nil || !bytes.Equal(got, fr) {
		t.Fatalf("300 KiB frame not read byte-exact: %v", err)
	}
	r.Release()
	for _, c := range claims {
		c.Release()
	}
	if b.Used() != 0 || b.UnprovenUsed() != 0 {
		t.Fatalf("released readers still hold %d (unproven %d) bytes", b.Used(), b.UnprovenUsed())
	}
}

// Connections that have not proven themselves share half of the budget:
// unverified bytes that did arrive cannot take what a proven connection
// needs, and a reader that proves itself leaves the share.
func TestUnprovenShare(t *testing.T) {
	const maxFrame = 2 << 20
	b := NewBufferBudget(8<<20, maxFrame)
	if b.UnprovenLimit() != 4<<20 {
		t.Fatalf("unproven share %d, want half of 8 MiB", b.UnprovenLimit())
	}
	fr := bigFrame(1900<<10, 1)
	newReader := func() *Reader {
		r := NewReader(nil, maxFrame)
		r.Budget = b
		return r
	}
	// One unproven connection sends almost all of a 1.9 MiB frame: its 4
	// MiB buffer fills the share.
	first := newReader()
	if err := readAll(first, &feed{data: fr[:len(fr)-1], n: 64 << 10}, nil); err != nil {
		t.Fatal(err)
	}
	if b.UnprovenUsed() != 4<<20 {
		t.Fatalf("unproven share holds %d, want 4 MiB", b.UnprovenUsed())
	}
	second := newReader()
	err := readAll(second, &feed{data: fr, n: 64 << 10}, nil)
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), "not yet sent a valid frame") {
		t.Fatalf("second unproven connection: %v, want refused from the unproven share", err)
	}
	second.Release()
	// A proven connection still finds the other half.
	proven := newReader()
	proven.Prove()
	if err := readAll(proven, &feed{data: fr, n: 64 << 10}, nil); err != nil {
		t.Fatalf("proven connection beside a full unproven share: %v", err)
	}
	// Once the first proves itself, its buffer leaves the share.
	first.Prove()
	if b.UnprovenUsed() != 0 || b.Used() != 8<<20 {
		t.Fatalf("after Prove: unproven %d, used %d; want 0 and 8 MiB", b.UnprovenUsed(), b.Used())
	}
	for _, r := range []*Reader{first, proven} {
		r.Release()
	}
	if b.Used() != 0 || b.UnprovenUsed() != 0 {
		t.Fatalf("released readers still hold %d (unproven %d) bytes", b.Used(), b.UnprovenUsed())
	}
}

// Growing with the bytes that arrived costs moves on the first large
// frame only: later frames of the stream are read in place, into the same
// buffer, without a move or an allocation.
func TestLargeFramesReadInPlaceAfterTheFirst(t *testing.T) {
	r := NewReader(nil, DefaultMaxFrameBytes)
	r.Budget = NewBufferBudget(DefaultBufferBudget, DefaultMaxFrameBytes)
	r.Prove()
	var buf *byte
	for seq := uint64(0); seq < 4; seq++ {
		fr := bigFrame(300<<10, seq)
		f := &feed{data: fr, n: 48 << 10}
		if seq > 0 {
			allocs := testing.AllocsPerRun(1, func() {
				if err := readAll(r, f, func() {
					if &r.buf[0] != buf || r.start != 0 {
						t.Fatalf("frame %d moved or grew the buffer", seq)
					}
				}); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("frame %d: %v allocations", seq, allocs)
			}
		} else if err := readAll(r, f, nil); err != nil {
			t.Fatal(err)
		}
		got, err := r.Next()
		if err != nil || !bytes.Equal(got, fr) {
			t.Fatalf("frame %d not read byte-exact: %v", seq, err)
		}
		buf = &r.buf[0]
	}
	r.Release()
}
