package prober

import (
	"context"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// Session keeps a chain open for continuous probing: one connection to
// the first hop (relay or HTTP proxy), a warm-up when it opens, then one
// probe per call, each summarised on its own. Not safe for concurrent use.
type Session struct {
	o   Options
	p   protocol
	seq uint64
	// used is when the connection last carried a probe.
	used time.Time
	// ownTrace delivers the source's own trace of a TraceStart.
	ownTrace chan *frame.Path
}

// staleAfter is how long a session's connection may sit idle before a
// probe that finds it closed is sent again on a new connection: first
// hops close connections idle for longer than their timeout (a relay's
// --timeout, 10 s by default; an HTTP proxy's keep-alive timeout), and an
// interval longer than that must not make every probe fail.
const staleAfter = time.Second

// Open connects to the chain and sends the warm-up probe. The result
// holds the warm-up's connect times; on failure the session is nil and
// the result says where the chain broke. Options.Count and Interval are
// not used.
func Open(ctx context.Context, o Options) (*Session, *Result) {
	o.defaults()
	o.Count = max(o.Count, 1)
	s := &Session{o: o}
	res := newResult(&s.o)
	warm, fail := s.open(ctx)
	if fail != nil {
		res.setFailure(fail)
		return nil, res
	}
	res.build(s.p, []Sample{warm}, s.o.Logger)
	if warm.Failure != nil {
		s.Close()
		return nil, res
	}
	return s, res
}

// open dials the first hop and sends the warm-up on the new connection.
func (s *Session) open(ctx context.Context) (Sample, *Failure) {
	p, fail := dial(ctx, &s.o)
	if fail != nil {
		return Sample{}, fail
	}
	s.p = p
	warm := p.probe(ctx, 0, 0)
	warm.Warmup = true
	s.used = time.Now()
	return warm, nil
}

// Probe sends one probe and summarises it alone. When the connection sat
// idle for staleAfter or more and the first hop closed it before
// answering, the probe goes again on a new connection, after its warm-up;
// what that finds is the probe's result.
func (s *Session) Probe(ctx context.Context) *Result {
	s.seq++
	start := time.Now()
	res := newResult(&s.o)
	smp := s.p.probe(ctx, s.seq, 0)
	if start.Sub(s.used) >= staleAfter && closedBeforeReply(smp) {
		s.o.Logger.Debug("the first hop closed the idle connection: opening another", "idle", start.Sub(s.used).Round(time.Millisecond), "err", smp.Failure.Message)
		smp = s.reopen(ctx)
	}
	s.used = time.Now()
	res.build(s.p, []Sample{smp}, s.o.Logger)
	res.Duration = time.Since(start)
	return res
}

// closedBeforeReply says whether the first hop closed or reset the
// connection before anything came back.
func closedBeforeReply(smp Sample) bool {
	f := smp.Failure
	return f != nil && len(smp.Records) <= 1 && f.FromIndex == 0 && (f.Reason == peer.ReasonClosed || f.Reason == peer.ReasonReset)
}

// reopen replaces the connection and sends the probe of this call on the
// new one, after its warm-up; a failed dial or warm-up is the probe's
// failure.
func (s *Session) reopen(ctx context.Context) Sample {
	s.ownTrace = nil // a trace of the old connections
	old := s.p
	old.close()
	warm, fail := s.open(ctx)
	if fail != nil {
		s.p = closedProtocol{old}
		return Sample{Seq: s.seq, Failure: fail}
	}
	if warm.Failure != nil {
		return warm
	}
	return s.p.probe(ctx, s.seq, 0)
}

// closedProtocol is a session's connection after it was closed and could
// not be opened again: it builds results like the protocol it was, and
// closing it again does nothing.
type closedProtocol struct{ protocol }

func (closedProtocol) close() {}

// Close closes the connection.
func (s *Session) Close() {
	if s.p != nil {
		s.p.close()
	}
}
