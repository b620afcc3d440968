package prober

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// Traces: the routers under each segment, traced by the segment's near
// end on the segment's own connection (the path extension of the
// protocol). After the measured probes, when TraceOptions.When says so,
// the source sends one more request asking every relay to trace the route
// to its next hop and report it (frame.ProbeTrace|ProbePath), and traces
// its own connection to the first hop meanwhile: the traces run at every
// hop at once, within the request's budget, and nothing measured follows
// them on the connection.

// TraceOptions ask a run for the segments' paths.
type TraceOptions struct {
	// Tracer traces the source's own segment (the process's Tracer, whose
	// rate limit every trace of the process shares).
	Tracer *trace.Tracer
	// Options bound the source's own trace.
	Options trace.Options
	// When, if set, decides from the measured result whether to trace
	// (on_violation); nil traces every run that went through.
	When func(*Result) bool
}

// PathHopResult is one TTL of a segment's path.
type PathHopResult struct {
	TTL int `json:"ttl"`
	// Address answered the TTL's probes; null when none did.
	Address *string `json:"address"`
	// RTT is the round trip from the near end to that router; null when
	// no probe was answered.
	RTT       *Seconds `json:"rtt_seconds"`
	LossRatio float64  `json:"loss_ratio"`
}

// PathFlowResult is how a segment's path was traced.
type PathFlowResult struct {
	// Protocol is tcp (the connection's own flow), udp (the unprivileged
	// fallback) or none (no trace ran: Status and Reason say why).
	Protocol   string `json:"protocol"`
	Local      string `json:"local"`
	Remote     string `json:"remote"`
	LocalPort  uint16 `json:"local_port"`
	RemotePort uint16 `json:"remote_port"`
	// Reason says why this protocol, or why no path.
	Reason string `json:"reason"`
	Route  string `json:"route"`
	// Status is how the trace ended: reached, max_ttl, silent,
	// unreachable, deadline; or failed, disabled, running, not_started.
	Status          string  `json:"status"`
	Reached         bool    `json:"reached"`
	Packets         int     `json:"packets"`
	DurationSeconds float64 `json:"duration_seconds"`
	// Fingerprint identifies the path (the answering address of every
	// TTL), for counting path changes.
	Fingerprint string `json:"fingerprint,omitempty"`
}

// PathDelayResult is where the delay first appears on a segment's path.
type PathDelayResult struct {
	TTL     int     `json:"ttl"`
	Address string  `json:"address"`
	Delay   float64 `json:"delay_seconds"`
}

// String says where the delay first appears, as every output writes it:
// "+19.8 ms at 10.61.2.2 (TTL 2)".
func (d *PathDelayResult) String() string {
	return fmt.Sprintf("+%.1f ms at %s (TTL %d)", d.Delay*1000, d.Address, d.TTL)
}

// String says how a segment's path was traced, on one line.
func (f *PathFlowResult) String() string {
	if f.Protocol == "none" {
		return fmt.Sprintf("no path (%s): %s", f.Status, f.Reason)
	}
	return fmt.Sprintf("%s %s:%d -> %s:%d, %s, %d packets in %.2fs; %s", f.Protocol, f.Local, f.LocalPort, f.Remote, f.RemotePort,
		f.Status, f.Packets, f.DurationSeconds, f.Reason)
}

// PathText is the segment's path on one line: "1 10.61.1.2 0.090ms,
// 2 * , 3 10.61.3.2 20.100ms"; "" when it was not traced.
func (s *SegmentResult) PathText() string {
	var parts []string
	for _, h := range s.Path {
		if h.Address == nil || h.RTT == nil {
			parts = append(parts, fmt.Sprintf("%d *", h.TTL))
			continue
		}
		parts = append(parts, fmt.Sprintf("%d %s %.3fms", h.TTL, *h.Address, h.RTT.Median*1000))
	}
	return strings.Join(parts, ", ")
}

// WirePath is the segment's path as its near end reported it; nil when
// the segment was not traced.
func (s *SegmentResult) WirePath() *frame.Path { return s.path }

// traceFlags asks every relay for a trace and its path.
const traceFlags = frame.ProbeTrace | frame.ProbePath

// tracePaths sends the trace request and traces the source's own
// segment meanwhile, then adds every segment's path to the result.
func tracePaths(ctx context.Context, p protocol, o *Options, res *Result) {
	s, ok := p.(*session)
	if !ok {
		return // HTTP proxies do not trace
	}
	own := make(chan *frame.Path, 1)
	go func() { own <- s.traceOwn(ctx) }()
	smp := s.probe(ctx, uint64(o.Count)+2, traceFlags)
	first := <-own
	res.addPaths(smp, first, o)
}

// traceOwn traces the source's connection to the first hop, with the
// share of the budget a relay gives its own.
func (s *session) traceOwn(ctx context.Context) *frame.Path {
	conn := trace.ConnOf(s.conn)
	if conn == nil {
		return ownTrace(ctx, s.o, trace.Target{}, fmt.Errorf("trace: %w: %T has no descriptor", trace.ErrNotTCP, s.conn))
	}
	target, err := trace.Inspect(conn)
	return ownTrace(ctx, s.o, target, err)
}

