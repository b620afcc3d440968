package frame

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// Reader sizes for a connection's receive buffer.
const (
	initialReadBuffer = 4 << 10
	smallReadBuffer   = 1 << 10
	greedyReadBuffer  = 64 << 10
	// exactThreshold: frames this large are read header first, then body,
	// so that a large frame is never cut at the end of the buffer and moved.
	exactThreshold = 16 << 10
)

// Reader reads frames from a connection into one buffer that the frames
// are then rewritten and written from: every byte is copied once from the
// kernel and once back. Small frames are read greedily, as many as the
// kernel holds per syscall; a frame cut at the end of the buffer has its
// head (at most exactThreshold bytes) moved to the front.
//
// Beyond 64 KiB the buffer grows with the bytes of a frame that arrived,
// never with what its header claims: one size class (4×) at a time, when
// the frame fills the buffer. A claim of 16 MiB that sends nothing more
// then holds 64 KiB and none of the Budget, and a buffer's charge is at
// most four times the bytes that arrived. The buffer keeps its size, so a
// stream of large frames pays the moves of growing once, on its first
// frame; later frames are read in place. Memory stays bounded by
// max(maxFrameBytes, 64 KiB) rounded up to a size class.
type Reader struct {
	src      io.Reader
	buf      []byte
	bufPtr   *[]byte // returns buf to its pool
	start    int
	end      int
	maxFrame int
	// greedy: a read that fills a buffer smaller than this grows it to
	// this, so that the next read takes more frames at once (64 KiB; a
	// small reader's 4 KiB: it reads one small reply at a time)
	greedy int
	exact  bool
	short  bool // the last read returned less than it asked for
	// Budget, when set, must grant buffers over 64 KiB; charged is what
	// the current buffer holds of it. Until Prove, the charge also counts
	// against the budget's share for connections that have not proven
	// themselves.
	Budget  *BufferBudget
	charged int
	proven  bool
	// hold is the reader's place among the budget's unproven holders;
	// OnEvict, when set, is told when the budget evicts the reader
	// (without it, a source with a read deadline, a net.Conn, gets one
	// in the past, which wakes a blocked Fill).
	hold    holding
	OnEvict Evictee

	// Sink, when set, takes the data of large unsigned stream frames of a
	// proven connection (sink.go); SpliceMin overrides SpliceMinData.
	Sink      Sink
	SpliceMin int
	// The frame being spliced: its data length (0: none), what is still
	// to move into the sink and what is there.
	sinkData, moving, moved int
	// sunk is Spliced(); sinkCharged is what the sink holds of the budget.
	sunk, sinkCharged int
	// released: Release gave the buffer back; reads fail with ErrReleased.
	released bool
}

// NewReader returns a reader of frames of at most maxFrameBytes from src.
func NewReader(src io.Reader, maxFrameBytes int) *Reader {
	return newReader(src, maxFrameBytes, initialReadBuffer, greedyReadBuffer)
}

// NewSmallReader is NewReader with a first buffer of 1 KiB, grown only as
// frames need (a full buffer grows to 4 KiB, not to 64 KiB): for a
// connection that reads one small reply at a time (a continuous
// entry's), where ten thousand connections of 4 KiB each held 40 MB of
// the exporter's heap.
func NewSmallReader(src io.Reader, maxFrameBytes int) *Reader {
	return newReader(src, maxFrameBytes, smallReadBuffer, initialReadBuffer)
}

func newReader(src io.Reader, maxFrameBytes, initial, greedy int) *Reader {
	p := getBuf(min(initial, maxFrameBytes))
	return &Reader{src: src, buf: *p, bufPtr: p, maxFrame: maxFrameBytes, greedy: greedy}
}

// Release returns the reader's buffer to the pool and its charge to the
// budget: a session calls it as soon as it stops reading frames (before
// it drains a connection it has answered for the last time), and again
// when it ends, which does nothing. Every frame it returned is invalid
// afterwards; reads fail with ErrReleased, so a buffer that left is
// never taken again by the same reader.
func (r *Reader) Release() {
	if r.released {
		return
	}
	r.released = true
	putBuf(r.bufPtr)
	r.Budget.release(r, r.charged+r.sinkCharged)
	r.bufPtr, r.buf, r.start, r.end, r.charged, r.sinkCharged = nil, nil, 0, 0, 0, 0
}

