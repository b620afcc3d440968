package relay

import (
	"net"
	"time"
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
	n, err := b.bufs.WriteTo(w)
	b.reset()
	return n, err
}
