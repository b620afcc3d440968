// Package exporter is the long-running process: the relay (when it
// listens) and the HTTP side — /metrics of the process itself and /probe,
// scraped like blackbox_exporter, that runs the source end of a chain.
//
// It owns the HTTP routes, reloads, the probe history and the wiring of the
// relay, the probe handler, continuous probing and SNMP context.
// Layering (internal/architecture_test.go): floor 6; it may import every
// package below it, relay included (only it and the command import relay),
// and never cmd or internal/demo.
package exporter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/subsegment/subsegment_exporter/collector"
	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/source/continuous"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
	"github.com/subsegment/subsegment_exporter/relay"
	"github.com/subsegment/subsegment_exporter/relay/reflector"
	"github.com/subsegment/subsegment_exporter/snmp"
)

// DefaultListenAddress is the HTTP port of the exporter.
const DefaultListenAddress = ":9717"

// Config is what a serving process runs.
type Config struct {
	// ListenAddress makes the process a relay; empty: a pure source.
	ListenAddress string
	Relay         relay.Config
	// ConfigFile holds the /probe modules; empty: /probe refuses requests.
	ConfigFile string
	// KeyFile is --relay.auth-key-file, read again at every reload
	// (Relay.Keys are what it held at the start).
	KeyFile       string
	TimeoutOffset time.Duration
	Web           *web.FlagConfig
	Logger        *slog.Logger
	// Probe customises the /probe handler (SNMP context, TLS dialing);
	// it may be nil.
	Probe func(*ProbeHandler)
	// Listening, if set, is called with the relay's address once it listens.
	Listening func(relayAddr string)
	// Inband are the relay's own variables attached to probes that ask.
	Inband snmp.LocalOptions
	// Pprof serves /debug/pprof/ (off by default: it exposes internals
	// and can cost CPU on demand).
	Pprof bool
	// SNMPClient queries agents for context; nil uses gosnmp, within
	// SNMPWalk.
	SNMPClient snmp.Client
	// SNMPWalk bounds the walks of the gosnmp client (zero: defaults).
	SNMPWalk snmp.WalkLimits
	// HistoryLimit is how many /probe runs the landing page lists.
	HistoryLimit int
	// IdleTimeout closes keep-alive connections idle this long (0:
	// DefaultIdleTimeout).
	IdleTimeout time.Duration
	// MaxConcurrentProbes bounds the /probe requests probing at once; 0:
	// no bound.
	MaxConcurrentProbes int
	// STAMP, when set, runs a STAMP reflector (--stamp.listen-address)
	// with the relay's keys; its metrics join /metrics.
	STAMP *reflector.Config
	// Tracer traces the routers under the process's segments: the
	// relay's next hop and /probe's first segment (nil: never, and the
	// relay answers that it does not trace). TraceOptions bound each.
	Tracer       *trace.Tracer
	TraceOptions trace.Options
	// ContinuousNativeOnly keeps continuous histograms native only
	// (--no-continuous.classic-buckets).
	ContinuousNativeOnly bool
}

// DefaultIdleTimeout closes keep-alive HTTP connections idle this long
// (--web.idle-timeout): longer than the usual scrape intervals, so that
// Prometheus keeps its connections, short enough that idle clients do
// not pile up.
const DefaultIdleTimeout = 2 * time.Minute

// readHeaderTimeout bounds how long a client may take to send a request's
// headers.
const readHeaderTimeout = 10 * time.Second

