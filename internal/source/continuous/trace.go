package continuous

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// Traces of continuous entries: every trace_interval an entry asks its
// chain's relays to trace the route to their next hops on the entry's own
// connections (prober.Session.TraceStart, between two probes), and one
// module timeout later collects the paths (TracePaths): no probe ever
// waits for a trace. A path that differs from the segment's previous one
// (trace.SamePath: another far end, or another router where both
// answered) counts as a path change.

// traceSchedule is where an entry is in its traces.
type traceSchedule struct {
	// next is when the next trace starts; collectAt, while one runs,
	// when its paths are asked for (zero: none runs).
	next, collectAt time.Time
}

// traceStep is what an entry's traces ask for after a probe at now: to
// collect the paths of the trace under way, or to start the next one
// (then ended, after every interval, by collectAfter); nothing when the
// entry does not trace.
type traceStep int

const (
	traceNothing traceStep = iota
	traceStart
	traceCollect
)

// step says what the entry does about its traces now, and moves its
// schedule on (the engine sends the request; a start that failed is
// forgotten with started(false)).
func (t *traceSchedule) step(rec *recorder, tracing bool, now time.Time) traceStep {
	if !tracing || rec.module.Trace == config.TraceNever {
		return traceNothing
	}
	switch {
	case !t.collectAt.IsZero() && !now.Before(t.collectAt):
		t.collectAt = time.Time{}
		return traceCollect
	case t.collectAt.IsZero() && !now.Before(t.next):
		t.next = now.Add(time.Duration(rec.entry.TraceInterval))
		return traceStart
	}
	return traceNothing
}

// started records whether the trace the step asked for did start (then
// its paths are asked for a module timeout later).
func (t *traceSchedule) started(rec *recorder, ok bool, now time.Time) {
	if ok {
		t.collectAt = now.Add(time.Duration(rec.module.Timeout))
	}
}

// reopened forgets a trace under way on connections that are gone.
func (t *traceSchedule) reopened() { t.collectAt = time.Time{} }

// traceStep starts or collects the entry's trace when it is due; s is the
// entry's open session.
func (r *runner) traceStep(ctx context.Context, s *prober.Session) {
	now := time.Now()
	switch r.traces.step(r.recorder, r.opts.Trace != nil, now) {
	case traceCollect:
		if res := s.TracePaths(ctx); res != nil {
			r.observePaths(res)
		}
	case traceStart:
		r.traces.started(r.recorder, s.TraceStart(ctx), now)
	}
}

// observePaths records the paths of a trace: metrics, path changes and
// the chain page's state.
func (r *recorder) observePaths(res *prober.Result) {
	for i := range res.Segments {
		seg := &res.Segments[i]
		p := seg.WirePath()
		if p == nil || r.metrics.segment(r.series, seg.From, seg.To) == nil {
			continue
		}
		r.metrics.paths.observe(r.entry.Target, r.entry.Module, seg, p, r.log)
		r.state.path(seg)
	}
}

// pathMetrics are the continuous entries' paths on /metrics. Every label
// is bounded: ttl by the trace's max TTL, a segment's series replaced at
// every trace, addresses only in the hop info. Each segment keeps the
// label values of the series its latest trace made, and a new trace (or
// the entry's removal) deletes exactly those: a search of the vectors by
// partial labels (DeletePartialMatch) looks at every series of every
// entry, and with ten thousand entries tracing, their traces' results
// stalled the loop that records them for seconds each.
type pathMetrics struct {
	mu      sync.Mutex
	byEntry map[entryKey]map[[2]string]*segmentPath

	changes     *prometheus.CounterVec
	info        *prometheus.GaugeVec
	hops        *prometheus.GaugeVec
	fingerprint *prometheus.GaugeVec
	rtt         *prometheus.GaugeVec
	loss        *prometheus.GaugeVec
	hopInfo     *prometheus.GaugeVec
	delay       *prometheus.GaugeVec
}

