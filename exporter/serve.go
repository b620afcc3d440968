// Package exporter is the long-running process: the relay (when it
// listens) and the HTTP side — /metrics of the process itself and /probe,
// scraped like blackbox_exporter, that runs the source end of a chain.
package exporter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/subsegment/subsegment_exporter/collector"
	"github.com/subsegment/subsegment_exporter/prober"
	"github.com/subsegment/subsegment_exporter/relay"
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
	ConfigFile    string
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
	// SNMPClient queries agents for context; nil uses gosnmp.
	SNMPClient snmp.Client
}

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
	holder, err := NewConfigHolder(cfg.ConfigFile, source, logger)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	relayDone := make(chan struct{})
	if cfg.ListenAddress != "" {
		addr, err := relay.ListenAddress(cfg.ListenAddress)
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		rc := cfg.Relay
		rc.Logger = logger
		rc.Metrics = collector.NewRelay(reg)
		if len(cfg.Inband.Specs) > 0 {
			local, err := snmp.NewLocal(cfg.Inband)
			if err != nil {
				return err
			}
			if err := local.Err(); err != nil {
				logger.Warn("in-band variables: first read failed; probes get what could be read", "err", err)
			}
			rc.Annotate = local.Snapshot
		}
		srv, err := relay.New(rc)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("relay listen on %s: %w", addr, err)
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
			defer close(relayDone)
			if err := srv.Serve(ctx, ln); err != nil {
				errc <- err
			}
		}()
	} else {
		close(relayDone)
	}

	probe := &ProbeHandler{
		Config: holder, Source: cfg.Relay.Name, Keys: cfg.Relay.Keys, MaxFrameBytes: cfg.Relay.MaxFrameBytes,
		TimeoutOffset: cfg.TimeoutOffset, Clock: cfg.Relay.Clock, Metrics: source, Names: &prober.NameCache{}, Logger: logger,
	}
	client := cfg.SNMPClient
	if client == nil {
		client = snmp.GoSNMP{}
	}
	querier := snmp.NewQuerier(client)
	querier.Errors = source.SNMPError
	probe.Context = SNMPContext(querier)
	if cfg.Probe != nil {
		cfg.Probe(probe)
	}
	mux, err := Routes(reg, holder, probe, logger)
	if err != nil {
		return err
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := web.ListenAndServe(server, cfg.Web, logger); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("web server: %w", err)
		}
	}()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			if holder.path != "" {
				_ = holder.Reload()
			}
		case runErr = <-errc:
			break loop
		}
	}
	cancel()
	shutdown, cancelShutdown := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShutdown()
	_ = server.Shutdown(shutdown)
	<-relayDone
	return runErr
}

// Routes is the HTTP side: landing page with a probe form, /metrics,
// /probe, /-/healthy, /-/reload and pprof.
func Routes(reg *prometheus.Registry, holder *ConfigHolder, probe http.Handler, logger *slog.Logger) (*http.ServeMux, error) {
	mux := http.NewServeMux()
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "Subsegment Exporter",
		Description: "Which subsegment of a network path adds the delay",
		Version:     version.Info(),
		Profiling:   "true",
		Form: web.LandingForm{
			Action: "probe",
			Inputs: []web.LandingFormInput{
				{Label: "Target (first hop)", Type: "text", Name: "target", Placeholder: "host:port"},
				{Label: "Module", Type: "text", Name: "module", Value: "default"},
				{Label: "Debug", Type: "checkbox", Name: "debug", Value: "true"},
			},
		},
		Links: []web.LandingLinks{
			{Address: "metrics", Text: "Metrics", Description: "the exporter's and the relay's own metrics"},
			{Address: "probe?target=127.0.0.1:9000&module=default&debug=true", Text: "Probe", Description: "an example probe with its log"},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("landing page: %w", err)
	}
	mux.Handle("/", landing)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError), EnableOpenMetrics: true}))
	mux.Handle("/probe", probe)
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "Healthy") })
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
		fmt.Fprintln(w, "configuration reloaded")
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux, nil
}
