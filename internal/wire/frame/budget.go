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
//
// The budget is held by bytes that arrived, from connections that have
// proven themselves, never by claims: a Reader grows its buffer with the
// bytes of a frame that arrived (a header's length claims nothing), and
// the readers of connections that have not yet delivered a verified frame
// (Reader.Prove) share only part of the budget, so that unverified bytes
// cannot take what proven connections need.
type BufferBudget struct {
	limit int64
	used  atomic.Int64
	// unprovenLimit bounds what unproven readers hold together, within
	// limit; unprovenUsed is what they hold.
	unprovenLimit int64
	unprovenUsed  atomic.Int64
}

// DefaultBufferBudget is a process's default budget for large frames: 16
// streams of 16 MiB blocks in flight through one hop.
const DefaultBufferBudget = 512 << 20

// NewBufferBudget returns a budget of limit bytes for frames of at most
// maxFrameBytes. Connections that have not proven themselves share half
// of it, but at least the buffer of one largest frame, so that a source's
// first frame (which proves it) always has room when nothing else holds
// the budget.
func NewBufferBudget(limit int64, maxFrameBytes int) *BufferBudget {
	share := min(max(limit/2, int64(bufSize(maxFrameBytes))), limit)
	return &BufferBudget{limit: limit, unprovenLimit: share}
}

// ErrBudget is a large frame refused because the budget is in use.
var ErrBudget = peer.NewError(peer.ReasonOverloaded, "read buffer budget exhausted")

// reserve adds n to used unless that exceeds limit; it returns what was
// in use and whether n fit.
func reserve(used *atomic.Int64, limit int64, n int) (int64, bool) {
	for {
		cur := used.Load()
		if cur+int64(n) > limit {
			return cur, false
		}
		if used.CompareAndSwap(cur, cur+int64(n)) {
			return cur, true
		}
	}
}

// acquire takes n bytes for a reader; unproven readers take them from
// their share too.
func (b *BufferBudget) acquire(n int, proven bool) error {
	if b == nil || n <= 0 {
		return nil
	}
	if !proven {
		if cur, ok := reserve(&b.unprovenUsed, b.unprovenLimit, n); !ok {
			return fmt.Errorf("%w: a %d-byte buffer does not fit the share of connections that have not yet sent a valid frame, %d of %d bytes in use by them",
				ErrBudget, n, cur, b.unprovenLimit)
		}
	}
	if cur, ok := reserve(&b.used, b.limit, n); !ok {
		if !proven {
			b.unprovenUsed.Add(-int64(n))
		}
		return fmt.Errorf("%w: a %d-byte buffer does not fit, %d of %d bytes in use by other connections", ErrBudget, n, cur, b.limit)
	}
	return nil
}

func (b *BufferBudget) release(n int, proven bool) {
	if b == nil || n <= 0 {
		return
	}
	if !proven {
		b.unprovenUsed.Add(-int64(n))
	}
	b.used.Add(-int64(n))
}

// promote moves n bytes of a reader that just proved itself out of the
// unproven share.
func (b *BufferBudget) promote(n int) {
	if b != nil && n > 0 {
		b.unprovenUsed.Add(-int64(n))
	}
}

// Used is the number of bytes held now.
func (b *BufferBudget) Used() int64 { return b.used.Load() }

// UnprovenUsed is the part of Used held by connections that have not yet
// proven themselves.
func (b *BufferBudget) UnprovenUsed() int64 { return b.unprovenUsed.Load() }

// Limit is the budget's size in bytes.
func (b *BufferBudget) Limit() int64 { return b.limit }

// UnprovenLimit is the share of the budget connections that have not yet
// proven themselves may hold together.
func (b *BufferBudget) UnprovenLimit() int64 { return b.unprovenLimit }
