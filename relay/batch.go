package relay

import (
	"errors"
	"net"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
)

// batch collects the pieces of the frames one read produced and writes
// them with a single writev: pieces point into the connection's read buffer
// (the frames as received, rewritten in place) and into the batch's own
// scratch (records, hop IDs, signatures). No frame data is copied. The
// data of a large stream block that came through a pipe (pipe.go) is a
// piece of its own, spliced from the pipe between its frame's head and
// tail.
type batch struct {
	pieces  []piece
	scratch []byte
	bufs    net.Buffers
	store   [][]byte
	// For non-blocking writes: the first piece not yet fully written, and
	// how much of it was.
	next, skip int
	iov        []unix.Iovec
	// pipe holds the data of the batch's pipe pieces, in order.
	pipe *pipe
	msg  unix.Msghdr
	// lastGathered is the piece gather stopped at.
	lastGathered int
}

// piece is either a slice of the read buffer (data != nil), a range of
// scratch, kept as offsets because scratch may grow while the batch fills,
// or n bytes of the pipe (fromPipe), sent on or, with drop, discarded.
type piece struct {
	data           []byte
	off, n         int
	fromPipe, drop bool
}

// reset empties the batch; what its pipe pieces did not send yet leaves
// the pipe, which stays in step with the frames still to come.
func (b *batch) reset() {
	if left := b.pipeLeft(); left > 0 {
		if err := b.pipe.Drop(left); err != nil {
			b.pipe.failed = true
		}
	}
	b.pieces = b.pieces[:0]
	b.scratch = b.scratch[:0]
	b.next, b.skip = 0, 0
}

// forget empties the batch and drops the pointers into read buffers that
// its slices' backing arrays still hold from earlier writes (reset keeps
// them, with the capacity): called once the session released its
// readers, whose buffers must not stay allocated through its drain.
func (b *batch) forget() {
	b.reset()
	clear(b.pieces[:cap(b.pieces)])
	clear(b.iov[:cap(b.iov)])
	clear(b.store[:cap(b.store)])
	b.bufs = nil
}

// letGoOfFrames gives back what a session read and wrote frames with,
// once it reads no more frames and its last answer is out (before the
// drain): r's buffer (nil: released by its owner) and the pointers into
// read buffers its batches and echo queue keep. Without this, a reader
// the budget evicted would keep its buffer (up to a frame) through the
// drain, while its charge had already left the budget. Only the
// goroutine that owns r and both batches calls it.
func (h *hopState) letGoOfFrames(r *frame.Reader) {
	if r != nil {
		r.Release()
	}
	h.fwd.forget()
	h.ret.forget()
	clear(h.echoes[:cap(h.echoes)])
	h.echoes = h.echoes[:0]
}

// pipeLeft is how many bytes of the pipe the unwritten pieces hold.
func (b *batch) pipeLeft() int {
	if b.pipe == nil {
		return 0
	}
	left := 0
	for i := b.next; i < len(b.pieces); i++ {
		if b.pieces[i].fromPipe {
			left += b.pieces[i].n
			if i == b.next {
				left -= b.skip
			}
		}
	}
	return left
}

// frameWithPiped adds bytes of a received frame whose first spliced data
// bytes are in the pipe: they go between its probe header (dataOff) and
// the data and tail it holds itself.
func (b *batch) frameWithPiped(p []byte, dataOff, spliced int) {
	if spliced == 0 {
		b.frameBytes(p)
		return
	}
	b.frameBytes(p[:dataOff])
	b.pieces = append(b.pieces, piece{n: spliced, fromPipe: true})
	b.frameBytes(p[dataOff:])
}

// dropPiped discards n bytes of the pipe, the data of a frame that is
// answered instead of passed on, in order with the pieces before it: at
// once when none is waiting.
func (b *batch) dropPiped(n int) {
	switch {
	case n <= 0:
	case !b.pendingWrite():
		if err := b.pipe.Drop(n); err != nil {
			b.pipe.failed = true
		}
	default:
		b.pieces = append(b.pieces, piece{n: n, fromPipe: true, drop: true})
	}
}

func (b *batch) empty() bool { return len(b.pieces) == 0 }

// frameBytes adds bytes of a received frame.
func (b *batch) frameBytes(p []byte) {
	if len(p) > 0 {
		b.pieces = append(b.pieces, piece{data: p})
	}
}

// scratchFrom adds scratch bytes from off to the current end of scratch.
func (b *batch) scratchFrom(off int) {
	if n := len(b.scratch) - off; n > 0 {
		b.pieces = append(b.pieces, piece{off: off, n: n})
	}
}

