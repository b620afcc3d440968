package frame

import (
	"fmt"
	"sync/atomic"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// BufferBudget bounds the read buffers over 64 KiB (large frames: stream
// blocks up to 16 MiB) that all connections of a process hold together,
// so that memory is bounded by the budget, not by connections × the
// largest frame. Buffers up to 64 KiB, what probes need, are not counted.
type BufferBudget struct {
	limit int64
	used  atomic.Int64
}

// DefaultBufferBudget is a process's default budget for large frames: 16
// streams of 16 MiB blocks in flight through one hop.
const DefaultBufferBudget = 512 << 20

// NewBufferBudget returns a budget of limit bytes.
func NewBufferBudget(limit int64) *BufferBudget { return &BufferBudget{limit: limit} }

// ErrBudget is a large frame refused because the budget is in use.
var ErrBudget = peer.NewError(peer.ReasonOverloaded, "read buffer budget exhausted")

func (b *BufferBudget) acquire(n int) error {
	if b == nil {
		return nil
	}
	for {
		used := b.used.Load()
		if used+int64(n) > b.limit {
			return fmt.Errorf("%w: a %d-byte buffer does not fit, %d of %d bytes in use by other connections", ErrBudget, n, used, b.limit)
		}
		if b.used.CompareAndSwap(used, used+int64(n)) {
			return nil
		}
	}
}

func (b *BufferBudget) release(n int) {
	if b != nil && n > 0 {
		b.used.Add(-int64(n))
	}
}

// Used is the number of bytes held now.
func (b *BufferBudget) Used() int64 { return b.used.Load() }

// Limit is the budget's size in bytes.
func (b *BufferBudget) Limit() int64 { return b.limit }