// Serve runs the relay (if configured) and the HTTP server until ctx ends.
func Serve(ctx context.Context, cfg Config) error {
	logger := cfg.Logger
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		versioncollector.NewCollector("subsegment_exporter"),
	)
	source := collector.NewSource(reg)
	traces := startTraces(cfg, reg)
	// The chain's keys: the relay, the STAMP reflector and /probe take
	// them from one ring, which every reload fills from the key file.
	if cfg.Relay.KeyRing == nil {
		cfg.Relay.KeyRing = frame.NewKeyRing(cfg.Relay.Keys)
	}
	keys := KeyFile{Path: cfg.KeyFile, Ring: cfg.Relay.KeyRing}
	holder, err := NewConfigHolder(cfg.ConfigFile, keys, config.Limits{MaxFrameBytes: cfg.Relay.MaxFrameBytes, MaxHops: cfg.Relay.MaxHops, AuthKey: len(cfg.Relay.Keys) > 0}, source, logger)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	relayDone, err := startRelay(ctx, cfg, reg, traces, errc)
	if err != nil {
		return err
	}
	reflectorDone, err := startReflector(ctx, cfg, reg, errc)
	if err != nil {
		cancel()
		<-relayDone
		return err
	}
	probe, querier := newProbeHandler(cfg, reg, holder, source)
	manager := startContinuous(reg, holder, probe, querier, cfg.ContinuousNativeOnly, logger)
	defer manager.Stop()
	exModule, exTarget := exampleProbe(holder.Get())
	mux, err := Routes(reg, holder, probe, logger, RouteOptions{Pprof: cfg.Pprof, Module: exModule, Target: exTarget, Chains: manager.Snapshot, History: probe.History})
	if err != nil {
		return err
	}
	idle := cfg.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: idle}
	go func() {
		if err := web.ListenAndServe(server, cfg.Web, logger); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- webError(err, cfg.Web)
		}
	}()
	runErr := waitForEnd(ctx, holder, errc)
	cancel()
	shutdown, cancelShutdown := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShutdown()
	_ = server.Shutdown(shutdown)
	<-relayDone
	<-reflectorDone
	return runErr
}

// startRelay starts the relay when the process listens, and returns a
// channel closed once it has stopped (at once without a relay).
func startRelay(ctx context.Context, cfg Config, reg *prometheus.Registry, traces relay.TraceMetrics, errc chan<- error) (<-chan struct{}, error) {
	done := make(chan struct{})
	if cfg.ListenAddress == "" {
		close(done)
		return done, nil
	}
	logger := cfg.Logger
	addr, err := peer.ListenAddress(cfg.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	rc := cfg.Relay
	rc.Logger = logger
	rc.Metrics = collector.NewRelay(reg)
	rc.Tracer, rc.TraceOptions, rc.TraceMetrics = cfg.Tracer, cfg.TraceOptions, traces
	if peer.IsSTAMPTarget(rc.ForwardTo) {
		rc.STAMPMetrics = collector.NewRelaySTAMP(reg)
	}
	if len(cfg.Inband.Specs) > 0 {
		local, err := snmp.NewLocal(cfg.Inband)
		if err != nil {
			return nil, err
		}
		if err := local.Err(); err != nil {
			logger.Warn("in-band variables: first read failed; probes get what could be read", "err", err)
		}
		rc.Annotate = local.Snapshot
	}
	srv, err := relay.New(rc)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("relay listen on %s: %w", addr, err)
	}
	next := rc.ForwardTo
	if next == "" {
		next = "(end of chain: echo)"
	}
	logger.Info("relay listening", "address", ln.Addr().String(), "name", rc.Name, "forward_to", next, "engine", srv.Engine())
	if cfg.Listening != nil {
		cfg.Listening(ln.Addr().String())
	}
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, ln); err != nil {
			errc <- err
		}
	}()
	return done, nil
}

