package prober

import (
	"context"
	"log/slog"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// Session keeps a chain open for continuous probing: one connection to
// the first hop (relay or HTTP proxy), a warm-up when it opens, then one
// probe per call, each summarised on its own. Not safe for concurrent use.
type Session struct {
	o    Options
	p    prober
	http *httpSession
	tcp  *session
	seq  uint64
}

// Open connects to the chain and sends the warm-up probe. The result
// holds the warm-up's connect times; on failure the session is nil and
// the result says where the chain broke. Options.Count and Interval are
// not used.
func Open(ctx context.Context, o Options) (*Session, *Result) {
	if o.Clock == nil {
		o.Clock = clock.NewSystem()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Count = max(o.Count, 1)
	res := &Result{Target: o.Target, Source: o.Source, HTTP: o.HTTP != nil}
	if err := o.Validate(); err != nil {
		res.setFailure(&Failure{From: peer.Hop{Name: o.Source}, To: peer.Hop{Name: o.Target}, Reason: peer.ReasonUnknown, Message: err.Error()})
		return nil, res
	}
	s := &Session{o: o}
	if o.HTTP != nil {
		t, err := peer.ParseHTTPTarget(o.Target)
		if err != nil {
			res.setFailure(&Failure{From: peer.Hop{Name: o.Source}, To: peer.Hop{Name: o.Target}, Reason: peer.ReasonUnknown, Message: err.Error()})
			return nil, res
		}
		h := newHTTPSession(&s.o, t)
		if f := h.dial(ctx); f != nil {
			res.setFailure(f)
			return nil, res
		}
		s.http, s.p = h, h
	} else {
		t, f := open(ctx, &s.o)
		if f != nil {
			res.setFailure(f)
			return nil, res
		}
		s.tcp, s.p = t, t
	}
	warm := s.p.probe(ctx, 0, 0)
	warm.Warmup = true
	s.finish(res, []Sample{warm})
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
	res := &Result{Target: s.o.Target, Source: s.o.Source, HTTP: s.http != nil}
	smp := s.p.probe(ctx, s.seq, 0)
	s.finish(res, []Sample{smp})
	res.Duration = time.Since(start)
	return res
}

func (s *Session) finish(res *Result, samples []Sample) {
	if s.http != nil {
		s.http.attachTCP(samples)
		res.summarise(samples, s.o.Logger)
		s.http.annotate(res)
		return
	}
	s.tcp.attachTCP(samples)
	res.summarise(samples, s.o.Logger)
}

// Close closes the connection.
func (s *Session) Close() {
	if s.http != nil {
		s.http.close()
	}
	if s.tcp != nil {
		s.tcp.close()
	}
}
