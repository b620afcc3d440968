package frame

import (
	"fmt"
	"sync"
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
//
// Nor can unverified bytes keep a newer connection out: when a buffer
// does not fit (the unproven share, or the whole budget, is full), the
// unproven holders that have gone longest without receiving a byte are
// evicted for it, one by one until it fits, as the connection limit
// evicts the oldest unproven connection. An evicted reader's charge
// leaves the budget at once, its next read fails with ErrEvicted
// (overloaded), and its owner is told to end the connection
// (Reader.OnEvict); the owner releases the reader (Reader.Release) as
// soon as it has answered, before it drains the connection, so that the
// buffer leaves memory as its charge leaves the budget. A legitimate client's first large frame, which comes on a new,
// still unproven connection and arrives without pause, then finds room
// beside any number of unproven holders: those that hold bytes without
// sending more (the lock the budget must not give) yield first, and one
// that keeps sending completes its frame, which proves it or ends it.
type BufferBudget struct {
	limit int64
	used  atomic.Int64
	// unprovenLimit bounds what unproven readers hold together, within
	// limit; unprovenUsed is what they hold. It and holders, the unproven
	// readers that hold part of the budget, change under mu.
	unprovenLimit int64
	unprovenUsed  atomic.Int64
	mu            sync.Mutex
	holders       holderList
	// reads orders the unproven holders' latest reads (holding.lastRead).
	reads atomic.Uint64
}

// DefaultBufferBudget is a process's default budget for large frames: 16
// streams of 16 MiB blocks in flight through one hop.
const DefaultBufferBudget = 512 << 20

// NewBufferBudget returns a budget of limit bytes for frames of at most
// maxFrameBytes. Connections that have not proven themselves share half
// of it, but at least the buffer of one largest frame, so that a source's
// first frame (which proves it) always has room once older unproven
// holders are evicted.
func NewBufferBudget(limit int64, maxFrameBytes int) *BufferBudget {
	share := min(max(limit/2, int64(bufSize(maxFrameBytes))), limit)
	return &BufferBudget{limit: limit, unprovenLimit: share}
}

// ErrBudget is a large frame refused because the budget is in use.
var ErrBudget = peer.NewError(peer.ReasonOverloaded, "read buffer budget exhausted")

// ErrEvicted is what a reader evicted from the budget returns: a newer
// connection took its buffer before it sent a valid frame.
var ErrEvicted = fmt.Errorf("%w: this connection had not sent a valid frame yet, and had gone longest without sending a byte of those holding part of the budget when another connection needed it", ErrBudget)

// Evictee is told that the budget evicted its reader: it ends the
// reader's connection soon (with ErrEvicted's overloaded answer), without
// blocking and without calling the budget, from whatever goroutine
// claimed the room.
type Evictee interface {
	BufferEvicted()
}

// holding is a Reader's place among the budget's unproven holders.
type holding struct {
	charge     int // of the unproven share; under BufferBudget.mu
	prev, next *Reader
	listed     bool
	evicted    atomic.Bool
	// lastRead is BufferBudget.reads at the reader's latest read that
	// brought bytes: the smallest is the holder idle longest.
	lastRead atomic.Uint64
}

// holderList is the unproven readers holding part of the budget.
type holderList struct{ head, tail *Reader }

func (l *holderList) push(r *Reader) {
	h := &r.hold
	h.prev, h.next, h.listed = l.tail, nil, true
	if l.tail != nil {
		l.tail.hold.next = r
	} else {
		l.head = r
	}
	l.tail = r
}

func (l *holderList) remove(r *Reader) {
	h := &r.hold
	if !h.listed {
		return
	}
	if h.prev != nil {
		h.prev.hold.next = h.next
	} else {
		l.head = h.next
	}
	if h.next != nil {
		h.next.hold.prev = h.prev
	} else {
		l.tail = h.prev
	}
	h.prev, h.next, h.listed = nil, nil, false
}

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

// acquire takes n more bytes for r's buffer. A proven reader takes them
// without a lock while they fit; anything else is decided under mu, where
// unproven holders are evicted, idlest first, for a claim that does not
// fit and that their room would fit.
func (b *BufferBudget) acquire(r *Reader, n int) error {
	if b == nil || n <= 0 {
		return nil
	}
	if r.proven {
		if _, ok := reserve(&b.used, b.limit, n); ok {
			return nil
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !r.proven && r.hold.evicted.Load() {
		return ErrEvicted
	}
	for {
		err := b.fit(r, n)
		if err == nil {
			break
		}
		if !b.evictable(r, n) || !b.evictIdlest(r) {
			return err
		}
	}
	if !r.proven {
		r.hold.charge += n
		if !r.hold.listed {
			b.holders.push(r)
		}
		b.touch(r)
	}
	return nil
}

// touch records that bytes arrived for the unproven holder r.
func (b *BufferBudget) touch(r *Reader) {
	if b != nil {
		r.hold.lastRead.Store(b.reads.Add(1))
	}
}

// fit takes n bytes for r if they fit; under mu.
func (b *BufferBudget) fit(r *Reader, n int) error {
	if !r.proven {
		if cur := b.unprovenUsed.Load(); cur+int64(n) > b.unprovenLimit {
			return fmt.Errorf("%w: a %d-byte buffer does not fit the share of connections that have not yet sent a valid frame, %d of %d bytes in use by them",
				ErrBudget, n, cur, b.unprovenLimit)
		}
	}
	if cur, ok := reserve(&b.used, b.limit, n); !ok {
		return fmt.Errorf("%w: a %d-byte buffer does not fit, %d of %d bytes in use by other connections", ErrBudget, n, cur, b.limit)
	}
	if !r.proven {
		b.unprovenUsed.Add(int64(n))
	}
	return nil
}

// evictable reports whether evicting every unproven holder but r would
// make room for n more bytes of r; under mu. Holders are evicted only for
// a claim they can make room for.
func (b *BufferBudget) evictable(r *Reader, n int) bool {
	others := b.unprovenUsed.Load() - int64(r.hold.charge)
	if b.used.Load()+int64(n)-b.limit > others {
		return false
	}
	return r.proven || b.unprovenUsed.Load()+int64(n)-b.unprovenLimit <= others
}

// evictIdlest takes the charge of the unproven holder other than
// claimant that has gone longest without receiving a byte out of the
// budget, and tells its owner; false when there is none. Under mu.
func (b *BufferBudget) evictIdlest(claimant *Reader) bool {
	var victim *Reader
	for h := b.holders.head; h != nil; h = h.hold.next {
		if h != claimant && (victim == nil || h.hold.lastRead.Load() < victim.hold.lastRead.Load()) {
			victim = h
		}
	}
	if victim == nil {
		return false
	}
	h := &victim.hold
	b.holders.remove(victim)
	b.unprovenUsed.Add(-int64(h.charge))
	b.used.Add(-int64(h.charge))
	h.charge = 0
	h.evicted.Store(true)
	victim.wake()
	return true
}

// release gives n bytes of r's buffer back.
func (b *BufferBudget) release(r *Reader, n int) {
	if b == nil || n <= 0 {
		return
	}
	if r.proven {
		b.used.Add(-int64(n))
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if r.hold.evicted.Load() {
		return // its charge left with the eviction
	}
	r.hold.charge -= n
	b.unprovenUsed.Add(-int64(n))
	b.used.Add(-int64(n))
	if r.hold.charge <= 0 {
		b.holders.remove(r)
	}
}

// promote moves what r holds out of the unproven share: r just proved
// itself. False when r was evicted meanwhile, and holds nothing.
func (b *BufferBudget) promote(r *Reader) bool {
	if b == nil || r.charged+r.sinkCharged == 0 {
		return true // never listed: nothing to move
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if r.hold.evicted.Load() {
		return false
	}
	b.unprovenUsed.Add(-int64(r.hold.charge))
	r.hold.charge = 0
	b.holders.remove(r)
	return true
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
