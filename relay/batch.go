package relay

import (
	"errors"
	"net"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
)

// batch collects the pieces of the frames one read produced and writes
// them with a single writev: pieces point into the connection's read buffer
// (the frames as received, rewritten in place) and into the batch's own
// scratch (records, hop IDs, signatures). No frame data is copied.
type batch struct {
	pieces  []piece
	scratch []byte
	bufs    net.Buffers
	store   [][]byte
	// For non-blocking writes: the first piece not yet fully written, and
	// how much of it was.
	next, skip int
	iov        []unix.Iovec
}

// piece is either a slice of the read buffer (data != nil) or a range of
// scratch, kept as offsets because scratch may grow while the batch fills.
type piece struct {
	data   []byte
	off, n int
}

func (b *batch) reset() {
	b.pieces = b.pieces[:0]
	b.scratch = b.scratch[:0]
	b.next, b.skip = 0, 0
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
		iov := b.iov[:0]
		for i := b.next; i < len(b.pieces) && len(iov) < maxIovecs; i++ {
			p := b.bytes(i)
			if i == b.next {
				p = p[b.skip:]
			}
			if len(p) == 0 {
				continue
			}
			v := unix.Iovec{Base: &p[0]}
			v.SetLen(len(p))
			iov = append(iov, v)
		}
		b.iov = iov
		if len(iov) == 0 {
			break
		}
		// Raw: a non-blocking write on the loop's thread (rawsys.go).
		n, _, errno := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		switch errno {
		case 0:
		case unix.EAGAIN:
			return false, nil
		case unix.EINTR:
			continue
		default:
			return false, errno
		}
		b.consume(int(n))
	}
	b.reset()
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
	for n > 0 && b.next < len(b.pieces) {
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
