package continuous

import (
	"hash/fnv"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
)

// maxBackoff bounds the pause before reconnecting a broken chain.
const maxBackoff = 30 * time.Second

// schedule is when an entry probes: on a fixed grid, one slot per
// interval at the entry's own phase, so that thousands of entries keep
// their probes spread evenly over the interval whatever each probe takes
// and however often their chains break (a reconnect waits for a slot
// too). Times are nanoseconds on the process's monotonic clock
// (monotonicSince).
type schedule struct {
	// origin is the grid's first slot; every slot is origin + k·interval.
	origin   int64
	interval int64
	backoff  time.Duration
	// taken is the latest slot a probe (or an open) was sent for: the
	// next one comes after it, even when it was sent a little early.
	taken int64
}

// phase is where in its interval an entry probes: a hash of its target
// and module, so that an entry keeps its place over reloads and entries
// spread over the interval.
func phase(e config.Continuous) time.Duration {
	h := fnv.New64a()
	_, _ = h.Write([]byte(e.Target + "\x00" + e.Module))
	return time.Duration(h.Sum64() % uint64(e.Interval))
}

// newSchedule is the grid of entry e, whose first slot is at its phase
// after epoch.
func newSchedule(e config.Continuous, epoch int64) schedule {
	return schedule{origin: epoch + int64(phase(e)), interval: int64(e.Interval)}
}

// first is the entry's first slot at or after now.
func (s *schedule) first(now int64) int64 { return s.atOrAfter(now) }

// take records that the probe of slot went out.
func (s *schedule) take(slot int64) { s.taken = max(s.taken, slot) }

// next is the slot after a probe (or a connection's warm-up) that ended
// at now: the first one after it and after the slot it was sent for.
func (s *schedule) next(now int64) int64 {
	s.backoff = 0
	return s.atOrAfter(max(now, s.taken) + 1)
}

// retry is the slot after a failed attempt to open the chain at now: the
// pause doubles from one interval up to maxBackoff.
func (s *schedule) retry(now int64) int64 {
	s.backoff = min(max(2*s.backoff, time.Duration(s.interval)), maxBackoff)
	return s.atOrAfter(now + int64(s.backoff))
}

// atOrAfter is the first slot at or after t.
func (s *schedule) atOrAfter(t int64) int64 {
	if t <= s.origin {
		return s.origin
	}
	k := (t - s.origin + s.interval - 1) / s.interval
	return s.origin + k*s.interval
}
