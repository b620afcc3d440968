// Package continuous probes chains between scrapes: for each entry of
// the configuration's continuous list it keeps one chain of connections
// open (reconnecting with backoff when it breaks), sends one probe per
// interval at the entry's own place in it, and records every probe into
// per-segment and per-hop histograms on /metrics, and into the recent
// windows the chain page draws. A reload keeps the entries that did not
// change, with their histograms, and restarts those that did with the
// new configuration, secrets included.
//
// Two engines run the entries, and one recorder records them: plain-TCP
// relay chains run on one epoll loop (loop*.go), every other entry (HTTP
// and TLS chains, or any protocol a prober.Session speaks) on a runner of
// its own, a goroutine with a timer and a Session (runner.go). Both take
// what a probe means from the prober and record it through recorder.go;
// schedule.go spreads the probes.
//
// Layering (internal/architecture_test.go): floor 4; it may import the
// prober, sla, internal/config and internal/wire, never relay, snmp (the
// exporter hands it a context function), collector, internal/output or
// internal/exporter.
package continuous

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
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
	entries  map[entryKey]*running
	// order is the configuration's order of the entries.
	order []entryKey
	// ctx ends every entry when the manager stops.
	ctx    context.Context
	cancel context.CancelFunc
	// moment is the manager's monotonic clock of schedules, since
	// origin; every entry's grid starts at epoch on it.
	origin time.Time
	moment moments
	epoch  int64
	// loop runs the plain-TCP entries (started with the first); noLoop
	// runs every entry on a runner.
	loop   *loop
	noLoop bool
	// runners counts the entries running on runners (their batches).
	runners atomic.Int64
}

// running is an entry being probed, by either engine.
type running struct {
	rec         *recorder
	fingerprint string
	// stop ends the entry without waiting; wait waits until it ended.
	stop, wait func()
}

// NewManager returns a manager with no entries; Apply starts them.
func NewManager(metrics *Metrics, options OptionsFunc, log *slog.Logger) *Manager {
	ctx, cancel := context.WithCancel(context.Background())
	origin := time.Now()
	return &Manager{metrics: metrics, options: options, log: log, entries: map[entryKey]*running{}, ctx: ctx, cancel: cancel,
		origin: origin, moment: monotonicSince(origin)}
}

// SetContext makes entries out of their SLA read their hops' context (at
// most every 30 s each), for the chain page.
func (m *Manager) SetContext(fn ContextFunc) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.context = fn
}

// RunAllOnRunners runs every entry on a runner of its own, plain-TCP
// ones too (tests compare both engines); before Apply.
func (m *Manager) RunAllOnRunners() { m.noLoop = true }

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

// stopChanged ends the entries that are gone or changed. They are all
// stopped at once under the lock, then awaited outside it: an entry in
// an SNMP query ends only at that query's timeout, and the chain page
// must not wait for it (nor for the sum of several).
func (m *Manager) stopChanged(cfg *config.Config, entries []config.Continuous, want map[entryKey]string) {
	type stopping struct {
		key entryKey
		r   *running
	}
	var stop []stopping
	m.mu.Lock()
	m.cfg = cfg
	for k, r := range m.entries {
		if fp, ok := want[k]; ok && fp == r.fingerprint {
			continue
		}
		r.stop()
		stop = append(stop, stopping{k, r})
		delete(m.entries, k)
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

// startMissing starts every entry that does not run and returns how many
// it started.
func (m *Manager) startMissing(cfg *config.Config, entries []config.Continuous, want map[entryKey]string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	started := 0
	for _, e := range entries {
		k := entryKey{e.Target, e.Module}
		if _, ok := m.entries[k]; ok {
			continue
		}
		mod := cfg.Modules[e.Module]
		rec := newRecorder(e, mod, m.metrics, m.log.With("target", e.Target, "module", e.Module))
		if m.context != nil {
			fn := m.context
			rec.context = func(ctx context.Context, res *prober.Result) map[string]map[string]float64 {
				return fn(ctx, cfg, mod, res)
			}
		}
		r := m.start(rec, m.options(e.Target, mod))
		r.fingerprint = want[k]
		m.entries[k] = r
		started++
	}
	return started
}

// start runs an entry on the engine for it: the loop for a plain-TCP
// relay chain, a runner otherwise (or when the loop cannot start).
func (m *Manager) start(rec *recorder, opts prober.Options) *running {
	rec.first = [2]string{opts.Source, opts.ConfiguredFirstHop()}
	sched := newSchedule(rec.entry, m.epoch)
	if !m.noLoop && onLoop(opts) {
		if l := m.tcpLoop(); l != nil {
			e := newTCPEntry(l, rec, opts, sched, m.ctx)
			if l.post(func() { l.add(e) }) {
				return &running{rec: rec, stop: func() { e.stop() }, wait: func() { e.wait() }}
			}
		}
	}
	r := newRunner(rec, opts, sched, m.moment, &m.runners)
	r.start(m.ctx)
	return &running{rec: rec, stop: r.stop, wait: r.wait}
}

// tcpLoop is the manager's loop, started at its first entry; nil when it
// cannot start (the entries then run on runners).
func (m *Manager) tcpLoop() *loop {
	if m.loop == nil {
		l, err := newLoop(m.origin, m.moment, m.log)
		if err != nil {
			m.log.Warn("continuous probing: the event loop cannot start; every entry runs on a goroutine of its own", "err", err)
			m.noLoop = true
			return nil
		}
		m.loop = l
	}
	return m.loop
}

// Stop ends every entry and waits for them, outside the page's lock.
func (m *Manager) Stop() {
	m.applying.Lock()
	defer m.applying.Unlock()
	m.cancel()
	m.mu.Lock()
	entries := slices.Collect(maps.Values(m.entries))
	for _, r := range entries {
		r.stop()
	}
	l := m.loop
	m.mu.Unlock()
	for _, r := range entries {
		r.wait()
	}
	if l != nil {
		l.stop()
	}
}
