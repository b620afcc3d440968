package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// memSink is a Sink over a feed: a pipe of size bytes (growing up to
// maxSize) that takes the feed's next bytes.
type memSink struct {
	src     *feed
	held    []byte
	size    int
	maxSize int
	grows   int
}

func (m *memSink) Ready() bool { return true }

func (m *memSink) Take(n int) (int, error) {
	if len(m.src.data) == 0 {
		return 0, errWait
	}
	room := m.size - len(m.held)
	if room == 0 {
		return 0, ErrSinkFull
	}
	k := min(n, room, m.src.n, len(m.src.data))
	m.held = append(m.held, m.src.data[:k]...)
	m.src.data = m.src.data[k:]
	return k, nil
}

func (m *memSink) Put(p []byte) (int, error) {
	k := min(len(p), m.size-len(m.held))
	m.held = append(m.held, p[:k]...)
	return k, nil
}

func (m *memSink) Drop(n int) error {
	if n > len(m.held) {
		return errors.New("dropping more than held")
	}
	m.held = m.held[n:]
	return nil
}

func (m *memSink) Size() int { return m.size }

func (m *memSink) Grow(size int) (int, error) {
	size = min(size, m.maxSize)
	if size <= m.size {
		return m.size, errors.New("at its limit")
	}
	m.size = size
	m.grows++
	return size, nil
}

// take removes n bytes from the front, as a writer splicing them out.
func (m *memSink) take(n int) []byte {
	out := bytes.Clone(m.held[:n])
	m.held = m.held[n:]
	return out
}

func streamFrame(kind Kind, seq uint64, data []byte, tail []byte) []byte {
	p := ProbeHeader{Seq: seq, Count: uint8(len(tail) / PathEntryLen), DataLen: uint32(len(data))}
	fr := make([]byte, MinFrameLen, MinFrameLen+len(data)+len(tail))
	PutHeader(fr, Header{Kind: kind, Length: uint32(ProbeHdrLen + len(data) + len(tail))})
	PutProbeHeader(fr[HeaderLen:], p)
	fr = append(fr, data...)
	return append(fr, tail...)
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*131) ^ seed
	}
	return b
}

// rebuild puts a stub and the sink's bytes back together as the frame
// the writer sends: head, the spliced data, the stub's own data and tail.
func rebuild(t *testing.T, stub []byte, spliced []byte) []byte {
	t.Helper()
	h, err := ParseHeader(stub, len(stub))
	if err != nil {
		t.Fatalf("stub header: %v", err)
	}
	if len(stub) != h.FrameLen() {
		t.Fatalf("stub of %d bytes, its header says %d", len(stub), h.FrameLen())
	}
	out := bytes.Clone(stub[:MinFrameLen])
	binary.BigEndian.PutUint32(out[8:], h.Length+uint32(len(spliced)))
	binary.BigEndian.PutUint32(out[HeaderLen+16:], binary.BigEndian.Uint32(stub[HeaderLen+16:])+uint32(len(spliced)))
	out = append(out, spliced...)
	return append(out, stub[MinFrameLen:]...)
}

// readFrames reads every frame of f through r with sink s, rebuilding
// spliced ones; it returns them and the spliced byte counts.
func readFrames(t *testing.T, r *Reader, f *feed, s *memSink) ([][]byte, []int) {
	t.Helper()
	var frames [][]byte
	var spliced []int
	for i := 0; i < 1<<20; i++ {
		_, err := r.ReadOnce(f.read)
		for r.Complete() {
			fr, nerr := r.Next()
			if nerr != nil || fr == nil {
				t.Fatalf("next: %v", nerr)
			}
			n := r.Spliced()
			frames = append(frames, rebuild(t, fr, s.take(n)))
			spliced = append(spliced, n)
		}
		if errors.Is(err, errWait) && len(f.data) == 0 {
			return frames, spliced
		}
		if err != nil && !errors.Is(err, errWait) {
			t.Fatalf("read: %v", err)
		}
	}
	t.Fatal("no progress")
	return nil, nil
}

// testSpliceMin is the splice threshold of these tests, below the
// default, so that blocks of a few hundred KiB exercise the sink.
const testSpliceMin = 64 << 10

