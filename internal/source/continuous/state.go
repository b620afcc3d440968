package continuous

import (
	"sync"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// entryState is what the chain page shows of an entry: the chain as the
// latest probe saw it, the recent windows of its segments and hops, and
// the current failure. Bounded like the entry's series.
type entryState struct {
	mu          sync.Mutex
	entry       config.Continuous
	sla         config.SLA
	hopsInOrder []string
	segsInOrder [][2]string
	// resolution of HTTP proxies' stamps and of segments' figures
	// (seconds; absent: our own, microseconds)
	hopRes      map[string]float64
	segRes      map[[2]string]float64
	segments    map[[2]string]*window
	hops        map[string]*hopWindows
	segCache    []cachedWindow
	hopCache    []cachedHopWindows
	lastSuccess time.Time
	failure     *prober.FailureResult
	failedAt    time.Time
	// context is the latest SNMP or in-band context of a hop out of its
	// SLA (hop -> variable -> value), and when it was read.
	context   map[string]map[string]float64
	contextAt time.Time
	// moment stamps and ages the windows' samples (monotonic).
	moment moments
	// stamp is the STAMP segments' packets (stamp.go).
	stamp map[[2]string]*stampWindows
	// paths are the segments' latest traces (trace.go).
	paths map[[2]string]*pathState
}

type hopWindows struct {
	residence, wait window
	// noWait: the hop reports no wait (a STAMP reflector).
	noWait bool
	vars   map[string]float64
}

func newEntryState(e config.Continuous, m *config.Module) *entryState {
	return &entryState{entry: e, sla: m.SLA, segments: map[[2]string]*window{}, hops: map[string]*hopWindows{}, moment: monotonicSince(time.Now())}
}

// span is how far back the page looks for this entry: Span, or two
// intervals when they are longer, so that a healthy chain always has a
// sample in it.
func (s *entryState) span() time.Duration {
	return max(Span, 2*time.Duration(s.entry.Interval))
}

// fail records a failure; true when the entry was working before (worth
// a log line).
func (s *entryState) fail(now time.Time, res *prober.Result) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.failure == nil
	s.failure, s.failedAt = res.Failure, now
	return was
}

// succeed records a probe through the whole chain; true when it was
// broken before.
func (s *entryState) succeed(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.failure != nil
	s.failure, s.lastSuccess = nil, now
	return was
}