// Prove records that a frame this reader returned was verified (signed
// with the chain's key, or well formed where no key is shared), or that
// the connection is one this process opened itself: its buffer leaves the
// budget's share for connections that have not proven themselves.
func (r *Reader) Prove() {
	if r.proven {
		return
	}
	if !r.Budget.promote(r) {
		// Evicted meanwhile: it holds nothing of the budget any more.
		r.charged, r.sinkCharged = 0, 0
	}
	r.proven = true
}

// Evicted reports whether the budget evicted the reader for a newer
// connection (its reads fail with ErrEvicted).
func (r *Reader) Evicted() bool { return r.hold.evicted.Load() }

// wake tells the owner of an evicted reader (BufferBudget.evictIdlest).
func (r *Reader) wake() {
	if r.OnEvict != nil {
		r.OnEvict.BufferEvicted()
		return
	}
	if d, ok := r.src.(interface{ SetReadDeadline(time.Time) error }); ok {
		_ = d.SetReadDeadline(time.Now())
	}
}

// Buffered reports the bytes received but not yet returned by Next.
func (r *Reader) Buffered() int { return r.end - r.start }

// ErrPartialFrame is returned when the peer closes in the middle of a frame.
var ErrPartialFrame = peer.NewError(peer.ReasonClosed, "connection closed in the middle of a frame")

// ErrReleased is a read from a reader after its Release.
var ErrReleased = errors.New("frame reader read after its buffer was released")

// Fill blocks until at least one complete frame is buffered. Frames
// returned by Next before are invalid afterwards. At a clean end of stream
// it returns io.EOF; a header that is not a valid frame header is an error
// wrapping the frame package's errors.
func (r *Reader) Fill() error {
	for {
		if r.Complete() {
			return r.headerErr()
		}
		n, err := r.ReadOnce(r.src.Read)
		if err != nil {
			if n > 0 && r.Complete() {
				return r.headerErr()
			}
			return r.endErr(err)
		}
	}
}

// Complete reports whether a whole frame (or an invalid header, which Next
// reports) is buffered.
func (r *Reader) Complete() bool { return r.complete() }

func (r *Reader) headerErr() error {
	if r.end-r.start >= HeaderLen {
		if _, err := ParseHeader(r.buf[r.start:r.end], r.maxFrame); err != nil {
			return err
		}
	}
	return nil
}

// endErr turns a read error into what Fill reports: io.EOF only at a frame
// boundary.
func (r *Reader) endErr(err error) error {
	got := r.end - r.start + r.moved
	if r.sinkData > 0 {
		// The frame will not be completed: its data leaves the sink.
		r.dropSunk()
	}
	if errors.Is(err, io.EOF) {
		if got == 0 {
			return io.EOF
		}
		return fmt.Errorf("%w (%d bytes of it received)", ErrPartialFrame, got)
	}
	return err
}

// ReadOnce makes room for the frame being received and calls read once to
// add to the buffer: the building block of Fill, and of event loops that
// read only when the kernel says there is data.
func (r *Reader) ReadOnce(read func([]byte) (int, error)) (int, error) {
	if r.released {
		return 0, ErrReleased
	}
	if r.hold.evicted.Load() {
		return 0, ErrEvicted
	}
	if r.moving > 0 {
		return r.takeData()
	}
	if r.start == r.end {
		r.start, r.end = 0, 0
	}
	if r.sinkData == 0 {
		if data, ok := r.spliceable(); ok && r.startSplice(data) {
			return r.takeData()
		}
	}
	need, limit := r.readLimits()
	if r.start+need > len(r.buf) {
		if err := r.makeRoom(need); err != nil {
			return 0, err
		}
		_, limit = r.readLimits()
	}
	if limit <= r.end {
		return 0, nil
	}
	n, err := read(r.buf[r.end:limit])
	r.short = n < limit-r.end
	if n > 0 {
		r.end += n
	}
	if err != nil && r.hold.evicted.Load() {
		err = ErrEvicted // the read was woken by the eviction
	}
	if n > 0 && r.charged > 0 && !r.proven {
		r.Budget.touch(r) // an unproven holder that is not idle
	}
	if err == nil && !r.exact && r.end == len(r.buf) && len(r.buf) < r.greedy && len(r.buf) < r.maxFrame {
		_ = r.grow(min(r.greedy, r.maxFrame)) // within 64 KiB: never refused
	}
	return max(n, 0), err
}

