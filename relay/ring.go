package relay

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// inflight is what a hop remembers about one request between sending it on
// and sending its reply back: everything its record needs, so that it can
// answer on its own when the downstream fails.
type inflight struct {
	seq    uint64
	kind   frame.Kind // request kind
	pflags uint16
	tIn    int64 // monotonic, request-in (the kernel's receipt when kernelIn)
	// waitIn is request-in → the read that returned the request.
	waitIn   time.Duration
	kernelIn bool
	tOut     int64 // monotonic, request-out
	wallIn   int64
	sync     clock.Sync
	connect  int64 // handshake time when this frame caused the dial
	dialed   bool
	// budget is how long this hop may take to answer the request.
	budget time.Duration
	// waitUntil is the monotonic time at which this hop stops waiting for
	// the reply and answers with a timeout itself.
	waitUntil int64
	// local, when set, is answered by this hop itself instead of from the
	// downstream reply (loop, too many hops, failed dial).
	local *localAnswer
}

// localAnswer is an error this hop reports instead of forwarding.
type localAnswer struct {
	reason  peer.Reason
	side    frame.Side
	peer    string
	message string
	// fatal ends the session after the answer (a frame that cannot be
	// trusted leaves the stream position unknown).
	fatal bool
	// errorFrame answers with a KindError frame instead of a reply
	// (the request could not be parsed, so there is nothing to reply to).
	errorFrame bool
}

// ring hands inflight entries from the forward goroutine (producer) to the
// return goroutine (consumer) in order. Entries stay writable by the
// producer until published, so request-out is stamped right before the
// write, after any wait for room.
type ring struct {
	entries  []inflight
	mask     uint64
	head     atomic.Uint64 // next entry to consume; written by the consumer
	tail     atomic.Uint64 // next entry to publish; written by the producer
	closed   atomic.Bool
	notEmpty chan struct{}
	notFull  chan struct{}
}

func newRing(size int) *ring {
	n := 1
	for n < size {
		n <<= 1
	}
	return &ring{
		entries:  make([]inflight, n),
		mask:     uint64(n - 1),
		notEmpty: make(chan struct{}, 1),
		notFull:  make(chan struct{}, 1),
	}
}

// free is the number of entries the producer may fill.
func (r *ring) free() int { return len(r.entries) - int(r.tail.Load()-r.head.Load()) }

// empty reports whether every published entry has been consumed.
func (r *ring) empty() bool { return r.tail.Load() == r.head.Load() }

// slot returns the k-th unpublished entry for the producer to fill.
func (r *ring) slot(k int) *inflight { return &r.entries[(r.tail.Load()+uint64(k))&r.mask] }

// publish makes the first n filled slots visible to the consumer. It does
// not wake a consumer blocked in peek: call notify for that, after the
// write, so the wake-up overlaps the downstream round trip instead of
// delaying the request.
func (r *ring) publish(n int) {
	if n > 0 {
		r.tail.Add(uint64(n))
	}
}

// notify wakes a consumer blocked in peek.
func (r *ring) notify() { signal(r.notEmpty) }

// waitFree blocks the producer until an entry is free.
func (r *ring) waitFree(ctx context.Context) bool {
	for r.free() == 0 {
		select {
		case <-r.notFull:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// close tells the consumer that nothing more will be published.
func (r *ring) close() {
	r.closed.Store(true)
	signal(r.notEmpty)
}

// peek blocks until an entry is published and returns it without consuming
// it; it returns nil once the ring is closed and drained.
func (r *ring) peek(ctx context.Context) *inflight {
	for {
		head := r.head.Load()
		if r.tail.Load() != head {
			return &r.entries[head&r.mask]
		}
		if r.closed.Load() {
			if r.tail.Load() != head {
				continue
			}
			return nil
		}
		select {
		case <-r.notEmpty:
		case <-ctx.Done():
			return nil
		}
	}
}

// peekReady returns the next published entry without blocking, or nil.
func (r *ring) peekReady() *inflight {
	head := r.head.Load()
	if r.tail.Load() == head {
		return nil
	}
	return &r.entries[head&r.mask]
}

// pop consumes the entry returned by peek.
func (r *ring) pop() {
	r.head.Add(1)
	signal(r.notFull)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
