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
//
// With Options.ReuseResults, the results it returns are rebuilt in place
// on every call (a probe a second allocates next to nothing): each is
// valid until the next Probe; copy what you keep (Result.Clone). Their
// Failure, and their hops' Vars, are never written again and may be kept.
type Session struct {
	o   Options
	p   protocol
	seq uint64
	// used is when the connection last carried a probe; usedEarly how
	// long before its slot that probe went (ProbeEarly; 0 for Open's).
	used      time.Time
	usedEarly time.Duration
	// conns counts the connections opened: the first, and every one a
	// probe opened again (Connections).
	conns   uint64
	res     Result
	samples [2]Sample
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
	warm, fail := s.open(ctx)
	if fail != nil {
		res := newResult(&s.o)
		res.setFailure(fail)
		return nil, res
	}
	res := s.result()
	samples := append(s.sampleArray(), warm)
	res.build(s.p, samples, s.o.Logger)
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
	if rp, ok := p.(*session); ok {
		rp.reuse = s.o.ReuseResults
	}
	s.p = p
	s.conns++
	warm := p.probe(ctx, 0, 0)
	warm.Warmup = true
	s.used = time.Now()
	return warm, nil
}

// Connections counts the connections the session opened: 1 after Open,
// one more each time a probe found its idle connection closed and sent
// itself again on a new one (a runner counting a connection's TCP
// retransmissions must know that its counters started again).
func (s *Session) Connections() uint64 { return s.conns }

// Probe sends one probe and summarises it alone. When the connection sat
// idle for staleAfter or more and the first hop closed it before
// answering, the probe goes again on a new connection, after its warm-up;
// what that finds is the probe's result, the warm-up's connect times
// included.
func (s *Session) Probe(ctx context.Context) *Result { return s.ProbeEarly(ctx, 0) }

// ProbeEarly is Probe for a probe sent early before its slot (a
// continuous runner's batch): its idle time is not shortened below what
// the slots give it (stale, Turn.Early).
func (s *Session) ProbeEarly(ctx context.Context, early time.Duration) *Result {
	s.seq++
	start := time.Now()
	res := s.result()
	smp := s.p.probe(ctx, s.seq, 0)
	samples := s.sampleArray()
	if stale(start.Sub(s.used), early, s.usedEarly, smp) {
		s.o.Logger.Debug("the first hop closed the idle connection: opening another", "idle", start.Sub(s.used).Round(time.Millisecond), "early", early.Round(time.Millisecond), "err", smp.Failure.Message)
		samples = s.reopen(ctx, samples)
	} else {
		samples = append(samples, smp)
	}
	s.used, s.usedEarly = time.Now(), early
	res.build(s.p, samples, s.o.Logger)
	res.Duration = time.Since(start)
	return res
}

// result is the result of the next Open or Probe: the session's own,
// renewed, with Options.ReuseResults; a new one otherwise.
func (s *Session) result() *Result {
	if !s.o.ReuseResults {
		return newResult(&s.o)
	}
	s.res.renew(&s.o)
	return &s.res
}

// sampleArray is where the samples of the next result go: the session's
// own array with Options.ReuseResults.
func (s *Session) sampleArray() []Sample {
	if !s.o.ReuseResults {
		return make([]Sample, 0, 2)
	}
	return s.samples[:0]
}

// stale says whether a probe sent after the connection sat idle that
// long found it closed by the first hop: the probe goes again on a new
// connection. A continuous probe may go out early (its batch): early is
// how long before its slot it went, usedEarly the same of the probe whose
// reply ended the previous use (negative: late). The idle time counts as
// the slots give it when going out early made it shorter — at least the
// interval less the previous round trip — so that batching does not turn
// a first hop's idle close into a failure at intervals just over
// staleAfter; a later probe's longer idle time counts as it is.
func stale(idle, early, usedEarly time.Duration, smp Sample) bool {
	return idle+max(early-usedEarly, 0) >= staleAfter && closedBeforeReply(smp)
}

// closedBeforeReply says whether the first hop closed or reset the
// connection before anything came back.
func closedBeforeReply(smp Sample) bool {
	f := smp.Failure
	return f != nil && len(smp.Records) <= 1 && f.FromIndex == 0 && (f.Reason == peer.ReasonClosed || f.Reason == peer.ReasonReset)
}

// reopen replaces the connection and sends the probe of this call on the
// new one, after its warm-up: it appends the warm-up and the probe to
// samples. A failed dial or warm-up is the probe's failure.
func (s *Session) reopen(ctx context.Context, samples []Sample) []Sample {
	s.ownTrace = nil // a trace of the old connections
	old := s.p
	old.close()
	warm, fail := s.open(ctx)
	if fail != nil {
		s.p = closedProtocol{old}
		return append(samples, Sample{Seq: s.seq, Failure: fail})
	}
	samples = append(samples, warm)
	if warm.Failure != nil {
		return samples
	}
	return append(samples, s.p.probe(ctx, s.seq, 0))
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
