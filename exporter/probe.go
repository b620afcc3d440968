package exporter

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"

	"github.com/subsegment/subsegment_exporter/clock"
	"github.com/subsegment/subsegment_exporter/collector"
	"github.com/subsegment/subsegment_exporter/config"
	"github.com/subsegment/subsegment_exporter/frame"
	"github.com/subsegment/subsegment_exporter/prober"
	"github.com/subsegment/subsegment_exporter/sla"
)

// DefaultTimeoutOffset is taken off Prometheus' scrape timeout, so that the
// answer arrives before Prometheus gives up.
const DefaultTimeoutOffset = 500 * time.Millisecond

// ConfigHolder holds the loaded configuration and reloads it; a failed
// reload keeps the previous one.
type ConfigHolder struct {
	path    string
	cur     atomic.Pointer[config.Config]
	metrics *collector.Source
	log     *slog.Logger
}

// NewConfigHolder loads path (none when empty: /probe then refuses every
// request, there being no module to allow a target).
func NewConfigHolder(path string, metrics *collector.Source, log *slog.Logger) (*ConfigHolder, error) {
	h := &ConfigHolder{path: path, metrics: metrics, log: log}
	if path == "" {
		return h, nil
	}
	if err := h.Reload(); err != nil {
		return nil, err
	}
	return h, nil
}

// Get returns the current configuration, nil when none was given.
func (h *ConfigHolder) Get() *config.Config { return h.cur.Load() }

// Reload reads the file again.
func (h *ConfigHolder) Reload() error {
	if h.path == "" {
		return fmt.Errorf("no --config.file to reload")
	}
	c, err := config.Load(h.path)
	if err != nil {
		h.metrics.Reloaded(false)
		h.log.Error("configuration not loaded; the previous one stays in use", "file", h.path, "err", err)
		return err
	}
	h.cur.Store(c)
	h.metrics.Reloaded(true)
	h.log.Info("configuration loaded", "file", h.path, "modules", len(c.Modules))
	return nil
}

// ProbeHandler answers /probe?target=HOST:PORT&module=NAME.
type ProbeHandler struct {
	Config        *ConfigHolder
	Source        string
	Keys          frame.Keys
	MaxFrameBytes int
	TimeoutOffset time.Duration
	Clock         clock.Clock
	Dial          func(ctx context.Context, address string) (net.Conn, error)
	Metrics       *collector.Source
	Names         *prober.NameCache
	Logger        *slog.Logger
	// Context adds the SNMP context of a probe run; nil adds nothing.
	Context func(ctx context.Context, cfg *config.Config, module *config.Module, r *prober.Result, verdicts []sla.Verdict, log *slog.Logger) Extra
}

// Extra is what a context provider adds to a /probe answer.
type Extra struct {
	// Collect adds metrics.
	Collect func(ch chan<- prometheus.Metric)
	// Debug is shown in debug output.
	Debug string
}

func (h *ProbeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	q := r.URL.Query()
	moduleName := q.Get("module")
	if moduleName == "" {
		moduleName = "default"
	}
	reject := func(format string, args ...any) {
		h.Metrics.Probed(moduleName, "rejected", 0)
		msg := fmt.Sprintf(format, args...)
		h.Logger.Debug("probe request rejected", "reason", msg, "remote", r.RemoteAddr)
		http.Error(w, msg, http.StatusBadRequest)
	}
	cfg := h.Config.Get()
	if cfg == nil {
		reject("no module is configured: start the exporter with --config.file")
		return
	}
	module := cfg.Modules[moduleName]
	if module == nil {
		reject("unknown module %q: known modules are %s", moduleName, moduleNames(cfg))
		return
	}
	target := q.Get("target")
	if target == "" {
		reject("target parameter is missing: /probe?target=HOST:PORT&module=%s", moduleName)
		return
	}
	if err := module.Allows(target); err != nil {
		reject("%v: add it to modules.%s.targets to allow it", err, moduleName)
		return
	}
	timeout, err := scrapeTimeout(r, module, h.TimeoutOffset)
	if err != nil {
		reject("%v", err)
		return
	}
	debug := q.Get("debug") == "true"
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()

	// The probe's own log is kept only for debug=true; otherwise it goes to
	// the process log at debug level, where it usually costs nothing.
	var logs bytes.Buffer
	var debugLog io.Writer
	if debug {
		debugLog = &logs
	}
	logger := probeLogger(debugLog, h.Logger.Handler())
	logger.Info("probing", "module", moduleName, "target", target, "timeout", timeout)
	opts := prober.Options{
		Target: target, Source: h.Source, Count: module.Probes, Interval: time.Duration(module.Interval),
		PayloadBytes: module.PayloadBytes, Timeout: timeout, MaxFrameBytes: h.MaxFrameBytes, Keys: h.Keys,
		Clock: h.Clock, Dial: h.Dial, Names: h.Names, Logger: logger,
	}
	opts.AnnotateWarmup, opts.AnnotateAfter = sla.Annotation(module)
	res := prober.Run(ctx, opts)
	verdicts := sla.Evaluate(res, module.SLA)
	var extra Extra
	if h.Context != nil {
		extra = h.Context(ctx, cfg, module, res, verdicts, logger)
	}
	result := "success"
	if !res.Success {
		result = "failure"
	}
	logger.Info("probe done", "module", moduleName, "target", target, "result", result, "duration", res.Duration, "hops_reached", res.HopsReached)
	h.Metrics.Probed(moduleName, result, time.Since(start))

	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector.Probe{Result: res, Verdicts: verdicts, Extra: extra.Collect})
	if !debug {
		// A /probe answer is a few KiB: compressing it costs more CPU than
		// it saves (a fresh deflate state per answer).
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{DisableCompression: true}).ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Logs for the probe:\n%s\n", logs.String())
	if extra.Debug != "" {
		fmt.Fprintf(w, "SNMP context:\n%s\n", extra.Debug)
	}
	fmt.Fprintf(w, "Metrics that would have been returned:\n")
	mfs, err := reg.Gather()
	if err != nil {
		fmt.Fprintf(w, "gather: %v\n", err)
	}
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(w, mf); err != nil {
			fmt.Fprintf(w, "render %s: %v\n", mf.GetName(), err)
		}
	}
	fmt.Fprintf(w, "\nModule configuration (secrets redacted):\n%s", cfg.Redacted(moduleName))
}