// ownTrace traces the source's own segment, whose connection target
// describes (inspected err when it could not be), with the share of the
// budget a relay gives its own: the Session's (traceOwn) and an event
// loop's, which inspects its connection itself and traces elsewhere.
func ownTrace(ctx context.Context, o *Options, target trace.Target, inspected error) *frame.Path {
	t := o.Trace
	if t.Tracer == nil {
		return frame.NoPath(frame.PathDisabled, o.Source+" does not trace")
	}
	budget, ok := probeBudget(ctx, o.Timeout)
	if !ok {
		return frame.NoPath(frame.PathDeadline, "no time left to trace")
	}
	if inspected != nil {
		return trace.WireError(inspected)
	}
	tctx, cancel := context.WithTimeout(ctx, time.Duration(float64(budget)*7/8*3/4))
	defer cancel()
	r, err := t.Tracer.TraceTarget(tctx, target, t.Options)
	if err != nil {
		return trace.WireError(err)
	}
	return r.Wire()
}

// addPaths adds the paths of a trace request's reply (its records, the
// source's own first) to the segments. A relay that answered without a
// path does not know the extension; a request that failed fails the
// paths of the segments it did not report, with its reason.
func (r *Result) addPaths(smp Sample, own *frame.Path, o *Options) {
	r.setPath(0, smp.Records, own)
	for i := 1; i+1 < len(smp.Records); i++ {
		rec := smp.Records[i]
		p := rec.Path
		if p == nil {
			p = frame.NoPath(frame.PathFailed, fmt.Sprintf("%s reported no path: it does not know traces (a relay older than the path extension of protocol 2); upgrade it", rec.Name))
			o.Logger.Warn("a relay answered a trace request without its path: it is older than this release", "hop", rec.Name)
		}
		r.setPath(i, smp.Records, p)
	}
	if f := smp.Failure; f != nil {
		o.Logger.Info("trace request failed", "err", f.Error())
		msg := fmt.Sprintf("the trace request failed at %s -> %s (%s): %s", f.From.Name, f.To.Name, f.Reason, f.Message)
		for i := range r.Segments {
			if r.Segments[i].path == nil && r.Segments[i].Samples > 0 {
				r.Segments[i].setPath(frame.NoPath(frame.PathFailed, msg))
			}
		}
	}
}

// setPath gives the segment from record i to record i+1 its path.
func (r *Result) setPath(i int, recs []frame.HopRecord, p *frame.Path) {
	if i+1 >= len(recs) {
		if i == 0 && len(r.Segments) > 0 {
			// The request did not come back at all: the first segment
			// still has the source's own trace.
			r.Segments[0].setPath(p)
		}
		return
	}
	if s := r.Segment(r.labelOf(recs[i]), r.labelOf(recs[i+1])); s != nil {
		s.setPath(p)
	}
}

// labelOf is the label of the hop that wrote a record: by its identity,
// or by name for the hidden rest of a stripped chain.
func (r *Result) labelOf(rec frame.HopRecord) string {
	for i := range r.Hops {
		if rec.ID != 0 && r.Hops[i].id == rec.ID {
			return r.Hops[i].Name
		}
	}
	return rec.Name
}

// setPath fills the segment's path, flow and delay step from a reported
// path.
func (s *SegmentResult) setPath(p *frame.Path) {
	s.path = p
	s.Path = make([]PathHopResult, 0, len(p.Hops))
	for _, h := range p.Hops {
		ph := PathHopResult{TTL: int(h.TTL), LossRatio: h.LossRatio()}
		if h.Answered > 0 {
			addr := h.Address.String()
			ph.Address = &addr
			ph.RTT = &Seconds{Min: h.Min.Seconds(), Median: h.Median.Seconds(), Max: h.Max.Seconds()}
		}
		s.Path = append(s.Path, ph)
	}
	f := &PathFlowResult{Protocol: p.Method.String(), Reason: p.Reason, Route: p.Route, Status: p.Status.String(),
		Reached: p.Status == frame.PathReached, Packets: int(p.Packets), DurationSeconds: p.Duration.Seconds()}
	if p.Local.IsValid() {
		f.Local, f.LocalPort = p.Local.Addr().String(), p.Local.Port()
	}
	if p.Remote.IsValid() {
		f.Remote, f.RemotePort = p.Remote.Addr().String(), p.Remote.Port()
	}
	if p.Status.Traced() {
		f.Fingerprint = fmt.Sprintf("%012x", trace.PathFingerprint(p))
	}
	s.PathFlow = f
	s.PathDelay = nil
	if st, ok := trace.PathDelayStep(p); ok {
		s.PathDelay = &PathDelayResult{TTL: st.TTL, Address: st.Address.String(), Delay: st.Delay.Seconds()}
	}
}
