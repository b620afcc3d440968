// Package clock gives every hop two clocks: a monotonic one for the
// durations the segment arithmetic needs, and the wall clock with its
// kernel-reported synchronisation state for one-way delays.
//
// Layering (internal/architecture_test.go): floor 0; it imports nothing of
// the project.
package clock

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Sync is the clock discipline state as the kernel reports it.
type Sync struct {
	// Synced is false when the kernel sets STA_UNSYNC (no NTP/PTP daemon
	// disciplines the clock); one-way delays need both ends synced.
	Synced         bool
	EstErrorMicros uint32
	MaxErrorMicros uint32
}

// Clock is what a hop stamps probes with. Tests inject skewed clocks.
type Clock interface {
	// Monotonic returns nanoseconds since an arbitrary origin.
	Monotonic() int64
	// Wall returns Unix nanoseconds.
	Wall() int64
	// Sync returns the synchronisation state of the wall clock.
	Sync() Sync
}

// System is the host's clock. Its Sync is read with adjtimex(2) at most
// once per syncTTL, so that probes do not pay a syscall each.
type System struct {
	start time.Time

	mu       sync.Mutex
	syncAt   int64
	syncLast Sync
}

const syncTTL = int64(time.Second)

// NewSystem returns the host clock.
func NewSystem() *System { return &System{start: time.Now(), syncAt: -syncTTL} }

// Monotonic implements Clock.
func (s *System) Monotonic() int64 { return int64(time.Since(s.start)) }

// Wall implements Clock.
func (s *System) Wall() int64 { return time.Now().UnixNano() }

// Sync implements Clock.
func (s *System) Sync() Sync {
	now := s.Monotonic()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now-s.syncAt >= syncTTL {
		s.syncLast = ReadKernelSync()
		s.syncAt = now
	}
	return s.syncLast
}

// ReadKernelSync asks the kernel, without changing anything (modes 0).
func ReadKernelSync() Sync {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return Sync{}
	}
	return Sync{
		Synced:         state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0,
		EstErrorMicros: clampMicros(tx.Esterror),
		MaxErrorMicros: clampMicros(tx.Maxerror),
	}
}

func clampMicros(v int64) uint32 {
	if v < 0 {
		return 0
	}
	if v > int64(^uint32(0)) {
		return ^uint32(0)
	}
	return uint32(v)
}

// Skewed shifts another clock by a fixed offset and may claim a sync
// state; tests use it to prove that segment rtts do not depend on how far
// apart the hops' clocks are.
type Skewed struct {
	Base   Clock
	Offset time.Duration
	// State, when not nil, replaces the base clock's sync state.
	State *Sync
}

// Monotonic implements Clock.
func (s Skewed) Monotonic() int64 { return s.Base.Monotonic() + int64(s.Offset) }

// Wall implements Clock.
func (s Skewed) Wall() int64 { return s.Base.Wall() + int64(s.Offset) }

// Sync implements Clock.
func (s Skewed) Sync() Sync {
	if s.State != nil {
		return *s.State
	}
	return s.Base.Sync()
}
