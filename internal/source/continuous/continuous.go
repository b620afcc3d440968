// Package continuous probes chains between scrapes: for each entry of
// the configuration's continuous list it keeps one chain of connections
// open (reconnecting with backoff when it breaks), sends one probe per
// interval, and records every probe into per-segment and per-hop
// histograms on /metrics, and into the recent windows the chain page
// draws. A reload keeps the entries that did not change, with their
// histograms, and restarts those that did with the new configuration,
// secrets included.
//
// Layering (internal/architecture_test.go): floor 4; it may import the
// prober, sla, internal/config and internal/wire, never relay, snmp (the
// exporter hands it a context function), collector, internal/output or
// internal/exporter.
package continuous

import (
	"context"
	"hash/fnv"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
)

// ContextFunc reads the context (SNMP, in band) of a probe's hops that are
// out of their SLA: hop -> variable -> value.
type ContextFunc func(ctx context.Context, cfg *config.Config, m *config.Module, r *prober.Result) map[string]map[string]float64

// contextEvery bounds how often an entry out of its SLA asks for context.
const contextEvery = 30 * time.Second

// OptionsFunc builds the probe options of a target and module, as /probe
// builds them (source name, keys, frame limits, TLS, dialer).
type OptionsFunc func(target string, m *config.Module) prober.Options

// Manager runs the continuous entries.
type Manager struct {
	// applying serialises Apply and Stop; mu guards the fields below and
	// is held only briefly, since the chain page takes it.
	applying sync.Mutex
	mu       sync.Mutex
	metrics  *Metrics
	options  OptionsFunc
	context  ContextFunc
	cfg      *config.Config
	log      *slog.Logger
	runners  map[entryKey]*runner
	// order is the configuration's order of the entries.
	order []entryKey
	// ctx ends every runner when the manager stops.
	ctx    context.Context
	cancel context.CancelFunc
}

// NewManager returns a manager with no entries; Apply starts them.
func NewManager(metrics *Metrics, options OptionsFunc, log *slog.Logger) *Manager {
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{metrics: metrics, options: options, log: log, runners: map[entryKey]*runner{}, ctx: ctx, cancel: cancel}
}

// SetContext makes entries out of their SLA read their hops' context (at
// most every 30 s each), for the chain page.
func (m *Manager) SetContext(fn ContextFunc) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.context = fn
}

// Apply makes the running entries those of cfg: an entry whose
// fingerprint (target, module settings, interval, buckets, and every
// secret and file it uses, by value) is unchanged keeps running with its
// histograms; others stop (their series go) and start again with the new
// configuration. Apply returns once the stopped entries have ended; the
// chain page keeps answering meanwhile.
func (m *Manager) Apply(cfg *config.Config) {
	m.applying.Lock()
	defer m.applying.Unlock()
	var entries []config.Continuous
	want := map[entryKey]string{}
	if cfg != nil {
		entries = cfg.Continuous
		for _, e := range entries {
			want[entryKey{e.Target, e.Module}] = cfg.Fingerprint(e)
		}
	}
	m.stopChanged(cfg, entries, want)
	started := m.startMissing(cfg, entries, want)
	if started > 0 || len(entries) > 0 {
		m.log.Info("continuous probing", "entries", len(entries), "started", started)
	}
}

// stopChanged ends the runners whose entry is gone or changed. They are
// all cancelled at once under the lock, then awaited outside it: a runner
// in an SNMP query ends only at that query's timeout, and the chain page
// must not wait for it (nor for the sum of several).
func (m *Manager) stopChanged(cfg *config.Config, entries []config.Continuous, want map[entryKey]string) {
	type stopping struct {
		key entryKey
		r   *runner
	}
	var stop []stopping
	m.mu.Lock()
	m.cfg = cfg
	for k, r := range m.runners {
		if fp, ok := want[k]; ok && fp == r.fingerprint {
			continue
		}
		r.cancel()
		stop = append(stop, stopping{k, r})
		delete(m.runners, k)
	}
	m.order = m.order[:0]
	for _, e := range entries {
		m.order = append(m.order, entryKey{e.Target, e.Module})
	}
	m.mu.Unlock()
	for _, s := range stop {
		s.r.wait()
		// Only once it has ended: a running entry would make its series
		// again. A changed entry starts after this, with new series.
		m.metrics.remove(s.key.target, s.key.module)
	}
}

