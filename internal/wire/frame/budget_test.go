package frame

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
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
	// A proven connection finds the other half.
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
	// Proven connections hold all of it: an unproven one is refused.
	second := newReader()
	err := readAll(second, &feed{data: fr, n: 64 << 10}, nil)
	if !errors.Is(err, ErrBudget) || errors.Is(err, ErrEvicted) || peer.Classify(err) != peer.ReasonOverloaded {
		t.Fatalf("unproven connection beside a budget full of proven ones: %v, want refused as overloaded", err)
	}
	for _, r := range []*Reader{first, proven, second} {
		r.Release()
	}
	if b.Used() != 0 || b.UnprovenUsed() != 0 {
		t.Fatalf("released readers still hold %d (unproven %d) bytes", b.Used(), b.UnprovenUsed())
	}
}

// evictions counts what the budget told a reader's owner.
type evictions struct{ n int }

func (e *evictions) BufferEvicted() { e.n++ }

// holdBytes is an unproven connection that sent a header claiming
// claimLen bytes and sent of its frame body bytes, then nothing more.
func holdBytes(t *testing.T, b *BufferBudget, maxFrame, claimLen, body int) (*Reader, *evictions) {
	t.Helper()
	data := make([]byte, HeaderLen+body)
	PutHeader(data, Header{Kind: KindStreamRequest, Length: uint32(claimLen - HeaderLen)})
	r := NewReader(nil, maxFrame)
	r.Budget = b
	e := &evictions{}
	r.OnEvict = e
	if err := readAll(r, &feed{data: data, n: 64 << 10}, nil); err != nil {
		// The share is full: the relay closes this one.
		t.Logf("holder refused: %v", err)
	}
	return r, e
}

// checkBounds fails when the budget holds more than its limits.
func checkBounds(t *testing.T, b *BufferBudget) {
	t.Helper()
	if b.Used() > b.Limit() || b.UnprovenUsed() > b.UnprovenLimit() || b.UnprovenUsed() > b.Used() || b.UnprovenUsed() < 0 {
		t.Fatalf("budget holds %d of %d (unproven %d of %d)", b.Used(), b.Limit(), b.UnprovenUsed(), b.UnprovenLimit())
	}
}

// Unverified bytes that did arrive cannot lock the budget either (the
// review's scenario): eight unproven connections that sent 256 KiB of a
// frame claiming 1.9 MiB fill the unproven share, and a 300 KiB frame on
// a new connection is read whole: the holders idle longest are evicted
// for it, their next read fails as overloaded and their owner is told.
func TestRealBytesDoNotLockTheBudget(t *testing.T) {
	const maxFrame = 2 << 20
	b := NewBufferBudget(8<<20, maxFrame)
	var holders []*Reader
	var told []*evictions
	for i := 0; i < 8; i++ {
		r, e := holdBytes(t, b, maxFrame, 1992294, 262144)
		holders, told = append(holders, r), append(told, e)
		checkBounds(t, b)
	}
	if b.UnprovenUsed() != b.UnprovenLimit() {
		t.Fatalf("8 holders of 256 KiB hold %d of the %d-byte unproven share, want all of it", b.UnprovenUsed(), b.UnprovenLimit())
	}
	fr := bigFrame(300<<10, 1)
	r := NewReader(nil, maxFrame)
	r.Budget = b
	if err := readAll(r, &feed{data: fr, n: 16 << 10}, func() { checkBounds(t, b) }); err != nil {
		t.Fatalf("300 KiB frame beside 8 holders of real bytes: %v", err)
	}
	got, err := r.Next()
	if err != nil || !bytes.Equal(got, fr) {
		t.Fatalf("300 KiB frame not read byte-exact: %v", err)
	}
	r.Prove()
	evicted := 0
	for i, h := range holders {
		_, err := h.ReadOnce((&feed{}).read)
		switch {
		case h.Evicted():
			evicted++
			if !errors.Is(err, ErrEvicted) || peer.Classify(err) != peer.ReasonOverloaded || told[i].n != 1 {
				t.Errorf("evicted holder %d: read %v, owner told %d times; want ErrEvicted (overloaded), told once", i, err, told[i].n)
			}
		case !errors.Is(err, errWait) || told[i].n != 0:
			t.Errorf("holder %d, not evicted: read %v, owner told %d times", i, err, told[i].n)
		}
	}
	if evicted == 0 {
		t.Fatal("no holder was evicted")
	}
	// The oldest (idle longest) went first.
	for i := 1; i < len(holders); i++ {
		if holders[i].Evicted() && !holders[i-1].Evicted() {
			t.Errorf("holder %d evicted before the older holder %d", i, i-1)
		}
	}
	r.Release()
	for _, h := range holders {
		h.Release()
	}
	if b.Used() != 0 || b.UnprovenUsed() != 0 {
		t.Fatalf("released readers still hold %d (unproven %d) bytes", b.Used(), b.UnprovenUsed())
	}
}