// Large stream blocks of a proven reader go through the sink, small ones
// and probes do not, and every frame comes back byte-exact, in order,
// whether the sink holds a whole block or only its start.
func TestSinkTakesLargeBlocks(t *testing.T) {
	for _, tc := range []struct {
		name          string
		size, maxSize int
		chunk         int
	}{
		{"pipe holds every block", 64 << 10, 4 << 20, 16 << 10},
		{"pipe at its limit: the rest is read", 64 << 10, 64 << 10, 7 << 10},
		{"one byte at a time", 64 << 10, 1 << 20, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sizes := []int{100 << 10, 8 << 10, 300 << 10, 0, testSpliceMin, testSpliceMin - 1, 1 << 20, 0, testSpliceMin - 1}
			if tc.chunk == 1 {
				sizes = []int{100 << 10, 1000, 70 << 10}
			}
			input, want := alternatingFrames(sizes)
			budget := NewBufferBudget(64<<20, 4<<20)
			f := &feed{data: input, n: tc.chunk}
			s := &memSink{src: f, size: tc.size, maxSize: tc.maxSize}
			r := NewReader(nil, 4<<20)
			r.Budget, r.Sink, r.SpliceMin = budget, s, testSpliceMin
			r.Prove()
			got, spliced := readFrames(t, r, f, s)
			checkSpliced(t, got, want, sizes, spliced)
			if len(s.held) != 0 {
				t.Errorf("the sink still holds %d bytes", len(s.held))
			}
			if budget.Used() != int64(r.charged+r.sinkCharged) || r.sinkCharged != sinkCharge(s.size) {
				t.Errorf("budget holds %d, reader's buffer %d and sink %d (size %d)", budget.Used(), r.charged, r.sinkCharged, s.size)
			}
			r.Release()
			if budget.Used() != 0 {
				t.Errorf("released reader still holds %d bytes of the budget", budget.Used())
			}
		})
	}
}

// alternatingFrames makes a stream request of each even index's size and
// a probe request of each odd one's, each with a tail naming its place;
// it returns them back to back and one by one.
func alternatingFrames(sizes []int) (input []byte, frames [][]byte) {
	for i, n := range sizes {
		kind := KindStreamRequest
		tail := []byte{0, 0, 0, 0, 0, 0, 0, byte(i + 1)}
		if i%2 == 1 {
			kind = KindProbeRequest
		}
		fr := streamFrame(kind, uint64(i), pattern(n, byte(i)), tail)
		frames = append(frames, fr)
		input = append(input, fr...)
	}
	return input, frames
}

// checkSpliced: every frame came back byte-exact and in order, and
// exactly the large stream blocks went through the sink.
func checkSpliced(t *testing.T, got, want [][]byte, sizes, spliced []int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d (%d data bytes, %d spliced) differs", i, sizes[i], spliced[i])
		}
		large := sizes[i] >= testSpliceMin && i%2 == 0
		if large != (spliced[i] > 0) {
			t.Errorf("frame %d: %d data bytes, kind %d: %d spliced", i, sizes[i], want[i][5], spliced[i])
		}
	}
}