// startMissing starts a runner for every entry without one and returns
// how many it started.
func (m *Manager) startMissing(cfg *config.Config, entries []config.Continuous, want map[entryKey]string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	started := 0
	for _, e := range entries {
		k := entryKey{e.Target, e.Module}
		if _, ok := m.runners[k]; ok {
			continue
		}
		mod := cfg.Modules[e.Module]
		r := newRunner(e, mod, m.options(e.Target, mod), m.metrics, m.log.With("target", e.Target, "module", e.Module))
		r.fingerprint = want[k]
		if m.context != nil {
			fn := m.context
			r.context = func(ctx context.Context, res *prober.Result) map[string]map[string]float64 {
				return fn(ctx, cfg, mod, res)
			}
		}
		m.runners[k] = r
		r.start(m.ctx)
		started++
	}
	return started
}

// Stop ends every entry and waits for them, outside the page's lock.
func (m *Manager) Stop() {
	m.applying.Lock()
	defer m.applying.Unlock()
	m.cancel()
	m.mu.Lock()
	runners := slices.Collect(maps.Values(m.runners))
	m.mu.Unlock()
	for _, r := range runners {
		r.wait()
	}
}

// runner probes one entry.
type runner struct {
	entry       config.Continuous
	module      *config.Module
	opts        prober.Options
	metrics     *Metrics
	series      *entryMetrics
	log         *slog.Logger
	fingerprint string
	cancel      context.CancelFunc
	done        chan struct{}
	state       *entryState
	connection  uint64
	// context reads the hops' context of a probe out of its SLA.
	context func(context.Context, *prober.Result) map[string]map[string]float64
	// the entry's own series, looked up once
	succeeded, failed prometheus.Counter
	lastSuccess       prometheus.Gauge
	traces            traceSchedule
}

func newRunner(e config.Continuous, m *config.Module, opts prober.Options, metrics *Metrics, log *slog.Logger) *runner {
	opts.Logger = log
	return &runner{entry: e, module: m, opts: opts, metrics: metrics, series: metrics.entry(e.Target, e.Module, e.Buckets), log: log,
		done: make(chan struct{}), state: newEntryState(e, m),
		succeeded:   metrics.probes.WithLabelValues(e.Target, e.Module, "success"),
		failed:      metrics.probes.WithLabelValues(e.Target, e.Module, "failure"),
		lastSuccess: metrics.lastSuccess.WithLabelValues(e.Target, e.Module)}
}

func (r *runner) start(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.run(ctx)
	}()
}

func (r *runner) wait() { <-r.done }

// maxBackoff bounds the pause before reconnecting a broken chain.
const maxBackoff = 30 * time.Second

// run keeps the chain open and probes it every interval until ctx ends.
// Entries start spread over their interval, so that many entries do not
// all probe in the same instant.
func (r *runner) run(ctx context.Context) {
	interval := time.Duration(r.entry.Interval)
	h := fnv.New64a()
	_, _ = h.Write([]byte(r.entry.Target + "\x00" + r.entry.Module))
	timer := time.NewTimer(time.Duration(h.Sum64() % uint64(interval)))
	defer timer.Stop()
	backoff := time.Duration(0)
	var s *prober.Session
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if s == nil {
			var warm *prober.Result
			s, warm = prober.Open(ctx, r.opts)
			r.connection++
			r.traceReopened()
			r.observe(warm, true)
			if s == nil {
				backoff = min(max(2*backoff, interval), maxBackoff)
				timer.Reset(backoff)
				continue
			}
			backoff = 0
			timer.Reset(interval)
			continue
		}
		res := s.Probe(ctx)
		if ctx.Err() != nil {
			return
		}
		r.observe(res, false)
		r.readContext(ctx, res)
		if res.Failure != nil && !s.Survives(res) {
			s.Close()
			s = nil
		} else {
			r.traceStep(ctx, s)
		}
		timer.Reset(interval)
	}
}

