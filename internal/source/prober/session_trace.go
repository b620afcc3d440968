package prober

import (
	"context"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// Traces of a continuous session: measured probes follow on the same
// connection, so nothing may wait for a trace. TraceStart asks every
// relay to start its trace of the next hop (ProbeTrace alone: the reply
// does not wait) and traces the source's own segment in the background;
// TracePaths, sent once the traces had their time (the session's
// timeout), asks for the paths (ProbePath: the relays' traces have ended,
// so no reply waits either).

// TraceStart starts the traces of the chain's segments on the session's
// connections; false when the session does not trace (no TraceOptions,
// or an HTTP chain) or the request failed.
func (s *Session) TraceStart(ctx context.Context) bool {
	rp, ok := s.p.(*session)
	if !ok || s.o.Trace == nil {
		return false
	}
	own := make(chan *frame.Path, 1)
	s.ownTrace = own
	go func() { own <- rp.traceOwn(ctx) }()
	s.seq++
	smp := rp.probe(ctx, s.seq, frame.ProbeTrace)
	if smp.Failure != nil {
		s.o.Logger.Debug("trace request failed", "err", smp.Failure.Error())
		return false
	}
	return true
}

// TracePaths collects the paths of the traces TraceStart began: a result
// whose segments carry them (and no measured figure); nil when no trace
// was started on this connection.
func (s *Session) TracePaths(ctx context.Context) *Result {
	rp, ok := s.p.(*session)
	if !ok || s.ownTrace == nil {
		return nil
	}
	s.seq++
	smp := rp.probe(ctx, s.seq, frame.ProbePath)
	var own *frame.Path
	select {
	case own = <-s.ownTrace:
	case <-ctx.Done():
		own = frame.NoPath(frame.PathDeadline, "the source's own trace did not end")
	}
	s.ownTrace = nil
	return pathsResult(&s.o, s.p, smp, own)
}

// pathsResult is the result of a paths request's reply smp and of the
// source's own trace: segments with their paths, and no measured figure.
func pathsResult(o *Options, p built, smp Sample, own *frame.Path) *Result {
	smp.Warmup = true // not a measure: its segments have no rtt
	res := newResult(o)
	res.build(p, []Sample{smp}, o.Logger)
	res.addPaths(smp, own, o)
	return res
}
