package continuous

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
)

// recorder records an entry's probes into its series and into what the
// chain page shows, whichever engine ran them (the generic runner or the
// epoll loop): one place decides what a probe's result means for an
// entry. It is the place to add an entry's further series (a counter
// per entry is a vector in Metrics and a line in observe).
type recorder struct {
	entry   config.Continuous
	module  *config.Module
	metrics *Metrics
	series  *entryMetrics
	state   *entryState
	log     *slog.Logger
	// context reads the hops' context of a probe out of its SLA.
	context func(context.Context, *prober.Result) map[string]map[string]float64
	// first is the entry's first segment as configured (source, first
	// hop), named by no peer: where a failed warm-up's failure is
	// counted when its own segment has no series.
	first [2]string
	// the entry's own series, looked up once
	succeeded, failed prometheus.Counter
	lastSuccess       prometheus.Gauge
	// the series of the previous probe's segments and hops, by position:
	// a chain that did not change finds them without a lookup
	segs []cachedSegment
	hops []cachedHop
}

type cachedSegment struct {
	from, to string
	s        *segmentSeries
}

type cachedHop struct {
	name string
	h    *hopSeries
	// wait: the hop's wait series is made (withWait).
	wait bool
}

func newRecorder(e config.Continuous, m *config.Module, metrics *Metrics, log *slog.Logger) *recorder {
	return &recorder{entry: e, module: m, metrics: metrics, series: metrics.entry(e.Target, e.Module, e.Buckets), log: log,
		state:       newEntryState(e, m),
		succeeded:   metrics.probes.WithLabelValues(e.Target, e.Module, "success"),
		failed:      metrics.probes.WithLabelValues(e.Target, e.Module, "failure"),
		lastSuccess: metrics.lastSuccess.WithLabelValues(e.Target, e.Module)}
}

// observe records a probe (or a connection's warm-up) at now into the
// metrics and the page's windows. connection identifies the connection
// the probe ran on: a connection's TCP retransmissions count from zero.
func (r *recorder) observe(res *prober.Result, warmup bool, connection uint64, now time.Time) {
	r.outcome(res, warmup, now)
	r.observeSTAMP(now, res)
	segs := r.segmentSeries(res, warmup)
	var hops []cachedHop
	if !warmup {
		hops = r.hopSeries(res)
	}
	r.series.mu.Lock()
	for i := range res.Segments {
		if s := segs[i].s; s != nil {
			observeSegment(s, &res.Segments[i], warmup, now)
		}
	}
	for i := range hops {
		if h := hops[i].h; h != nil {
			observeHop(h, &res.Hops[i], now)
		}
	}
	r.series.mu.Unlock()
	r.retransmits(res, segs, connection)
	if !warmup {
		r.slas(res, segs, hops)
	}
	r.state.record(now, res, warmup)
}

// outcome counts the probe and logs a change between working and broken.
func (r *recorder) outcome(res *prober.Result, warmup bool, now time.Time) {
	if f := res.Failure; f != nil {
		r.failed.Inc()
		if from, to, ok := r.failedSegment(f, warmup); ok {
			r.metrics.failed(r.series, from, to, f.Reason)
		}
		if r.state.fail(now, res) {
			r.log.Info("continuous probe failed", "segment", f.From+" -> "+f.To, "reason", f.Reason, "err", f.Message)
		}
		return
	}
	if warmup {
		return
	}
	r.succeeded.Inc()
	r.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
	if r.state.succeed(now) {
		r.log.Info("continuous probe works again")
	}
}

// failedSegment is the segment a failure is counted on (false: none,
// past the entry's bound). A failed warm-up proved nothing, and the names
// of its failure may be a peer's to choose anew on every connection (a
// proxy's refused Subsegment-Timing entry, an error frame, unverified or
// not, an overclaiming record): it is counted on its own segment only
// when that has series already, else on the entry's first segment as
// configured; it makes series for no name a peer gave.
func (r *recorder) failedSegment(f *prober.FailureResult, warmup bool) (from, to string, ok bool) {
	if !warmup {
		return f.From, f.To, r.metrics.segment(r.series, f.From, f.To) != nil
	}
	if r.metrics.knownSegment(r.series, f.From, f.To) != nil {
		return f.From, f.To, true
	}
	return r.first[0], r.first[1], r.metrics.segment(r.series, r.first[0], r.first[1]) != nil
}

// segmentSeries are the series of the result's segments, in its order
// (nil past the entry's bound). A warm-up that failed makes no series:
// its names may be made up anew by every response (a renaming proxy),
// and it proved nothing; its connect times go to series that exist.
func (r *recorder) segmentSeries(res *prober.Result, warmup bool) []cachedSegment {
	series := r.metrics.segment
	if warmup && res.Failure != nil {
		series = r.metrics.knownSegment
	}
	r.segs = r.segs[:min(len(r.segs), len(res.Segments))]
	for i := range res.Segments {
		seg := &res.Segments[i]
		if i < len(r.segs) && r.segs[i].s != nil && r.segs[i].from == seg.From && r.segs[i].to == seg.To {
			continue
		}
		c := cachedSegment{from: seg.From, to: seg.To, s: series(r.series, seg.From, seg.To)}
		if i < len(r.segs) {
			r.segs[i] = c
		} else {
			r.segs = append(r.segs, c)
		}
	}
	return r.segs
}

