package frame

import (
	"encoding/binary"
	"errors"
)

// Sink takes the data of large stream frames out of a connection's byte
// stream without passing it through user space: a relay's pipe, which it
// splices into from the socket and out of to the next socket. The Reader
// keeps only the frame's head and tail (the path or the records), so that
// a frame is still checked whole — lengths, path, records — before any of
// it is sent on, while its data never crosses into user space.
//
// The sink holds the data of the frames in the order they were read; the
// writer takes it out in the same order (or drops it, for a frame that is
// answered instead of passed on).
type Sink interface {
	// Ready reports whether the sink can be used (it may open lazily).
	Ready() bool
	// Take moves up to n of the connection's next bytes into the sink. It
	// returns ErrSinkFull when the sink has no room while the connection
	// has bytes waiting, io.EOF at the connection's end, and the event
	// loop's "nothing now" error (as the read function does) otherwise.
	Take(n int) (int, error)
	// Put copies p, bytes the reader had already read, into the sink; a
	// short count means the sink is full.
	Put(p []byte) (int, error)
	// Drop discards n bytes from the front of the sink.
	Drop(n int) error
	// Size is the sink's capacity in bytes (the pipe's size).
	Size() int
	// Grow asks for a capacity of at least size bytes and returns the
	// capacity the sink has now; an error when it cannot grow.
	Grow(size int) (int, error)
}

// ErrSinkFull is a Sink's answer when it can take no more now.
var ErrSinkFull = errors.New("sink full")

// SpliceMinData is the smallest stream block whose data a Reader with a
// Sink moves through it. A spliced block costs about seven system calls
// (its head, the splices in and out, its tail) where a copied one costs
// two: measured side by side on the reference VM, splicing cost the relays
// 50 % more CPU at 64 KiB blocks and 8 % more at 256 KiB, and broke even
// at 1 MiB (bench/README.md).
const SpliceMinData = 1 << 20

// defaultSinkSize is a pipe's size before it grows (Linux: 16 pages); like
// a read buffer up to 64 KiB, it is not counted against the budget.
const defaultSinkSize = 64 << 10

// spliceable reports whether the frame whose head starts the buffered
// bytes should have its data moved into the sink, and how much data it
// has. Only a proven reader splices; only unsigned stream frames (a
// signature covers the data, which must then be read) whose data is
// large, whose head is consistent, and that are not already complete.
func (r *Reader) spliceable() (int, bool) {
	if r.Sink == nil || !r.proven || r.end-r.start < MinFrameLen {
		return 0, false
	}
	b := r.buf[r.start:r.end]
	h, err := ParseHeader(b, r.maxFrame)
	if err != nil || h.Flags != 0 || (h.Kind != KindStreamRequest && h.Kind != KindStreamReply) || b[HeaderLen+11] != 0 {
		return 0, false
	}
	data := int(binary.BigEndian.Uint32(b[HeaderLen+16:]))
	buffered := r.end - r.start - MinFrameLen
	switch {
	case data < r.spliceMin(), data > int(h.Length)-ProbeHdrLen:
		return 0, false
	case buffered >= data || buffered > defaultSinkSize-MinFrameLen:
		return 0, false // mostly here already: read it the ordinary way
	}
	return data, r.Sink.Ready()
}

func (r *Reader) spliceMin() int {
	if r.SpliceMin > 0 {
		return r.SpliceMin
	}
	return SpliceMinData
}

// startSplice turns the frame at start into its stub (the head with no
// data, then the tail) and moves the data bytes already buffered into the
// sink. It reports false, leaving the frame as it was, when they do not
// fit.
func (r *Reader) startSplice(data int) bool {
	head := r.start + MinFrameLen
	have := r.end - head // all data: spliceable checked
	if have > 0 {
		n, err := r.Sink.Put(r.buf[head:r.end])
		if err != nil || n < have {
			if n > 0 {
				_ = r.Sink.Drop(n)
			}
			return false
		}
	}
	r.end = head
	h := r.buf[r.start:]
	binary.BigEndian.PutUint32(h[8:12], binary.BigEndian.Uint32(h[8:12])-uint32(data))
	binary.BigEndian.PutUint32(h[HeaderLen+16:], 0)
	r.sinkData, r.moving, r.moved = data, data-have, have
	r.exact = true
	r.shrink()
	return true
}

// shrink returns a large buffer (a frame before this one was read the
// ordinary way) when only a stub is buffered: a splicing session holds no
// budget for its buffer.
func (r *Reader) shrink() {
	if len(r.buf) <= greedyReadBuffer || r.end-r.start > initialReadBuffer {
		return
	}
	p := getBuf(initialReadBuffer)
	n := copy(*p, r.buf[r.start:r.end])
	putBuf(r.bufPtr)
	r.Budget.release(r, r.charged)
	r.buf, r.bufPtr, r.start, r.end, r.charged = *p, p, 0, n, 0
}

// takeData moves what the connection has of the current frame's data into
// the sink, growing the sink when the frame's bytes fill it. When it
// cannot grow, the rest of the data is read the ordinary way: the frame's
// stub then holds it, after what the sink holds.
func (r *Reader) takeData() (int, error) {
	want := r.moving
	n, err := r.Sink.Take(want)
	r.moving -= n
	r.moved += n
	r.short = n < want || err != nil
	if err != ErrSinkFull {
		return n, err
	}
	if !r.growSink() {
		r.stopSplice()
	}
	return n, nil
}

// growSink gives a full sink one size class more (four times its size),
// as a read buffer grows when a frame's bytes fill it: a full pipe's pages
// all hold bytes that arrived (its capacity is the memory those pages
// pin, which is what the budget counts), and it never grows beyond what
// the frame's data may need (pages are not always full), within the
// budget and the sink's own limit.
func (r *Reader) growSink() bool {
	size := r.Sink.Size()
	want := min(growthFactor*bufSize(size), bufSize(2*r.sinkData))
	if want <= size {
		return false
	}
	charge := sinkCharge(want)
	if err := r.Budget.acquire(r, charge-r.sinkCharged); err != nil {
		return false
	}
	got, err := r.Sink.Grow(want)
	if err != nil || got <= size {
		r.Budget.release(r, charge-r.sinkCharged)
		return false
	}
	// The sink may have stopped short of want (its own limit).
	r.Budget.release(r, charge-sinkCharge(got))
	r.sinkCharged = sinkCharge(got)
	return true
}

// sinkCharge is what a sink of size bytes holds of the budget.
func sinkCharge(size int) int {
	if size <= defaultSinkSize {
		return 0
	}
	return size
}

// stopSplice ends the move into the sink for the current frame: what the
// sink holds stays there, the rest of the data becomes the stub's data,
// read the ordinary way.
func (r *Reader) stopSplice() {
	rest := r.moving
	h := r.buf[r.start:]
	binary.BigEndian.PutUint32(h[8:12], binary.BigEndian.Uint32(h[8:12])+uint32(rest))
	binary.BigEndian.PutUint32(h[HeaderLen+16:], uint32(rest))
	r.moving = 0
}

// dropSunk discards what the sink holds of a frame that will not be
// completed (the connection ended in its middle).
func (r *Reader) dropSunk() {
	if r.moved > 0 {
		_ = r.Sink.Drop(r.moved)
	}
	r.sinkData, r.moving, r.moved = 0, 0, 0
}

// Spliced is how many data bytes of the frame Next returned last are in
// the Sink instead of the frame: the frame is then its stub, whose data
// length counts only the data it holds itself (often none), and the
// sink's bytes come first in the frame's data: right after its probe
// header.
func (r *Reader) Spliced() int { return r.sunk }