// write sends every piece to w in order with one writev where w supports
// it, and empties the batch.
func (b *batch) write(w net.Conn, timeout time.Duration) (int64, error) {
	if len(b.pieces) == 0 {
		return 0, nil
	}
	b.store = b.store[:0]
	for _, p := range b.pieces {
		if p.data != nil {
			b.store = append(b.store, p.data)
		} else {
			b.store = append(b.store, b.scratch[p.off:p.off+p.n])
		}
	}
	b.bufs = b.store
	if timeout > 0 {
		if err := w.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
			b.reset()
			return 0, err
		}
	}
	var n int64
	var err error
	if rx, ok := w.(*rxstamp.Conn); ok {
		// A raw writev under the poller (rxstamp.Conn.Writev says why).
		n, err = rx.Writev(b.bufs)
	} else {
		n, err = b.bufs.WriteTo(w)
	}
	b.reset()
	return n, err
}

// errAgain is a non-blocking socket's "try again later".
var errAgain = errors.New("resource temporarily unavailable")

// writeFd writes as much of the batch as the socket takes without
// blocking, with writev; it returns true once everything is written. The
// pieces must stay valid until then: the engine stops reading into the
// buffers they point to.
func (b *batch) writeFd(fd int) (bool, error) {
	for b.next < len(b.pieces) {
		if b.pieces[b.next].fromPipe {
			if done, err := b.writePiped(fd); !done || err != nil {
				return false, err
			}
			continue
		}
		more := b.gather()
		if len(b.iov) == 0 {
			continue // gather passed over empty pieces
		}
		// Raw: a non-blocking write on the loop's thread (rawsys.go);
		// with MSG_MORE when a block's data follows from the pipe.
		var n uintptr
		var errno unix.Errno
		if more {
			b.msg.Iov = &b.iov[0]
			b.msg.SetIovlen(len(b.iov))
			n, _, errno = unix.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msg)), unix.MSG_MORE|unix.MSG_NOSIGNAL)
		} else {
			n, _, errno = unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&b.iov[0])), uintptr(len(b.iov)))
		}
		switch errno {
		case 0:
		case unix.EAGAIN:
			return false, nil
		case unix.EINTR:
			continue
		default:
			return false, errno
		}
		if !more && int(n) == b.iovBytes() && b.lastGathered == len(b.pieces) {
			b.next = len(b.pieces) // all written: the usual case
			break
		}
		b.consume(int(n))
	}
	b.reset()
	return true, nil
}

// iovBytes is what the gathered iovecs hold.
func (b *batch) iovBytes() int {
	n := 0
	for i := range b.iov {
		n += int(b.iov[i].Len)
	}
	return n
}

// gather fills iov with the memory pieces from next up to the next pipe
// piece, and reports whether a block's data follows them from the pipe.
func (b *batch) gather() (more bool) {
	iov := b.iov[:0]
	i := b.next
	for ; i < len(b.pieces) && len(iov) < maxIovecs; i++ {
		p := &b.pieces[i]
		if p.fromPipe {
			break
		}
		d := p.data
		if d == nil {
			d = b.scratch[p.off : p.off+p.n]
		}
		if i == b.next {
			d = d[b.skip:]
		}
		if len(d) == 0 {
			continue
		}
		v := unix.Iovec{Base: &d[0]}
		v.SetLen(len(d))
		iov = append(iov, v)
	}
	b.iov, b.lastGathered = iov, i
	if len(iov) == 0 {
		// Only empty pieces before the pipe piece (or the end).
		b.next, b.skip = i, 0
	}
	return i < len(b.pieces) && b.pieces[i].fromPipe && !b.pieces[i].drop
}

// writePiped splices the pipe piece at next into fd (or discards it); it
// reports false when the socket takes nothing more now.
func (b *batch) writePiped(fd int) (bool, error) {
	p := b.pieces[b.next]
	left := p.n - b.skip
	if p.drop {
		if err := b.pipe.Drop(left); err != nil {
			return false, err
		}
		b.next, b.skip = b.next+1, 0
		return true, nil
	}
	m, err := b.pipe.out(fd, left)
	if err == errAgain {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if b.skip += m; b.skip == p.n {
		b.next, b.skip = b.next+1, 0
	}
	return true, nil
}

// maxIovecs is IOV_MAX on Linux.
const maxIovecs = 1024

// pendingWrite reports whether a non-blocking write left part of the batch.
func (b *batch) pendingWrite() bool { return len(b.pieces) > 0 }

func (b *batch) bytes(i int) []byte {
	p := b.pieces[i]
	if p.data != nil {
		return p.data
	}
	return b.scratch[p.off : p.off+p.n]
}

func (b *batch) consume(n int) {
	for n > 0 && b.next < len(b.pieces) && !b.pieces[b.next].fromPipe {
		left := len(b.bytes(b.next)) - b.skip
		if n < left {
			b.skip += n
			return
		}
		n -= left
		b.next++
		b.skip = 0
	}
}
