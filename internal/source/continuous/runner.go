package continuous

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// runner probes one entry with a goroutine, a timer and a prober.Session:
// the engine of every entry the epoll loop does not take (HTTP and TLS
// chains, a custom dialer; any protocol a Session speaks).
type runner struct {
	*recorder
	opts   prober.Options
	sched  schedule
	moment moments
	cancel context.CancelFunc
	done   chan struct{}
	// conn identifies the connection a probe ran on: one more for every
	// Open, and for every connection a Session opened again (it had
	// opened sessionConns so far).
	conn, sessionConns uint64
	traces             traceSchedule
	// running counts the manager's runners that run (their batches).
	running *atomic.Int64
}

func newRunner(rec *recorder, opts prober.Options, sched schedule, moment moments, running *atomic.Int64) *runner {
	// Each result is recorded before the next probe: renewed in place.
	opts.Logger, opts.ReuseResults = rec.log, true
	return &runner{recorder: rec, opts: opts, sched: sched, moment: moment, done: make(chan struct{}), running: running}
}

func (r *runner) start(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.run(ctx)
	}()
}

func (r *runner) stop() { r.cancel() }

func (r *runner) wait() { <-r.done }

// run keeps the chain open and probes it at its slots until ctx ends.
func (r *runner) run(ctx context.Context) {
	r.running.Add(1)
	defer r.running.Add(-1)
	now := time.Now()
	slot := r.sched.first(r.moment(now))
	timer := time.NewTimer(r.until(now, slot, false))
	defer timer.Stop()
	var s *prober.Session
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		r.sched.take(slot)
		opened := s == nil
		switch {
		case opened:
			s = r.open(ctx)
		case !r.probe(ctx, s, time.Duration(slot-r.moment(time.Now()))):
			s.Close()
			s = nil
		default:
			r.traceStep(ctx, s)
		}
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if opened && s == nil {
			// (not next first: it resets the backoff, which then never
			// doubled)
			slot = r.sched.retry(r.moment(now))
		} else {
			slot = r.sched.next(r.moment(now))
		}
		timer.Reset(r.until(now, slot, s != nil))
	}
}

// open opens the chain and records its warm-up; nil when it failed.
func (r *runner) open(ctx context.Context) *prober.Session {
	s, warm := prober.Open(ctx, r.opts)
	if ctx.Err() != nil {
		// Stopping (a reload, the exporter's end) broke the warm-up, not
		// the chain: nothing to record.
		if s != nil {
			s.Close()
		}
		return nil
	}
	r.conn++
	r.traces.reopened()
	if s != nil {
		r.sessionConns = s.Connections()
	}
	r.observe(warm, true, r.conn, time.Now())
	return s
}

// probe sends a probe early before its slot (its batch; Turn.Early) and
// records it, and reads the hops' context when it is out of its SLA;
// false when the chain broke (and the session ends: a STAMP session
// survives a lost packet).
func (r *runner) probe(ctx context.Context, s *prober.Session, early time.Duration) bool {
	res := s.ProbeEarly(ctx, early)
	if ctx.Err() != nil {
		return false
	}
	if c := s.Connections(); c != r.sessionConns {
		// The session opened the connection again: its counters start
		// from zero.
		r.sessionConns = c
		r.conn++
	}
	now := time.Now()
	r.observe(res, false, r.conn, now)
	if r.contextWanted(res, now) {
		r.readContext(ctx, res)
	}
	return res.Failure == nil || s.Survives(res)
}

// until is the time from now to when the probe of slot goes out: at the
// start of its batch. Runners' slots are moved back to a grid of the
// loop's early margin (earlyMargin, over the runners that run), the same
// instants for every runner, so that the runtime's timers of a batch fire
// in one wake-up of the process instead of one each; the slot is taken
// when its timer fires (sched.take), as the loop takes an early probe's.
// A connection opens at its slot, not early (batch false), as on the
// loop: its warm-up is the first use its idle time counts from (stale).
func (r *runner) until(now time.Time, slot int64, batch bool) time.Duration {
	if !batch {
		return time.Duration(slot - r.moment(now))
	}
	g := max(earlyMargin(time.Duration(r.sched.interval), int(r.running.Load())), 1)
	return time.Duration(slot - slot%g - r.moment(now))
}