// readLimits is what the next read needs for the frame at start (its
// header, or the whole frame once the header is known), and where it must
// stop: the buffer's end, or the frame's end for large frames, which are
// read in place. A reader that splices reads a large frame's head alone,
// and a stub's tail together with the next frame's head.
func (r *Reader) readLimits() (need, limit int) {
	need = HeaderLen
	if avail := r.end - r.start; avail >= HeaderLen {
		if h, err := ParseHeader(r.buf[r.start:r.end], r.maxFrame); err == nil {
			need = h.FrameLen()
			r.exact = need >= exactThreshold || r.sinkData > 0
		}
	}
	splicing := r.Sink != nil && r.proven
	if splicing && r.exact && r.sinkData == 0 && r.end-r.start < MinFrameLen {
		need = MinFrameLen
	}
	if !r.exact {
		return need, len(r.buf)
	}
	end := r.start + need
	if r.sinkData > 0 {
		end += MinFrameLen
	}
	return need, min(max(end, r.end), len(r.buf))
}

// Drained reports that the last read returned less than it asked for and
// no partial frame is left, or that the sink took less of a block than
// asked: the socket very likely has nothing more, so an event loop can
// wait for the next readiness event instead of reading again.
func (r *Reader) Drained() bool { return r.short && (r.start == r.end || r.moving > 0) }

// EndError is what a caller of ReadOnce reports for a read error: io.EOF
// only at a frame boundary, ErrPartialFrame inside one.
func (r *Reader) EndError(err error) error { return r.endErr(err) }

func (r *Reader) complete() bool {
	if r.moving > 0 {
		return false
	}
	avail := r.end - r.start
	if avail < HeaderLen {
		return false
	}
	h, err := ParseHeader(r.buf[r.start:r.end], r.maxFrame)
	return err != nil || avail >= h.FrameLen()
}

// makeRoom gives the partial frame at start room for need bytes, as much
// as the bytes that arrived justify (roomFor): it grows the buffer (which
// moves the received head to the front), or moves the head to the front.
func (r *Reader) makeRoom(need int) error {
	if size := r.roomFor(need); size > len(r.buf) {
		return r.grow(size)
	}
	if r.start > 0 {
		n := copy(r.buf, r.buf[r.start:r.end])
		r.start, r.end = 0, n
	}
	return nil
}

// growthFactor is how much larger than the bytes of a frame that arrived
// its buffer may become: one size class.
const growthFactor = 4

// roomFor is the buffer size the frame being received, need bytes long,
// may have now. Up to 64 KiB (never budgeted) its claim is taken; beyond,
// the buffer grows only when the frame's bytes fill it, by one size class:
// a header's claim reserves nothing of the budget.
func (r *Reader) roomFor(need int) int {
	switch {
	case need <= greedyReadBuffer:
		return need
	case len(r.buf) < greedyReadBuffer:
		return greedyReadBuffer
	case r.end-r.start < len(r.buf):
		return len(r.buf) // room left once the head is at the front
	}
	return min(need, growthFactor*len(r.buf))
}

// grow moves the buffered bytes into a buffer of at least size bytes;
// buffers over 64 KiB must fit the budget.
func (r *Reader) grow(size int) error {
	charge := 0
	if size > greedyReadBuffer {
		charge = bufSize(size)
	}
	// The old buffer goes back at once: only the difference is taken.
	if d := charge - r.charged; d > 0 {
		if err := r.Budget.acquire(r, d); err != nil {
			return err
		}
	} else {
		r.Budget.release(r, -d)
	}
	p := getBuf(size)
	n := copy(*p, r.buf[r.start:r.end])
	putBuf(r.bufPtr)
	r.buf, r.bufPtr, r.start, r.end, r.charged = *p, p, 0, n, charge
	return nil
}

// Next returns the next complete buffered frame, or nil when none is. The
// frame stays valid until the next Fill.
func (r *Reader) Next() ([]byte, error) {
	r.sunk = 0
	if r.moving > 0 {
		return nil, nil
	}
	avail := r.end - r.start
	if avail < HeaderLen {
		return nil, nil
	}
	h, err := ParseHeader(r.buf[r.start:r.end], r.maxFrame)
	if err != nil {
		return nil, err
	}
	n := h.FrameLen()
	if avail < n {
		return nil, nil
	}
	f := r.buf[r.start : r.start+n]
	r.start += n
	if r.sinkData > 0 {
		r.sunk, r.sinkData, r.moved = r.moved, 0, 0
	}
	return f, nil
}
