package relay

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// Traces of the segment after this hop (the path extension: frame's
// ProbeTrace and ProbePath). A request that asks for one starts a trace of
// the session's own downstream connection in a goroutine, off the probe
// path: the request is forwarded at once, and every other frame of every
// session goes on as before. A request that asks for the path gets it in
// this hop's record on the way back; its reply waits for a trace still
// running, within the request's budget (the source sends such requests
// after its measured probes, or after the trace's time). A trace only
// ever probes this hop's own next hop, on the connection it already has:
// the bounds are the Tracer's (one trace per far end at a time, a rate of
// probe packets for the whole process) and the options (max TTL, probes
// per TTL).

// TraceMetrics receives what traces do; collector.Traces implements it.
type TraceMetrics interface {
	// Traced counts a trace that ended, by method and status, with the
	// probe packets it sent.
	Traced(p *frame.Path)
}

// traceJob is one trace of a session's downstream connection.
type traceJob struct {
	done chan struct{}
	// path is set before done is closed.
	path *frame.Path
	// wake, when set, resumes a reply held for this trace (the epoll
	// engine posts into its loop); called after done is closed.
	wake func()
}

func (j *traceJob) finished() bool {
	select {
	case <-j.done:
		return true
	default:
		return false
	}
}

// traceFraction is the share of a request's budget a trace may take: the
// rest carries the reply back, as the hops after this one finish theirs
// earlier (each gets 7/8 of its upstream's budget).
const traceFraction = 3.0 / 4

// startTrace starts a trace of the downstream connection for a request
// that asked for one, received at tIn with budget; one trace per session
// at a time (a request that finds one running shares it).
func (h *hopState) startTrace(tIn int64, budget time.Duration) {
	if cur := h.traceJob.Load(); cur != nil && !cur.finished() {
		return
	}
	job := &traceJob{done: make(chan struct{}), wake: h.traceWake}
	h.traceJob.Store(job)
	s := h.s
	if s.cfg.Tracer == nil {
		h.finishTrace(job, frame.NoPath(frame.PathDisabled, s.cfg.Name+" does not trace (--no-trace.enabled)"))
		return
	}
	var target trace.Target
	err := fmt.Errorf("trace: %w: no downstream connection", trace.ErrNotTCP)
	if s.stampNext != nil {
		err = fmt.Errorf("trace: %s's next hop is a STAMP reflector (UDP): traces follow a chain's TCP connections", s.cfg.Name)
	}
	if h.downTarget != nil {
		target, err = h.downTarget()
	}
	if err != nil {
		h.finishTrace(job, trace.WireError(err))
		return
	}
	until := time.Duration(float64(budget)*traceFraction) - time.Duration(h.now()-tIn)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), until)
		defer cancel()
		res, err := s.cfg.Tracer.TraceTarget(ctx, target, s.cfg.TraceOptions)
		p := trace.WireError(fmt.Errorf("trace to %v: %w", target.Remote(), err))
		if err == nil {
			p = res.Wire()
		}
		h.finishTrace(job, p)
	}()
}

// finishTrace counts a trace, publishes its path and resumes a reply
// that waits for it: counted first, so that a reply carrying the path is
// never ahead of the metrics that count it.
func (h *hopState) finishTrace(job *traceJob, p *frame.Path) {
	if m := h.s.cfg.TraceMetrics; m != nil {
		m.Traced(p)
	}
	job.path = p
	close(job.done)
	if job.wake != nil {
		job.wake()
	}
}

// tracing reports whether a reply asking for the path must wait for the
// session's trace: one is running and the wait for the reply is not over.
func (h *hopState) tracing(e *inflight) bool {
	if e.pflags&frame.ProbePath == 0 {
		return false
	}
	job := h.traceJob.Load()
	return job != nil && !job.finished() && h.now() < e.waitUntil
}

// pathFor is the path section of a reply whose request asked for it.
func (h *hopState) pathFor(e *inflight) *frame.Path {
	if e.pflags&frame.ProbePath == 0 {
		return nil
	}
	job := h.traceJob.Load()
	switch {
	case h.s.cfg.Tracer == nil:
		return frame.NoPath(frame.PathDisabled, h.s.cfg.Name+" does not trace (--no-trace.enabled)")
	case job == nil:
		return frame.NoPath(frame.PathNotStarted, "no trace was asked for on this connection")
	case !job.finished():
		return frame.NoPath(frame.PathRunning, "the trace had not ended within the request's budget")
	}
	return job.path
}

// traceFlags starts what a request forwarded downstream asks of this hop.
func (h *hopState) traceFlags(e *inflight) {
	if e.pflags&frame.ProbeTrace != 0 {
		h.startTrace(e.tIn, e.budget)
	}
}

// inspectConn is the Target of a goroutine engine's downstream connection.
func inspectConn(c net.Conn) func() (trace.Target, error) {
	return func() (trace.Target, error) {
		tc := trace.ConnOf(c)
		if tc == nil {
			return trace.Target{}, fmt.Errorf("trace: %w: %T has no descriptor", trace.ErrNotTCP, c)
		}
		return trace.Inspect(tc)
	}
}

// traceState is a session's trace, shared by its engine's goroutines.
type traceState struct {
	traceJob atomic.Pointer[traceJob]
	// downTarget inspects the downstream connection (set when it opens).
	downTarget func() (trace.Target, error)
	// traceWake resumes a held reply (epoll engine); nil for goroutines.
	traceWake func()
}

// waitTrace holds a reply (goroutine engine) until the session's trace
// ends or the entry's wait is over.
func (f *forwarder) waitTrace(e *inflight) {
	job := f.traceJob.Load()
	if job == nil {
		return
	}
	timer := time.NewTimer(time.Duration(e.waitUntil - f.now()))
	defer timer.Stop()
	select {
	case <-job.done:
	case <-timer.C:
	case <-f.ctx.Done():
	}
}