// newProbeHandler builds /probe: its clock, its SNMP context (through the
// querier it returns, shared with continuous entries) and its limit.
func newProbeHandler(cfg Config, reg *prometheus.Registry, holder *ConfigHolder, source *collector.Source) (*ProbeHandler, *snmp.Querier) {
	probeClock := cfg.Relay.Clock
	if probeClock == nil {
		// One clock for every probe of the process: its synchronisation
		// state (adjtimex) is then read once a second, not once per
		// probe of each of a thousand continuous entries.
		probeClock = clock.NewSystem()
	}
	probe := &ProbeHandler{
		History: NewHistory(cfg.HistoryLimit),
		Config:  holder, Source: cfg.Relay.Name, Keys: cfg.Relay.KeyRing, MaxFrameBytes: cfg.Relay.MaxFrameBytes,
		TimeoutOffset: cfg.TimeoutOffset, Clock: probeClock, Metrics: source, Names: &prober.NameCache{}, Logger: cfg.Logger,
		Limit:  NewProbeLimit(reg, cfg.MaxConcurrentProbes),
		Tracer: cfg.Tracer, TraceOptions: cfg.TraceOptions,
	}
	client := cfg.SNMPClient
	if client == nil {
		client = snmp.GoSNMP{WalkLimits: cfg.SNMPWalk}
	}
	querier := snmp.NewQuerier(client)
	querier.Errors = source.SNMPError
	probe.Context = SNMPContext(querier)
	if cfg.Probe != nil {
		cfg.Probe(probe)
	}
	return probe, querier
}

// startContinuous runs the configuration's continuous entries, probed as
// /probe probes, and applies every reload to them.
func startContinuous(reg *prometheus.Registry, holder *ConfigHolder, probe *ProbeHandler, querier *snmp.Querier, nativeOnly bool, logger *slog.Logger) *continuous.Manager {
	var opts []continuous.MetricsOption
	if nativeOnly {
		opts = append(opts, continuous.WithoutClassicBuckets())
	}
	manager := continuous.NewManager(continuous.NewMetrics(reg, opts...), func(target string, m *config.Module) prober.Options {
		return probe.Options(m, target, time.Duration(m.Timeout), logger)
	}, logger)
	manager.SetContext(func(ctx context.Context, cfg *config.Config, m *config.Module, r *prober.Result) map[string]map[string]float64 {
		return snmp.Investigate(ctx, querier, cfg, m, r, sla.Evaluate(r, m.SLA)).ByHop()
	})
	holder.OnLoad(manager.Apply)
	return manager
}

// waitForEnd reloads the configuration on SIGHUP until ctx ends or a
// server fails, and returns that failure.
func waitForEnd(ctx context.Context, holder *ConfigHolder, errc <-chan error) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			if holder.Reloadable() {
				_ = holder.Reload()
			}
		case err := <-errc:
			return err
		}
	}
}

// startReflector starts the STAMP reflector when one is configured, and
// returns a channel closed once it has stopped (at once without one).
func startReflector(ctx context.Context, cfg Config, reg *prometheus.Registry, errc chan<- error) (<-chan struct{}, error) {
	if cfg.STAMP == nil {
		done := make(chan struct{})
		close(done)
		return done, nil
	}
	rc := *cfg.STAMP
	rc.Keys, rc.KeyRing, rc.Logger = cfg.Relay.Keys, cfg.Relay.KeyRing, cfg.Logger
	if rc.Clock == nil {
		rc.Clock = cfg.Relay.Clock
	}
	r, err := reflector.New(rc)
	if err != nil {
		return nil, err
	}
	reg.MustRegister(r)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Serve(ctx); err != nil {
			errc <- err
		}
	}()
	return done, nil
}

// webError says what to do when the HTTP port is taken: most often a
// second relay on the host, started like the first.
func webError(err error, flags *web.FlagConfig) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("web server: %w", err)
	}
	addr := DefaultListenAddress
	if flags != nil && flags.WebListenAddresses != nil && len(*flags.WebListenAddresses) > 0 {
		addr = strings.Join(*flags.WebListenAddresses, ",")
	}
	return fmt.Errorf("web server: %w: another process serves HTTP on %s (another relay on this host?): give each process its own --web.listen-address, e.g. --web.listen-address=:9718", err, addr)
}

// RouteOptions are the optional parts of the HTTP side.
type RouteOptions struct {
	// Pprof serves /debug/pprof/.
	Pprof bool
	// Module and Target make the landing page's example probe link; no
	// link without a target.
	Module, Target string
	// Chains are the continuously probed chains the landing page draws
	// (nil: none).
	Chains func() []continuous.EntryState
	// History lists recent /probe runs (nil: none).
	History *History
}