// hopSeries are the series of the result's hops that reported a
// residence, in its order (nil for the others and past the bound).
func (r *recorder) hopSeries(res *prober.Result) []cachedHop {
	r.hops = r.hops[:min(len(r.hops), len(res.Hops))]
	for i := range res.Hops {
		hr := &res.Hops[i]
		var c cachedHop
		switch {
		case hr.Residence.Max == 0:
			// an HTTP proxy, or an end that reported nothing
		case i < len(r.hops) && r.hops[i].h != nil && r.hops[i].name == hr.Name:
			c = r.hops[i]
		default:
			c = cachedHop{name: hr.Name, h: r.metrics.hop(r.series, hr.Name)}
		}
		if c.h != nil && !c.wait && reportsWait(hr) {
			r.metrics.withWait(c.h)
			c.wait = true
		}
		if i < len(r.hops) {
			r.hops[i] = c
		} else {
			r.hops = append(r.hops, c)
		}
	}
	return r.hops
}

// observeSegment records a segment's connect time and rtt.
func observeSegment(s *segmentSeries, seg *prober.SegmentResult, warmup bool, now time.Time) {
	if seg.Connect != nil {
		s.connect.observe(*seg.Connect, now)
	}
	if !warmup && seg.Samples > 0 {
		s.rtt.observe(seg.RTT.Median, now)
	}
}

// observeHop records a hop's residence and wait (hopSeries made the
// wait's series for a hop that reports one).
func observeHop(h *hopSeries, hr *prober.HopResult, now time.Time) {
	h.residence.observe(hr.Residence.Median, now)
	if reportsWait(hr) {
		h.wait.observe(hr.Wait.Median, now)
	}
}

// reportsWait says whether a hop reports a wait of its own: an HTTP proxy
// (one duration) and a STAMP reflector (no wait) do not.
func reportsWait(hr *prober.HopResult) bool { return !hr.HTTPHeader && !hr.STAMP }

// retransmits adds the retransmissions each end saw on a segment since
// the previous probe on the same connection.
func (r *recorder) retransmits(res *prober.Result, segs []cachedSegment, connection uint64) {
	for i := range res.Segments {
		seg, s := &res.Segments[i], segs[i].s
		if s == nil || seg.TCP == nil && seg.TCPFar == nil {
			continue
		}
		if s.retransmits == nil {
			s.retransmits = r.metrics.retransmits.WithLabelValues(r.entry.Target, r.entry.Module, seg.From, seg.To)
		}
		if s.connection == connection && seg.Retransmits > s.lastRetrans {
			s.retransmits.Add(float64(seg.Retransmits - s.lastRetrans))
		}
		s.connection, s.lastRetrans = connection, seg.Retransmits
	}
}

// slas sets the SLA gauges of segments and hops a probe measured for the
// first time.
func (r *recorder) slas(res *prober.Result, segs []cachedSegment, hops []cachedHop) {
	t, mod := r.entry.Target, r.entry.Module
	for i := range res.Segments {
		seg, s := &res.Segments[i], segs[i].s
		if s == nil || s.slaSet || seg.Samples == 0 {
			continue
		}
		s.slaSet = true
		if th := r.module.SLA.Threshold(seg.From, seg.To); th > 0 {
			r.metrics.segSLA.WithLabelValues(t, mod, seg.From, seg.To).Set(th.Seconds())
		}
	}
	for i := range hops {
		h := hops[i].h
		if h == nil || h.slaSet {
			continue
		}
		h.slaSet = true
		if th := r.module.SLA.HopThreshold(hops[i].name); th > 0 {
			r.metrics.hopSLA.WithLabelValues(t, mod, hops[i].name).Set(th.Seconds())
		}
	}
}

// contextWanted says whether the probe shows a segment or hop out of its
// SLA and the entry may read its hops' context now (at most every
// contextEvery); it takes the turn when it says so.
func (r *recorder) contextWanted(res *prober.Result, now time.Time) bool {
	if r.context == nil {
		return false
	}
	// The turn is taken only by a probe that needs the context: one
	// within its SLA must not delay the next violation's by contextEvery.
	violated := res.Failure != nil || sla.Violated(res, r.module.SLA)
	return violated && r.state.contextDue(now)
}

// readContext reads the hops' context of res, within the module's
// timeout.
func (r *recorder) readContext(ctx context.Context, res *prober.Result) {
	cctx, cancel := context.WithTimeout(ctx, time.Duration(r.module.Timeout))
	defer cancel()
	r.state.setContext(time.Now(), r.context(cctx, res))
}