func moduleNames(c *config.Config) string {
	var out []string
	for name := range c.Modules {
		out = append(out, name)
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// scrapeTimeout is the module's timeout, cut down to Prometheus' scrape
// timeout minus the offset when the request says what that is.
func scrapeTimeout(r *http.Request, m *config.Module, offset time.Duration) (time.Duration, error) {
	timeout := time.Duration(m.Timeout)
	if v := r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"); v != "" {
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil || secs <= 0 {
			return 0, fmt.Errorf("X-Prometheus-Scrape-Timeout-Seconds %q is not a positive number of seconds", v)
		}
		if t := time.Duration(secs*float64(time.Second)) - offset; t < timeout {
			timeout = t
		}
	}
	if timeout <= 0 {
		return 0, fmt.Errorf("the scrape timeout less --probe.timeout-offset (%v) leaves no time to probe: raise scrape_timeout", offset)
	}
	return timeout, nil
}

// probeLogger is a probe's logger: everything into debugLog (when not
// nil, for debug=true), and into the process log at debug level.
func probeLogger(debugLog io.Writer, process slog.Handler) *slog.Logger {
	demoted := &demoteHandler{process}
	if debugLog == nil {
		return slog.New(demoted)
	}
	return slog.New(&teeHandler{a: slog.NewTextHandler(debugLog, &slog.HandlerOptions{Level: slog.LevelDebug}), b: demoted})
}

// teeHandler sends each record to two handlers: the probe's own log (for
// debug=true) and the process log (demoted to debug level).
type teeHandler struct{ a, b slog.Handler }

func (t *teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return t.a.Enabled(ctx, l) || t.b.Enabled(ctx, l)
}

func (t *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if t.a.Enabled(ctx, r.Level) {
		_ = t.a.Handle(ctx, r.Clone())
	}
	if t.b.Enabled(ctx, r.Level) {
		return t.b.Handle(ctx, r)
	}
	return nil
}

func (t *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &teeHandler{a: t.a.WithAttrs(as), b: t.b.WithAttrs(as)}
}

func (t *teeHandler) WithGroup(name string) slog.Handler {
	return &teeHandler{a: t.a.WithGroup(name), b: t.b.WithGroup(name)}
}

// demoteHandler passes records on at debug level: a probe's log belongs
// in the process log only when that logs at debug.
type demoteHandler struct{ h slog.Handler }

func (d *demoteHandler) Enabled(ctx context.Context, _ slog.Level) bool {
	return d.h.Enabled(ctx, slog.LevelDebug)
}

func (d *demoteHandler) Handle(ctx context.Context, r slog.Record) error {
	r2 := slog.NewRecord(r.Time, slog.LevelDebug, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool { r2.AddAttrs(a); return true })
	return d.h.Handle(ctx, r2)
}

func (d *demoteHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &demoteHandler{d.h.WithAttrs(as)}
}

func (d *demoteHandler) WithGroup(name string) slog.Handler {
	return &demoteHandler{d.h.WithGroup(name)}
}