// record adds a probe's figures to the windows (a warm-up's carry none),
// and keeps the chain's order of a probe that got through.
func (s *entryState) record(now time.Time, res *prober.Result, warmup bool) {
	if warmup {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chainLocked(res)
	at := s.moment(now)
	for i := range res.Segments {
		if seg := &res.Segments[i]; seg.Samples > 0 {
			if w := s.segmentWindow(i, seg.From, seg.To); w != nil {
				w.add(at, seg.RTT.Median)
			}
		}
	}
	for i := range res.Hops {
		if hr := &res.Hops[i]; hr.Residence.Max > 0 {
			if h := s.hopWindows(i, hr.Name); h != nil {
				h.record(at, hr.Residence.Median, hr.Wait.Median, !hr.STAMP, hr.Vars)
			}
		}
	}
}

// segmentWindow is the window of segment from → to, the i-th of a probe;
// nil past the entry's bound. The caller holds mu.
func (s *entryState) segmentWindow(i int, from, to string) *window {
	if i < len(s.segCache) && s.segCache[i].from == from && s.segCache[i].to == to {
		return s.segCache[i].w
	}
	k := [2]string{from, to}
	w := s.segments[k]
	if w == nil {
		if len(s.segments)+len(s.hops) >= maxSeriesKeys {
			return nil
		}
		w = &window{}
		s.segments[k] = w
	}
	for len(s.segCache) <= i {
		s.segCache = append(s.segCache, cachedWindow{})
	}
	s.segCache[i] = cachedWindow{from: from, to: to, w: w}
	return w
}

// hopWindows are the windows of hop name, the i-th of a probe; nil past
// the entry's bound. The caller holds mu.
func (s *entryState) hopWindows(i int, name string) *hopWindows {
	if i < len(s.hopCache) && s.hopCache[i].name == name {
		return s.hopCache[i].h
	}
	h := s.hops[name]
	if h == nil {
		if len(s.segments)+len(s.hops) >= maxSeriesKeys {
			return nil
		}
		h = &hopWindows{}
		s.hops[name] = h
	}
	for len(s.hopCache) <= i {
		s.hopCache = append(s.hopCache, cachedHopWindows{})
	}
	s.hopCache[i] = cachedHopWindows{name: name, h: h}
	return h
}

// cachedWindow and cachedHopWindows are the windows of the previous
// probe's segments and hops, by position: an unchanged chain finds them
// without a map.
type cachedWindow struct {
	from, to string
	w        *window
}

type cachedHopWindows struct {
	name string
	h    *hopWindows
}

// record adds a probe's residence, and its wait when the hop reports one
// (waits: not a STAMP reflector).
func (h *hopWindows) record(at int64, residence, wait float64, waits bool, vars map[string]float64) {
	h.residence.add(at, residence)
	if waits {
		h.wait.add(at, wait)
	} else {
		h.noWait = true
	}
	if len(vars) > 0 {
		h.vars = vars
	}
}

// chain keeps the order of hops and segments of a probe that got through.
func (s *entryState) chain(res *prober.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chainLocked(res)
}

// chainLocked keeps the order of hops and segments of a probe that got
// through (a failed probe's partial chain would reorder the drawing). The
// caller holds mu.
func (s *entryState) chainLocked(res *prober.Result) {
	if res.Failure != nil || len(res.Hops) == 0 || s.sameChain(res) {
		return
	}
	if s.hopRes == nil {
		s.hopRes, s.segRes = map[string]float64{}, map[[2]string]float64{}
	}
	clear(s.hopRes)
	clear(s.segRes)
	s.hopsInOrder = s.hopsInOrder[:0]
	for _, h := range res.Hops {
		s.hopsInOrder = append(s.hopsInOrder, h.Name)
		if h.HTTPHeader {
			s.hopRes[h.Name] = h.Resolution
		}
	}
	s.segsInOrder = s.segsInOrder[:0]
	for _, seg := range res.Segments {
		s.segsInOrder = append(s.segsInOrder, [2]string{seg.From, seg.To})
		if seg.Resolution > 0 {
			s.segRes[[2]string{seg.From, seg.To}] = seg.Resolution
		}
	}
}

// sameChain says whether res's relay chain is the one kept: the same
// hops and segments, and no resolutions (an HTTP chain's are kept anew).
func (s *entryState) sameChain(res *prober.Result) bool {
	if len(s.hopsInOrder) != len(res.Hops) || len(s.segsInOrder) != len(res.Segments) || len(s.hopRes) > 0 || len(s.segRes) > 0 {
		return false
	}
	for i := range res.Hops {
		if h := &res.Hops[i]; h.Name != s.hopsInOrder[i] || h.HTTPHeader {
			return false
		}
	}
	for i := range res.Segments {
		if seg := &res.Segments[i]; seg.From != s.segsInOrder[i][0] || seg.To != s.segsInOrder[i][1] || seg.Resolution > 0 {
			return false
		}
	}
	return true
}

// contextDue says whether the context may be read again; it reserves the
// turn, so that a slow agent is not asked again on every probe.
func (s *entryState) contextDue(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.contextAt) < contextEvery {
		return false
	}
	s.contextAt = now
	return true
}

func (s *entryState) setContext(now time.Time, c map[string]map[string]float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.context, s.contextAt = c, now
}

// segment adds a segment's rtt at now.
func (s *entryState) segment(now time.Time, from, to string, rtt float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.segmentAt(s.moment(now), from, to, rtt)
}

// hop adds a hop's residence and wait (waits: it reports one) at now.
func (s *entryState) hop(now time.Time, name string, residence, wait float64, waits bool, vars map[string]float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hopAt(s.moment(now), name, residence, wait, waits, vars)
}

// segmentAt adds a segment's rtt at moment at; the caller holds mu.
func (s *entryState) segmentAt(at int64, from, to string, rtt float64) {
	k := [2]string{from, to}
	w := s.segments[k]
	if w == nil {
		if len(s.segments)+len(s.hops) >= maxSeriesKeys {
			return
		}
		w = &window{}
		s.segments[k] = w
	}
	w.add(at, rtt)
}