// The sink grows as a read buffer does: only when full of bytes that
// arrived, one class at a time, charged to the budget; a header's claim
// makes it neither grow nor hold anything.
func TestSinkGrowsWithBytesThatArrived(t *testing.T) {
	budget := NewBufferBudget(64<<20, 16<<20)
	fr := streamFrame(KindStreamRequest, 1, pattern(3<<20, 7), make([]byte, 8))
	f := &feed{data: bytes.Clone(fr[:MinFrameLen+100]), n: 1 << 20}
	s := &memSink{src: f, size: 64 << 10, maxSize: 16 << 20}
	r := NewReader(nil, 16<<20)
	r.Budget, r.Sink, r.SpliceMin = budget, s, testSpliceMin
	r.Prove()
	for k := 0; k < 5; k++ {
		if _, err := r.ReadOnce(f.read); err != nil && !errors.Is(err, errWait) {
			t.Fatal(err)
		}
	}
	if s.grows != 0 || budget.Used() != 0 || len(r.buf) > greedyReadBuffer {
		t.Fatalf("a 3 MiB claim with 100 bytes: sink grew %d times, budget %d, buffer %d", s.grows, budget.Used(), len(r.buf))
	}
	f.data = append(f.data, fr[MinFrameLen+100:]...)
	for !r.Complete() {
		if _, err := r.ReadOnce(f.read); err != nil && !errors.Is(err, errWait) {
			t.Fatal(err)
		}
		if arrived := r.moved; r.sinkCharged > growthFactor*max(arrived, defaultSinkSize) {
			t.Fatalf("sink charges %d for %d bytes that arrived", r.sinkCharged, arrived)
		}
	}
	if s.grows == 0 || s.size < 3<<20 {
		t.Errorf("sink of %d bytes after %d grows, want it to hold the 3 MiB block", s.size, s.grows)
	}
	stub, err := r.Next()
	if err != nil || !bytes.Equal(rebuild(t, stub, s.take(r.Spliced())), fr) {
		t.Fatalf("3 MiB block not rebuilt byte-exact: %v", err)
	}
	r.Release()
	if budget.Used() != 0 {
		t.Errorf("budget holds %d after release", budget.Used())
	}
}

// A connection that has not proven itself, a signed frame, and a frame
// already whole in the buffer are read the ordinary way.
func TestSinkOnlyForProvenUnsignedBlocks(t *testing.T) {
	block := pattern(200<<10, 3)
	signed := AppendRequest(nil, KindStreamRequest, ProbeHeader{Seq: 1}, block, []uint64{9}, NewSigner(Keys{[]byte("0123456789abcdef0123")}))
	for _, tc := range []struct {
		name   string
		fr     []byte
		proven bool
		chunk  int
	}{
		{"unproven", streamFrame(KindStreamRequest, 1, block, make([]byte, 8)), false, 16 << 10},
		{"signed", signed, true, 16 << 10},
		{"reply of a probe", streamFrame(KindProbeReply, 1, block, nil), true, 16 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &feed{data: bytes.Clone(tc.fr), n: tc.chunk}
			s := &memSink{src: f, size: 4 << 20, maxSize: 4 << 20}
			r := NewReader(nil, 4<<20)
			r.Budget, r.Sink, r.SpliceMin = NewBufferBudget(64<<20, 4<<20), s, testSpliceMin
			if tc.proven {
				r.Prove()
			}
			got, spliced := readFrames(t, r, f, s)
			if len(got) != 1 || spliced[0] != 0 || !bytes.Equal(got[0], tc.fr) {
				t.Fatalf("%d frames, %v spliced", len(got), spliced)
			}
			r.Release()
		})
	}
}

// A connection that ends in the middle of a block: the reader reports a
// partial frame, counting what the sink took, and the sink is emptied of
// it, so that nothing of it is ever sent on.
func TestSinkDroppedWhenTheBlockIsCut(t *testing.T) {
	fr := streamFrame(KindStreamRequest, 1, pattern(500<<10, 5), make([]byte, 8))
	f := &feed{data: bytes.Clone(fr[:300<<10]), n: 32 << 10}
	s := &memSink{src: f, size: 1 << 20, maxSize: 1 << 20}
	r := NewReader(nil, 4<<20)
	r.Sink, r.SpliceMin = s, testSpliceMin
	r.Prove()
	for len(f.data) > 0 {
		if _, err := r.ReadOnce(f.read); err != nil && !errors.Is(err, errWait) {
			t.Fatal(err)
		}
	}
	if r.Complete() || len(s.held) == 0 {
		t.Fatalf("complete %v with %d bytes in the sink", r.Complete(), len(s.held))
	}
	err := r.EndError(io.EOF)
	if !errors.Is(err, ErrPartialFrame) {
		t.Fatalf("end of stream mid-block: %v", err)
	}
	if want := "307200 bytes"; !bytes.Contains([]byte(err.Error()), []byte(want)) {
		t.Errorf("error %q does not count the %s received", err, want)
	}
	if len(s.held) != 0 {
		t.Errorf("the sink still holds %d bytes of the cut block", len(s.held))
	}
}
