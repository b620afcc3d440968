package frame

import (
	"errors"
	"fmt"
	"io"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// Reader sizes for a connection's receive buffer.
const (
	initialReadBuffer = 4 << 10
	greedyReadBuffer  = 64 << 10
	// exactThreshold: frames this large are read header first, then body,
	// so that a large frame is never cut at the end of the buffer and moved.
	exactThreshold = 16 << 10
)

// Reader reads frames from a connection into one buffer that the frames
// are then rewritten and written from: every byte is copied once from the
// kernel and once back. Small frames are read greedily, as many as the
// kernel holds per syscall; a frame cut at the end of the buffer has its
// head (at most exactThreshold bytes) moved to the front. Memory stays
// bounded by max(maxFrameBytes, 64 KiB).
type Reader struct {
	src      io.Reader
	buf      []byte
	bufPtr   *[]byte // returns buf to its pool
	start    int
	end      int
	maxFrame int
	exact    bool
	short    bool // the last read returned less than it asked for
	// Budget, when set, must grant buffers over 64 KiB; charged is what
	// the current buffer holds of it.
	Budget  *BufferBudget
	charged int
}

// NewReader returns a reader of frames of at most maxFrameBytes from src.
func NewReader(src io.Reader, maxFrameBytes int) *Reader {
	p := getBuf(min(initialReadBuffer, maxFrameBytes))
	return &Reader{src: src, buf: *p, bufPtr: p, maxFrame: maxFrameBytes}
}

// Release returns the reader's buffer to the pool; the reader and every
// frame it returned must not be used afterwards.
func (r *Reader) Release() {
	putBuf(r.bufPtr)
	r.Budget.release(r.charged)
	r.bufPtr, r.buf, r.start, r.end, r.charged = nil, nil, 0, 0, 0
}

// Buffered reports the bytes received but not yet returned by Next.
func (r *Reader) Buffered() int { return r.end - r.start }

// ErrPartialFrame is returned when the peer closes in the middle of a frame.
var ErrPartialFrame = peer.NewError(peer.ReasonClosed, "connection closed in the middle of a frame")

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
	if errors.Is(err, io.EOF) {
		if r.start == r.end {
			return io.EOF
		}
		return fmt.Errorf("%w (%d bytes of it received)", ErrPartialFrame, r.end-r.start)
	}
	return err
}

// ReadOnce makes room for the frame being received and calls read once to
// add to the buffer: the building block of Fill, and of event loops that
// read only when the kernel says there is data.
func (r *Reader) ReadOnce(read func([]byte) (int, error)) (int, error) {
	if r.start == r.end {
		r.start, r.end = 0, 0
	}
	need := HeaderLen
	if avail := r.end - r.start; avail >= HeaderLen {
		if h, err := ParseHeader(r.buf[r.start:r.end], r.maxFrame); err == nil {
			need = h.FrameLen()
			r.exact = need >= exactThreshold
		}
	}
	if r.start+need > len(r.buf) {
		if err := r.makeRoom(need); err != nil {
			return 0, err
		}
	}
	limit := len(r.buf)
	if r.exact {
		limit = max(r.start+need, r.end)
	}
	if limit <= r.end {
		return 0, nil
	}
	n, err := read(r.buf[r.end:limit])
	r.short = n < limit-r.end
	if n > 0 {
		r.end += n
	}
	if err == nil && !r.exact && r.end == len(r.buf) && len(r.buf) < greedyReadBuffer && len(r.buf) < r.maxFrame {
		_ = r.grow(min(greedyReadBuffer, r.maxFrame)) // within 64 KiB: never refused
	}
	return max(n, 0), err
}

// Drained reports that the last read returned less than it asked for and
// no partial frame is left: the socket very likely has nothing more, so an
// event loop can wait for the next readiness event instead of reading again.
func (r *Reader) Drained() bool { return r.short && r.start == r.end }

// EndError is what a caller of ReadOnce reports for a read error: io.EOF
// only at a frame boundary, ErrPartialFrame inside one.
func (r *Reader) EndError(err error) error { return r.endErr(err) }

func (r *Reader) complete() bool {
	avail := r.end - r.start
	if avail < HeaderLen {
		return false
	}
	h, err := ParseHeader(r.buf[r.start:r.end], r.maxFrame)
	return err != nil || avail >= h.FrameLen()
}

// makeRoom gives the partial frame at start room for need bytes: it moves
// the received head to the front, growing the buffer when even that is not
// enough.
func (r *Reader) makeRoom(need int) error {
	if need > len(r.buf) {
		if err := r.grow(need); err != nil {
			return err
		}
		if r.start+need <= len(r.buf) {
			return nil
		}
	}
	n := copy(r.buf, r.buf[r.start:r.end])
	r.start, r.end = 0, n
	return nil
}

// grow moves the buffered bytes into a buffer of at least size bytes;
// buffers over 64 KiB must fit the budget.
func (r *Reader) grow(size int) error {
	charge := 0
	if size > greedyReadBuffer {
		charge = bufSize(size)
		if err := r.Budget.acquire(charge); err != nil {
			return err
		}
	}
	p := getBuf(size)
	n := copy(*p, r.buf[r.start:r.end])
	putBuf(r.bufPtr)
	r.Budget.release(r.charged)
	r.buf, r.bufPtr, r.start, r.end, r.charged = *p, p, 0, n, charge
	return nil
}

// Next returns the next complete buffered frame, or nil when none is. The
// frame stays valid until the next Fill.
func (r *Reader) Next() ([]byte, error) {
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
	return f, nil
}