// segmentPath is a segment's latest path that reached its far end, and
// the label values of the series its latest trace made.
type segmentPath struct {
	last *frame.Path
	// info's protocol and status; the TTLs of loss, of rtt (answered
	// ones), of the hop info with its address, and of the delay ("" none)
	info         [2]string
	losses, rtts []string
	hopInfo      [][2]string
	delay        string
	// hops and fingerprint were set (a trace reached the far end)
	reached bool
}

func newPathMetrics(reg prometheus.Registerer) *pathMetrics {
	seg := []string{"target", "module", "from", "to"}
	ttl := append(seg[:len(seg):len(seg)], "ttl")
	m := &pathMetrics{byEntry: map[entryKey]map[[2]string]*segmentPath{},
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "segment_path_changes_total",
			Help: "Times the routers under the segment changed between two traces that reached its far end (another far end, another router at a TTL both answered, or one router more or fewer; a silent TTL is no change)."}, seg),
		info: pathGauge("segment_path_info", "How the segment's latest trace ran: protocol tcp, udp or none, and status (as subsegment_segment_path_info).",
			append(seg[:len(seg):len(seg)], "protocol", "status")),
		hops:        pathGauge("segment_path_hops", "TTLs the segment's latest trace listed.", seg),
		fingerprint: pathGauge("segment_path_fingerprint", "The fingerprint of the segment's current path (48 bits of a hash of the address at every TTL before the far end, and the far end's).", seg),
		rtt:         pathGauge("segment_path_rtt_seconds", "Round trip from the segment's near end to the router at this TTL in the latest trace, median (answered TTLs only).", ttl),
		loss:        pathGauge("segment_path_loss_ratio", "Share of the TTL's probes without an answer in the latest trace.", ttl),
		hopInfo:     pathGauge("segment_path_hop_info", "The address that answered the TTL's probes in the latest trace, 1 per answered TTL: the only continuous metric with an address.", append(ttl[:len(ttl):len(ttl)], "address")),
		delay:       pathGauge("segment_path_delay_seconds", "Where the delay first appears on the segment's current path: the rise of round trip at that TTL.", ttl),
	}
	reg.MustRegister(m.changes, m.info, m.hops, m.fingerprint, m.rtt, m.loss, m.hopInfo, m.delay)
	return m
}

func pathGauge(name, help string, labels []string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
}

// observe replaces a segment's path series with a new trace's, and
// counts a change of route.
func (m *pathMetrics) observe(target, module string, seg *prober.SegmentResult, p *frame.Path, log *slog.Logger) {
	ek := entryKey{target, module}
	m.mu.Lock()
	defer m.mu.Unlock()
	segs := m.byEntry[ek]
	if segs == nil {
		segs = map[[2]string]*segmentPath{}
		m.byEntry[ek] = segs
	}
	sp := segs[[2]string{seg.From, seg.To}]
	if sp == nil {
		sp = &segmentPath{}
		segs[[2]string{seg.From, seg.To}] = sp
		// created at 0, so increase() sees the first change
		m.changes.WithLabelValues(target, module, seg.From, seg.To)
	}
	m.deleteTrace(target, module, seg.From, seg.To, sp)
	sp.info = [2]string{p.Method.String(), p.Status.String()}
	m.info.WithLabelValues(target, module, seg.From, seg.To, sp.info[0], sp.info[1]).Set(1)
	if p.Status != frame.PathReached {
		// A path cut short (a silent end, the deadline) is no new route.
		return
	}
	if sp.last != nil && !trace.SamePath(sp.last, p) {
		m.changes.WithLabelValues(target, module, seg.From, seg.To).Inc()
		log.Info("the route under a segment changed", "segment", seg.From+" -> "+seg.To, "path", seg.PathText())
	}
	sp.last, sp.reached = p, true
	m.hops.WithLabelValues(target, module, seg.From, seg.To).Set(float64(len(p.Hops)))
	m.fingerprint.WithLabelValues(target, module, seg.From, seg.To).Set(float64(trace.PathFingerprint(p)))
	for _, h := range p.Hops {
		ttl := strconv.Itoa(int(h.TTL))
		m.loss.WithLabelValues(target, module, seg.From, seg.To, ttl).Set(h.LossRatio())
		sp.losses = append(sp.losses, ttl)
		if h.Answered > 0 {
			addr := h.Address.String()
			m.rtt.WithLabelValues(target, module, seg.From, seg.To, ttl).Set(h.Median.Seconds())
			m.hopInfo.WithLabelValues(target, module, seg.From, seg.To, ttl, addr).Set(1)
			sp.rtts = append(sp.rtts, ttl)
			sp.hopInfo = append(sp.hopInfo, [2]string{ttl, addr})
		}
	}
	if d := seg.PathDelay; d != nil {
		sp.delay = strconv.Itoa(d.TTL)
		m.delay.WithLabelValues(target, module, seg.From, seg.To, sp.delay).Set(d.Delay)
	}
}

