package prober

import (
	"context"
	"time"
)

// Session keeps a chain open for continuous probing: one connection to
// the first hop (relay or HTTP proxy), a warm-up when it opens, then one
// probe per call, each summarised on its own. Not safe for concurrent use.
type Session struct {
	o   Options
	p   protocol
	seq uint64
}

// Open connects to the chain and sends the warm-up probe. The result
// holds the warm-up's connect times; on failure the session is nil and
// the result says where the chain broke. Options.Count and Interval are
// not used.
func Open(ctx context.Context, o Options) (*Session, *Result) {
	o.defaults()
	o.Count = max(o.Count, 1)
	s := &Session{o: o}
	res := newResult(&s.o)
	p, fail := dial(ctx, &s.o)
	if fail != nil {
		res.setFailure(fail)
		return nil, res
	}
	s.p = p
	warm := p.probe(ctx, 0, 0)
	warm.Warmup = true
	res.build(p, []Sample{warm}, s.o.Logger)
	if warm.Failure != nil {
		s.Close()
		return nil, res
	}
	return s, res
}

// Probe sends one probe and summarises it alone.
func (s *Session) Probe(ctx context.Context) *Result {
	s.seq++
	start := time.Now()
	res := newResult(&s.o)
	smp := s.p.probe(ctx, s.seq, 0)
	res.build(s.p, []Sample{smp}, s.o.Logger)
	res.Duration = time.Since(start)
	return res
}

// Close closes the connection.
func (s *Session) Close() {
	if s.p != nil {
		s.p.close()
	}
}
