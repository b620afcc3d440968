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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/subsegment/subsegment_exporter/relay"
)

// DefaultListenAddress is the HTTP port of the exporter.
const DefaultListenAddress = ":9717"

// Config is what a serving process runs.
type Config struct {
	// ListenAddress makes the process a relay; empty: a pure source.
	ListenAddress string
	Relay         relay.Config
	Web           *web.FlagConfig
	Logger        *slog.Logger
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
		logger.Info("relay listening", "address", ln.Addr().String(), "name", rc.Name, "forward_to", next)
		go func() {
			defer close(relayDone)
			if err := srv.Serve(ctx, ln); err != nil {
				errc <- err
			}
		}()
	} else {
		close(relayDone)
	}

	mux := http.NewServeMux()
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "Subsegment Exporter",
		Description: "Which subsegment of a network path adds the delay",
		Version:     version.Info(),
		Profiling:   "true",
		Links:       []web.LandingLinks{{Address: "metrics", Text: "Metrics"}},
	})
	if err != nil {
		return fmt.Errorf("landing page: %w", err)
	}
	mux.Handle("/", landing)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError)}))
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "Healthy") })
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := web.ListenAndServe(server, cfg.Web, logger); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("web server: %w", err)
		}
	}()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	shutdown, cancelShutdown := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShutdown()
	_ = server.Shutdown(shutdown)
	<-relayDone
	return runErr
}