// An attacker that reconnects as soon as a connection of its is evicted,
// sending as many bytes as the legitimate client in the same time, cannot
// keep a 300 KiB frame out, nor can a 2 MiB-frame attacker whose every
// connection would take the whole unproven share; the budget's bounds
// hold throughout.
func TestReconnectingHoldersDoNotLockTheBudget(t *testing.T) {
	const maxFrame = 2 << 20
	for _, body := range []int{262144, 1100 << 10} {
		t.Run(fmt.Sprint(body), func(t *testing.T) {
			b := NewBufferBudget(8<<20, maxFrame)
			data := make([]byte, HeaderLen+body)
			PutHeader(data, Header{Kind: KindStreamRequest, Length: 1992294 - HeaderLen})
			att := &budgetAttacker{budget: b, maxFrame: maxFrame, data: data}
			for i := 0; i < 8; i++ {
				c := att.open()
				_ = readAll(c.r, c.f, nil) // refused when the share is full
				att.conns = append(att.conns, c)
			}
			fr := bigFrame(300<<10, 1)
			r := NewReader(nil, maxFrame)
			r.Budget = b
			f := &feed{data: fr, n: 16 << 10}
			for step := 0; !r.Complete(); step++ {
				if step > 1000 {
					t.Fatal("no progress")
				}
				if _, err := r.ReadOnce(f.read); err != nil && !errors.Is(err, errWait) {
					t.Fatalf("300 KiB frame beside a reconnecting attacker (%d reconnects): %v", att.reconnects, err)
				}
				att.step(step)
				checkBounds(t, b)
			}
			got, err := r.Next()
			if err != nil || !bytes.Equal(got, fr) {
				t.Fatalf("300 KiB frame not read byte-exact: %v", err)
			}
			t.Logf("%d reconnects while the frame was read", att.reconnects)
			r.Release()
			att.release()
			if b.Used() != 0 || b.UnprovenUsed() != 0 {
				t.Fatalf("released readers still hold %d (unproven %d) bytes", b.Used(), b.UnprovenUsed())
			}
		})
	}
}

// budgetAttacker holds unproven connections that each send data (a
// header claiming a large frame and its first bytes), replacing every
// connection the budget evicts.
type budgetAttacker struct {
	budget     *BufferBudget
	maxFrame   int
	data       []byte
	conns      []budgetHolder
	reconnects int
}

type budgetHolder struct {
	r *Reader
	f *feed
}

func (a *budgetAttacker) open() budgetHolder {
	r := NewReader(nil, a.maxFrame)
	r.Budget = a.budget
	return budgetHolder{r, &feed{data: a.data, n: 16 << 10}}
}

// step replaces the evicted connections and sends as much as the
// legitimate client did, on one connection in turn.
func (a *budgetAttacker) step(n int) {
	for i := range a.conns {
		if a.conns[i].r.Evicted() {
			a.conns[i].r.Release()
			a.conns[i] = a.open()
			a.reconnects++
		}
	}
	c := a.conns[n%len(a.conns)]
	_, _ = c.r.ReadOnce(c.f.read) // its refusals and evictions are the attacker's
}

func (a *budgetAttacker) release() {
	for _, c := range a.conns {
		c.r.Release()
	}
}

// readAndRelease reads data (proven from the start, or after 20 reads)
// until it is whole or refused, checking the budget's bounds after every
// read, then releases the reader.
func readAndRelease(t *testing.T, b *BufferBudget, data []byte, maxFrame int, proven bool) {
	r := NewReader(nil, maxFrame)
	r.Budget = b
	if proven {
		r.Prove()
	}
	f := &feed{data: data, n: 32 << 10}
	for k := 0; k < 1000; k++ {
		_, err := r.ReadOnce(f.read)
		if b.Used() > b.Limit() || b.UnprovenUsed() > b.UnprovenLimit() {
			t.Errorf("budget holds %d of %d (unproven %d of %d)", b.Used(), b.Limit(), b.UnprovenUsed(), b.UnprovenLimit())
		}
		if err != nil || r.Complete() {
			break
		}
		if k == 20 {
			r.Prove()
		}
	}
	r.Release()
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

// Readers that claim, evict, prove themselves and end from many
// goroutines at once keep the budget's bounds, and give everything back.
func TestBudgetEvictionsConcurrently(t *testing.T) {
	const maxFrame = 2 << 20
	b := NewBufferBudget(8<<20, maxFrame)
	fr := bigFrame(1500<<10, 1)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				readAndRelease(t, b, fr[:len(fr)*(1+(g+i)%4)/4], maxFrame, (g+i)%3 == 0)
			}
		}()
	}
	wg.Wait()
	if b.Used() != 0 || b.UnprovenUsed() != 0 {
		t.Fatalf("released readers still hold %d (unproven %d) bytes", b.Used(), b.UnprovenUsed())
	}
}