// hopAt adds a hop's residence, and its wait when it reports one (waits:
// not a STAMP reflector), at moment at; the caller holds mu.
func (s *entryState) hopAt(at int64, name string, residence, wait float64, waits bool, vars map[string]float64) {
	h := s.hops[name]
	if h == nil {
		if len(s.segments)+len(s.hops) >= maxSeriesKeys {
			return
		}
		h = &hopWindows{}
		s.hops[name] = h
	}
	h.record(at, residence, wait, waits, vars)
}

// Span is how far back the chain page looks, at least: an entry whose
// interval is longer looks back two intervals.
const Span = time.Minute

// EntryState is an entry as the chain page draws it (and its JSON API
// returns it).
type EntryState struct {
	Target          string  `json:"target"`
	Module          string  `json:"module"`
	IntervalSeconds float64 `json:"interval_seconds"`
	// WindowSeconds is how far back the medians and states look: a
	// minute, or two intervals when they are longer.
	WindowSeconds float64 `json:"window_seconds"`
	// LastSuccess is when a probe last came back (null before the first).
	LastSuccess *time.Time `json:"last_success"`
	// Failure is where the chain is broken now, null while it works.
	Failure  *prober.FailureResult `json:"failure"`
	Hops     []HopState            `json:"hops"`
	Segments []SegmentState        `json:"segments"`
}

// HopState is a hop's last minute.
type HopState struct {
	Name string `json:"name"`
	// Residence and Wait are medians over the last minute (0 for HTTP
	// proxies, which report one duration); Wait is null for a STAMP
	// reflector, which reports none.
	ResidenceSeconds float64  `json:"residence_seconds"`
	WaitSeconds      *float64 `json:"wait_seconds"`
	// STAMP: the hop is a STAMP reflector.
	STAMP      bool    `json:"stamp,omitempty"`
	SLASeconds float64 `json:"sla_seconds"`
	// SLA is ok, exceeded or none (no SLA for the hop).
	SLA string `json:"sla"`
	// HTTPHeader: an HTTP proxy, reporting through its Subsegment-Timing
	// header with stamps of ResolutionSeconds.
	HTTPHeader        bool    `json:"http_header,omitempty"`
	ResolutionSeconds float64 `json:"resolution_seconds,omitempty"`
	// Context is the hop's variables (SNMP or in band) while it or a
	// segment of it is out of its SLA.
	Context map[string]float64 `json:"context,omitempty"`
}

// SegmentState is a segment's last minute.
type SegmentState struct {
	From          string  `json:"from"`
	To            string  `json:"to"`
	MedianSeconds float64 `json:"median_seconds"`
	P99Seconds    float64 `json:"p99_seconds"`
	Samples       int     `json:"samples"`
	SLASeconds    float64 `json:"sla_seconds"`
	SLA           string  `json:"sla"`
	// ResolutionSeconds is the figures' resolution where an end is an
	// HTTP proxy (its stamps' unit); absent for relays (microseconds).
	ResolutionSeconds float64 `json:"resolution_seconds,omitempty"`
	// Broken is the reason the chain breaks here now ("" while it works).
	Broken string `json:"broken,omitempty"`
	// Loss and DSCPRemarked: a STAMP segment's packets over the window,
	// and the directions its latest probe saw the DSCP re-marked on.
	Loss         *SegmentLoss `json:"loss,omitempty"`
	DSCPRemarked []string     `json:"dscp_remarked,omitempty"`
	// Path is the routers under a segment over its SLA, from its latest
	// trace (TTL order, to its far end); PathDelay where the delay
	// first appears; PathFlow how it was traced ("tcp reached").
	Path      []PathHopState          `json:"path,omitempty"`
	PathDelay *prober.PathDelayResult `json:"path_delay,omitempty"`
	PathFlow  string                  `json:"path_flow,omitempty"`
}

// SLA states.
const (
	SLAOk       = "ok"
	SLAExceeded = "exceeded"
	SLANone     = "none"
	// SLANoData: no sample in the window. Not a violation: a broken
	// chain shows as broken, a healthy one probed rarely as waiting.
	SLANoData = "no_data"
)