// observe records a probe (or a connection's warm-up) into the metrics
// and the page's windows.
func (r *runner) observe(res *prober.Result, warmup bool) {
	t, mod := r.entry.Target, r.entry.Module
	now := time.Now()
	if f := res.Failure; f != nil {
		r.failed.Inc()
		if r.metrics.segment(r.series, f.From, f.To) != nil {
			r.metrics.failures.WithLabelValues(t, mod, f.From, f.To, f.Reason).Inc()
		}
		if r.state.fail(now, res) {
			r.log.Info("continuous probe failed", "segment", f.From+" -> "+f.To, "reason", f.Reason, "err", f.Message)
		}
	} else if !warmup {
		r.succeeded.Inc()
		r.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
		if r.state.succeed(now) {
			r.log.Info("continuous probe works again")
		}
	}
	r.observeSTAMP(now, res)
	// A warm-up that failed makes no series: its names may be made up
	// anew by every response (a renaming proxy), and it proved nothing;
	// its connect times go to series that exist.
	series := r.metrics.segment
	if warmup && res.Failure != nil {
		series = r.metrics.knownSegment
	}
	for i := range res.Segments {
		seg := &res.Segments[i]
		s := series(r.series, seg.From, seg.To)
		if s == nil {
			continue
		}
		if seg.Connect != nil {
			s.connect.Observe(*seg.Connect)
		}
		if seg.TCP != nil || seg.TCPFar != nil {
			if s.retransmits == nil {
				s.retransmits = r.metrics.retransmits.WithLabelValues(t, mod, seg.From, seg.To)
			}
			if s.connection == r.connection && seg.Retransmits > s.lastRetrans {
				s.retransmits.Add(float64(seg.Retransmits - s.lastRetrans))
			}
			s.connection, s.lastRetrans = r.connection, seg.Retransmits
		}
		if warmup || seg.Samples == 0 {
			continue
		}
		s.rtt.Observe(seg.RTT.Median)
		r.state.segment(now, seg.From, seg.To, seg.RTT.Median)
		if !s.slaSet {
			s.slaSet = true
			if th := r.module.SLA.Threshold(seg.From, seg.To); th > 0 {
				r.metrics.segSLA.WithLabelValues(t, mod, seg.From, seg.To).Set(th.Seconds())
			}
		}
	}
	if warmup {
		return
	}
	r.state.chain(res)
	for i := range res.Hops {
		hr := &res.Hops[i]
		if hr.Residence.Max == 0 {
			continue // an HTTP proxy, or an end that reported nothing
		}
		r.state.hop(now, hr.Name, hr.Residence.Median, hr.Wait.Median, !hr.STAMP, hr.Vars)
		h := r.metrics.hop(r.series, hr.Name)
		if h == nil {
			continue
		}
		h.residence.Observe(hr.Residence.Median)
		if !hr.HTTPHeader && !hr.STAMP {
			r.metrics.observeWait(h, hr.Wait.Median)
		}
		if !h.slaSet {
			h.slaSet = true
			if th := r.module.SLA.HopThreshold(hr.Name); th > 0 {
				r.metrics.hopSLA.WithLabelValues(t, mod, hr.Name).Set(th.Seconds())
			}
		}
	}
}

// readContext asks for the hops' context while the probe shows a segment
// or hop out of its SLA, at most every contextEvery.
func (r *runner) readContext(ctx context.Context, res *prober.Result) {
	if r.context == nil {
		return
	}
	violated := res.Failure != nil
	for _, v := range sla.Evaluate(res, r.module.SLA) {
		violated = violated || v.Exceeded
	}
	// The turn is taken only by a probe that needs the context: one
	// within its SLA must not delay the next violation's by contextEvery.
	if !violated || !r.state.contextDue(time.Now()) {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, time.Duration(r.module.Timeout))
	defer cancel()
	r.state.setContext(time.Now(), r.context(cctx, res))
}