// A session releases its reader when it stops reading frames (before the
// drain of a connection it answered for the last time: REVIEW-2 F-A) and
// again when it ends: the second Release changes nothing, whether the
// reader was evicted, unproven or proven, and a released reader never
// reads, so it never takes a buffer or budget again.
func TestReleaseTwiceAndNoReadAfterIt(t *testing.T) {
	const maxFrame = 2 << 20
	b := NewBufferBudget(8<<20, maxFrame)
	evicted, _ := holdBytes(t, b, maxFrame, 1992294, 1900<<10)
	unproven, _ := holdBytes(t, b, maxFrame, 1992294, 1900<<10) // evicts the first
	if !evicted.Evicted() || unproven.Evicted() {
		t.Fatalf("evicted %v, newer %v: want the older evicted", evicted.Evicted(), unproven.Evicted())
	}
	proven := NewReader(nil, maxFrame)
	proven.Budget = b
	proven.Prove()
	if err := readAll(proven, &feed{data: bigFrame(1<<20, 1), n: 64 << 10}, nil); err != nil {
		t.Fatal(err)
	}
	held := b.Used()
	for _, r := range []*Reader{evicted, unproven, proven} {
		for range 2 {
			before := b.Used()
			r.Release()
			if b.Used() > before || b.Used() < 0 || b.UnprovenUsed() < 0 {
				t.Fatalf("release: budget holds %d (unproven %d), %d before", b.Used(), b.UnprovenUsed(), before)
			}
		}
		n, err := r.ReadOnce((&feed{data: bigFrame(1<<20, 2), n: 64 << 10}).read)
		if n != 0 || !errors.Is(err, ErrReleased) || r.Buffered() != 0 || r.Complete() {
			t.Errorf("read after Release: %d bytes, %v, %d buffered; want ErrReleased and nothing", n, err, r.Buffered())
		}
		if fr, err := r.Next(); fr != nil || err != nil {
			t.Errorf("Next after Release: %d bytes, %v", len(fr), err)
		}
	}
	if held == 0 || b.Used() != 0 || b.UnprovenUsed() != 0 {
		t.Fatalf("after every Release the budget holds %d (unproven %d), %d while read; want 0 of a non-zero hold", b.Used(), b.UnprovenUsed(), held)
	}
}

// A small reader starts with 1 KiB and reads frames of any size up to
// its bound byte-exact, however the bytes arrive, and grows only as its
// frames need: a 3 KiB reply that fills its first buffer in one read
// must not leave it holding the 64 KiB a relay's reader grows to.
func TestSmallReaderReadsFramesOfAnySize(t *testing.T) {
	for _, tc := range []struct{ size, chunk int }{
		{100, 7}, {1000, 1 << 10}, {1 << 10, 100}, {3000, 512}, {3000, 64 << 10}, {10 << 10, 64 << 10}, {70 << 10, 4 << 10}, {300 << 10, 16 << 10},
	} {
		r := NewSmallReader(nil, DefaultMaxFrameBytes)
		if len(r.buf) != smallReadBuffer {
			t.Fatalf("a small reader starts with %d bytes, want %d", len(r.buf), smallReadBuffer)
		}
		fr := bigFrame(tc.size, 3)
		if err := readAll(r, &feed{data: fr, n: tc.chunk}, nil); err != nil {
			t.Fatalf("%d-byte frame in %d-byte reads: %v", tc.size, tc.chunk, err)
		}
		got, err := r.Next()
		if err != nil || !bytes.Equal(got, fr) {
			t.Errorf("%d-byte frame in %d-byte reads not read byte-exact: %v", tc.size, tc.chunk, err)
		}
		if want := max(initialReadBuffer, bufSize(len(fr))); len(fr) < greedyReadBuffer && len(r.buf) > want {
			t.Errorf("%d-byte frame in %d-byte reads left a %d-byte buffer, want at most %d", len(fr), tc.chunk, len(r.buf), want)
		}
		r.Release()
	}
}