func slaState(value, threshold float64, samples int) string {
	switch {
	case threshold <= 0:
		return SLANone
	case samples == 0:
		return SLANoData
	case value > threshold:
		return SLAExceeded
	}
	return SLAOk
}

// snapshot is the entry's state now.
func (s *entryState) snapshot(now time.Time) EntryState {
	s.mu.Lock()
	defer s.mu.Unlock()
	span, at := s.span(), s.moment(now)
	out := EntryState{Target: s.entry.Target, Module: s.entry.Module, IntervalSeconds: time.Duration(s.entry.Interval).Seconds(), WindowSeconds: span.Seconds(),
		Failure: s.failure, Hops: []HopState{}, Segments: []SegmentState{}}
	if !s.lastSuccess.IsZero() {
		t := s.lastSuccess
		out.LastSuccess = &t
	}
	scratch := make([]float64, 0, windowCap)
	for _, name := range s.hopsInOrder {
		out.Hops = append(out.Hops, s.hopSnapshot(name, at, span, scratch))
	}
	segs := s.segsInOrder
	if f := s.failure; f != nil && !containsSeg(segs, f.From, f.To) {
		segs = append(segs[:len(segs):len(segs)], [2]string{f.From, f.To})
	}
	for _, k := range segs {
		seg := SegmentState{From: k[0], To: k[1], SLASeconds: s.sla.Threshold(k[0], k[1]).Seconds(), ResolutionSeconds: s.segRes[k]}
		if w := s.segments[k]; w != nil {
			q := w.since(at, span, scratch)
			seg.MedianSeconds, seg.P99Seconds, seg.Samples = q.Median, q.P99, q.Samples
		}
		seg.SLA = slaState(seg.MedianSeconds, seg.SLASeconds, seg.Samples)
		if f := s.failure; f != nil && f.From == k[0] && f.To == k[1] {
			seg.Broken = f.Reason
		}
		s.stampSnapshot(&seg, at, span)
		s.addPath(&seg)
		out.Segments = append(out.Segments, seg)
		if seg.SLA == SLAExceeded {
			for i := range out.Hops {
				if out.Hops[i].Name == k[1] && out.Hops[i].Context == nil {
					out.Hops[i].Context = s.contextOf(k[1], s.hops[k[1]])
				}
			}
		}
	}
	return out
}

// hopSnapshot is one hop's state over the window of span ending at at.
func (s *entryState) hopSnapshot(name string, at int64, span time.Duration, scratch []float64) HopState {
	h := HopState{Name: name, SLASeconds: s.sla.HopThreshold(name).Seconds()}
	if res, ok := s.hopRes[name]; ok {
		h.HTTPHeader, h.ResolutionSeconds = true, res
	}
	w := s.hops[name]
	if w == nil {
		h.SLA = slaState(0, h.SLASeconds, 0)
		return h
	}
	res := w.residence.since(at, span, scratch)
	h.ResidenceSeconds, h.STAMP = res.Median, w.noWait
	if !w.noWait {
		wait := w.wait.since(at, span, scratch).Median
		h.WaitSeconds = &wait
	}
	h.SLA = slaState(res.Median, h.SLASeconds, res.Samples)
	if h.SLA == SLAExceeded {
		h.Context = s.contextOf(name, w)
	}
	return h
}

// contextOf is what is known of a hop's variables: the latest SNMP
// context, else what the hop attached in band.
func (s *entryState) contextOf(name string, w *hopWindows) map[string]float64 {
	if c := s.context[name]; len(c) > 0 {
		return c
	}
	if w != nil && len(w.vars) > 0 {
		return w.vars
	}
	return nil
}

func containsSeg(segs [][2]string, from, to string) bool {
	for _, k := range segs {
		if k[0] == from && k[1] == to {
			return true
		}
	}
	return false
}

// Snapshot is every entry's state, in configuration order.
func (m *Manager) Snapshot() []EntryState {
	m.mu.Lock()
	states := make([]*entryState, 0, len(m.entries))
	for _, k := range m.order {
		if r := m.entries[k]; r != nil {
			states = append(states, r.rec.state)
		}
	}
	m.mu.Unlock()
	now := time.Now()
	out := make([]EntryState, 0, len(states))
	for _, s := range states {
		out = append(out, s.snapshot(now))
	}
	return out
}