// exampleProbe picks a probe the landing page can link to: the first
// target without a wildcard of the default module (else of any module).
func exampleProbe(c *config.Config) (module, target string) {
	if c == nil {
		return "", ""
	}
	names := slices.Sorted(maps.Keys(c.Modules))
	if i := slices.Index(names, "default"); i > 0 {
		names = append([]string{"default"}, slices.Delete(names, i, i+1)...)
	}
	for _, name := range names {
		for _, t := range c.Modules[name].Targets {
			if !strings.Contains(t, "*") {
				return name, t
			}
		}
	}
	return "", ""
}

func landingLinks(opts RouteOptions) []web.LandingLinks {
	links := []web.LandingLinks{
		{Address: "metrics", Text: "Metrics", Description: "the exporter's and the relay's own metrics"},
		{Address: "config", Text: "Configuration", Description: "the loaded configuration file, secrets redacted"},
		{Address: "api/v1/chains", Text: "Chains API", Description: "the continuously probed chains drawn below, as JSON"},
	}
	if opts.Target != "" {
		q := url.Values{"target": {opts.Target}, "module": {opts.Module}, "debug": {"true"}}
		links = append(links, web.LandingLinks{Address: "probe?" + q.Encode(), Text: "Probe", Description: "an example probe of " + opts.Target + " (module " + opts.Module + ") with its log"})
	}
	return links
}

// Routes is the HTTP side: landing page with a probe form, /metrics,
// /probe, /-/healthy, /-/reload and, when enabled, pprof.
func Routes(reg *prometheus.Registry, holder *ConfigHolder, probe http.Handler, logger *slog.Logger, opts RouteOptions) (*http.ServeMux, error) {
	mux := http.NewServeMux()
	chains := opts.Chains
	if chains == nil {
		chains = func() []continuous.EntryState { return nil }
	}
	page := &pageHandlers{chains: chains, history: opts.History, opts: opts, logger: logger}
	mux.HandleFunc("/", page.landing)
	mux.HandleFunc("/chains", page.fragment)
	mux.HandleFunc("/api/v1/chains", page.api)
	mux.HandleFunc("/probe/history", page.historyItem)
	mux.Handle("/config", configPage(holder, logger))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError), EnableOpenMetrics: true}))
	mux.Handle("/probe", probe)
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { writeText(w, logger, "Healthy\n") })
	mux.HandleFunc("/-/reload", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "reload with POST", http.StatusMethodNotAllowed)
			return
		}
		if err := holder.Reload(); err != nil {
			http.Error(w, fmt.Sprintf("failed to reload config: %v", err), http.StatusInternalServerError)
			return
		}
		writeText(w, logger, "configuration reloaded\n")
	})
	if opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux, nil
}

// startTraces says once, at start, how this process traces the routers
// under its segments (the TCP flow with CAP_NET_RAW, else the UDP
// fallback), and registers the trace metrics.
func startTraces(cfg Config, reg *prometheus.Registry) *collector.Traces {
	if cfg.Tracer == nil {
		cfg.Logger.Info("traces of the routers under this process's segments are off (--no-trace.enabled)")
		return collector.NewTraces(reg, "none")
	}
	method, why := trace.Capability()
	if cfg.TraceOptions.Method != "" {
		method, why = cfg.TraceOptions.Method, why+"; --trace.method="+string(cfg.TraceOptions.Method)
	}
	if method == trace.MethodTCP {
		cfg.Logger.Info("traces of the routers under this process's segments use the connections' own TCP flow", "method", method, "why", why)
	} else {
		cfg.Logger.Info("traces of the routers under this process's segments use the UDP fallback: give the process CAP_NET_RAW (docs/trace.md) to trace the connections' own TCP flow", "method", method, "why", why)
	}
	return collector.NewTraces(reg, string(method))
}