// deleteTrace deletes the series of a segment's latest trace: its info,
// and the TTLs' series (hops and fingerprint stay: they describe the
// current path, replaced only by a trace that reaches the far end).
func (m *pathMetrics) deleteTrace(target, module, from, to string, sp *segmentPath) {
	if sp.info != [2]string{} {
		m.info.DeleteLabelValues(target, module, from, to, sp.info[0], sp.info[1])
	}
	for _, ttl := range sp.losses {
		m.loss.DeleteLabelValues(target, module, from, to, ttl)
	}
	for _, ttl := range sp.rtts {
		m.rtt.DeleteLabelValues(target, module, from, to, ttl)
	}
	for _, h := range sp.hopInfo {
		m.hopInfo.DeleteLabelValues(target, module, from, to, h[0], h[1])
	}
	if sp.delay != "" {
		m.delay.DeleteLabelValues(target, module, from, to, sp.delay)
	}
	sp.info, sp.losses, sp.rtts, sp.hopInfo, sp.delay = [2]string{}, sp.losses[:0], sp.rtts[:0], sp.hopInfo[:0], ""
}

// remove deletes every path series of an entry.
func (m *pathMetrics) remove(target, module string) {
	ek := entryKey{target, module}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, sp := range m.byEntry[ek] {
		m.deleteTrace(target, module, k[0], k[1], sp)
		m.changes.DeleteLabelValues(target, module, k[0], k[1])
		if sp.reached {
			m.hops.DeleteLabelValues(target, module, k[0], k[1])
			m.fingerprint.DeleteLabelValues(target, module, k[0], k[1])
		}
	}
	delete(m.byEntry, ek)
}

// PathHopState is one TTL of a segment's current path on the chain page.
type PathHopState struct {
	TTL     int     `json:"ttl"`
	Address string  `json:"address"`
	RTT     float64 `json:"rtt_seconds"`
	Loss    float64 `json:"loss_ratio"`
}

// pathState is a segment's latest path, for the page.
type pathState struct {
	hops  []PathHopState
	delay *prober.PathDelayResult
	flow  string
	at    time.Time
}

// path keeps a segment's latest trace for the page (bounded like its
// windows: one per segment, at most the trace's max TTL each).
func (s *entryState) path(seg *prober.SegmentResult) {
	ps := &pathState{delay: seg.PathDelay, at: time.Now()}
	if seg.PathFlow != nil {
		ps.flow = seg.PathFlow.Protocol + " " + seg.PathFlow.Status
	}
	for _, h := range seg.Path {
		ph := PathHopState{TTL: h.TTL, Loss: h.LossRatio}
		if h.Address != nil && h.RTT != nil {
			ph.Address, ph.RTT = *h.Address, h.RTT.Median
		}
		ps.hops = append(ps.hops, ph)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{seg.From, seg.To}
	if _, ok := s.paths[k]; !ok && len(s.paths) >= maxSeriesKeys {
		return
	}
	if s.paths == nil {
		s.paths = map[[2]string]*pathState{}
	}
	s.paths[k] = ps
}

// addPath unfolds a segment over its SLA into its routers (the latest
// trace of it), for the page.
func (s *entryState) addPath(seg *SegmentState) {
	ps := s.paths[[2]string{seg.From, seg.To}]
	if ps == nil || seg.SLA != SLAExceeded {
		return
	}
	seg.Path, seg.PathDelay, seg.PathFlow = ps.hops, ps.delay, ps.flow
}
