package exporter

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/subsegment/subsegment_exporter/collector"
	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// DefaultTimeoutOffset is taken off Prometheus' scrape timeout, so that the
// answer arrives before Prometheus gives up.
const DefaultTimeoutOffset = 500 * time.Millisecond

// ConfigHolder holds the loaded configuration and the chain's keys, and
// reloads both; a failed reload keeps the previous ones. Reloads (SIGHUP,
// /-/reload) run one at a time: each stores its configuration and keys
// and applies them as one step, so that /config and the continuous
// runners never end on different ones.
type ConfigHolder struct {
	path    string
	keys    KeyFile
	limits  config.Limits
	cur     atomic.Pointer[config.Config]
	metrics *collector.Source
	log     *slog.Logger
	// reloading serialises Reload and OnLoad.
	reloading sync.Mutex
	onLoad    func(*config.Config)
}

// KeyFile is the chain's key file (--relay.auth-key-file) that every
// reload reads again into Ring, by the rule of every secret file: the
// relay's, the STAMP reflector's and the source's sessions opened after
// a reload use the keys it read; sessions already open keep theirs. No
// Path: the ring keeps what it holds.
type KeyFile struct {
	Path string
	Ring *frame.KeyRing
}

// NewConfigHolder loads path (none when empty: /probe then refuses every
// request, there being no module to allow a target), checking modules
// against the process's frame limits; keys are re-read at every reload.
func NewConfigHolder(path string, keys KeyFile, limits config.Limits, metrics *collector.Source, log *slog.Logger) (*ConfigHolder, error) {
	h := &ConfigHolder{path: path, keys: keys, limits: limits, metrics: metrics, log: log}
	if path == "" {
		return h, nil
	}
	metrics.WatchConfig()
	if err := h.Reload(); err != nil {
		return nil, err
	}
	return h, nil
}

// Get returns the current configuration, nil when none was given.
func (h *ConfigHolder) Get() *config.Config { return h.cur.Load() }

// Reloadable reports whether there is a file to reload.
func (h *ConfigHolder) Reloadable() bool { return h.path != "" || h.keys.Path != "" }

// Reload reads the key file and the configuration file again (secret
// files included) and applies them; a concurrent reload waits for this
// one.
func (h *ConfigHolder) Reload() error {
	h.reloading.Lock()
	defer h.reloading.Unlock()
	if !h.Reloadable() {
		return fmt.Errorf("no --config.file or --relay.auth-key-file to reload")
	}
	keys, err := h.readKeys()
	var c *config.Config
	if err == nil && h.path != "" {
		c, err = config.Load(h.path, h.limits)
	}
	if err != nil {
		if h.path != "" {
			h.metrics.Reloaded(false)
		}
		h.log.Error("configuration not loaded; the previous one stays in use", "file", h.path, "key_file", h.keys.Path, "err", err)
		return err
	}
	if h.keys.Path != "" && !slices.EqualFunc(keys, h.keys.Ring.Current(), bytes.Equal) {
		h.keys.Ring.Set(keys)
		h.log.Info("keys loaded: relay sessions, open ones included, use them from their next frame", "file", h.keys.Path, "keys", len(keys))
	}
	if c == nil {
		return nil
	}
	c.UseKeys(h.keys.Ring.Current())
	h.cur.Store(c)
	h.metrics.Reloaded(true)
	h.log.Info("configuration loaded", "file", h.path, "modules", len(c.Modules))
	if h.onLoad != nil {
		h.onLoad(c)
	}
	return nil
}

// readKeys reads the key file, if there is one.
func (h *ConfigHolder) readKeys() (frame.Keys, error) {
	if h.keys.Path == "" {
		return nil, nil
	}
	keys, err := config.ReadKeyFile(h.keys.Path)
	if err != nil {
		return nil, fmt.Errorf("--relay.auth-key-file: %w", err)
	}
	return keys, nil
}

// OnLoad calls fn with the current configuration, and again after every
// successful reload.
func (h *ConfigHolder) OnLoad(fn func(*config.Config)) {
	h.reloading.Lock()
	defer h.reloading.Unlock()
	h.onLoad = fn
	fn(h.Get())
}

// ProbeHandler answers /probe?target=HOST:PORT&module=NAME.
type ProbeHandler struct {
	Config        *ConfigHolder
	Source        string
	Keys          *frame.KeyRing // the chain's: each probe run takes the current ones
	MaxFrameBytes int
	TimeoutOffset time.Duration
	Clock         clock.Clock
	// Dial opens TCP connections to first hops (nil: plainly); TLS makes
	// them TLS.
	Dial    func(ctx context.Context, address string) (net.Conn, error)
	TLS     *tls.Config
	Metrics *collector.Source
	Names   *prober.NameCache
	// History keeps the latest runs for the landing page; may be nil.
	History *History
	Logger  *slog.Logger
	// Context adds the SNMP context of a probe run; nil adds nothing.
	Context func(ctx context.Context, cfg *config.Config, module *config.Module, r *prober.Result, verdicts []sla.Verdict, log *slog.Logger) Extra
	// Limit bounds the requests that probe at once; nil: no bound.
	Limit *ProbeLimit
	// Tracer traces the first segment of runs whose module traces (nil:
	// runs do not trace); TraceOptions bound it.
	Tracer       *trace.Tracer
	TraceOptions trace.Options
}

// Extra is what a context provider adds to a /probe answer.
type Extra struct {
	// Write adds metrics to the answer.
	Write func(e *collector.Exposition)
	// Debug is shown in debug output.
	Debug string
}

func (h *ProbeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		// Defense in depth: nothing a client or a peer sends reaches a
		// panic, but should a bug, the process serves on.
		if p := recover(); p != nil {
			h.Metrics.Panicked()
			h.Logger.Error("panic while serving /probe; please report it", "panic", p, "url", r.URL.String(), "stack", string(debug.Stack()))
			http.Error(w, "internal error while probing (logged)", http.StatusInternalServerError)
		}
	}()
	start := time.Now()
	q := r.URL.Query()
	moduleName := q.Get("module")
	if moduleName == "" {
		moduleName = "default"
	}
	cfg := h.Config.Get()
	var module *config.Module
	if cfg != nil {
		module = cfg.Modules[moduleName]
	}
	reject := func(format string, args ...any) {
		if module != nil {
			h.Metrics.Probed(moduleName, "rejected", 0)
		} else {
			h.Metrics.UnknownModule()
		}
		msg := fmt.Sprintf(format, args...)
		h.Logger.Debug("probe request rejected", "reason", msg, "remote", r.RemoteAddr)
		http.Error(w, msg, http.StatusBadRequest)
	}
	if cfg == nil {
		reject("no module is configured: start the exporter with --config.file")
		return
	}
	if module == nil {
		reject("unknown module %q: known modules are %s", truncate(moduleName, 64), moduleNames(cfg))
		return
	}
	target := q.Get("target")
	if target == "" {
		reject("target parameter is missing: /probe?target=HOST:PORT&module=%s", moduleName)
		return
	}
	if err := module.Allows(target); err != nil {
		var na *config.NotAllowedError
		if errors.As(err, &na) {
			reject("%v: add it to modules.%s.targets to allow it", err, moduleName)
			return
		}
		reject("%v", err)
		return
	}
	timeout, err := scrapeTimeout(r, module, h.TimeoutOffset)
	if err != nil {
		reject("%v", err)
		return
	}
	if !h.Limit.acquire(w) {
		h.Logger.Debug("probe request refused: --probe.max-concurrent reached", "remote", r.RemoteAddr)
		return
	}
	defer h.Limit.release()
	h.probe(w, r, cfg, moduleName, module, target, timeout, start)
}

// probe runs an accepted /probe request and writes the answer.
func (h *ProbeHandler) probe(w http.ResponseWriter, r *http.Request, cfg *config.Config, moduleName string, module *config.Module, target string, timeout time.Duration, start time.Time) {
	debug := r.URL.Query().Get("debug") == "true"
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
	logger.Debug("probing", "module", moduleName, "target", target, "timeout", timeout)
	opts := h.Options(module, target, timeout, logger)
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
	logger.Debug("probe done", "module", moduleName, "target", target, "result", result, "duration", res.Duration, "hops_reached", res.HopsReached)
	h.Metrics.Probed(moduleName, result, time.Since(start))

	answer := answerPool.Get().(*bytes.Buffer)
	defer answerPool.Put(answer)
	answer.Reset()
	e := collector.Exposition{OnError: h.Metrics.CollectError}
	collector.WriteProbe(&e, res, verdicts)
	if extra.Write != nil {
		extra.Write(&e)
	}
	err := e.Err()
	if err != nil {
		h.Logger.Error("a metric of the /probe answer could not be built; please report it", "module", moduleName, "target", target, "err", err)
	}
	e.WriteTo(answer)
	item := HistoryItem{Time: start, Module: moduleName, Target: target, Success: res.Success, Duration: time.Since(start), Answer: answer.String(), config: cfg}
	if f := res.Failure; f != nil {
		item.Failure = fmt.Sprintf("%s -> %s (%s)", f.From, f.To, f.Reason)
	}
	if debug {
		item.Logs = logs.String()
	}
	h.History.Add(item)
	if !debug {
		if err != nil {
			// As promhttp does: an answer that would be incomplete is an
			// error, visible as a failed scrape, never a silent gap.
			http.Error(w, "the /probe answer could not be built (logged): "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", collector.ContentType)
		w.Header().Set("Content-Length", strconv.Itoa(answer.Len()))
		if _, err := w.Write(answer.Bytes()); err != nil {
			h.Logger.Debug("client left before the answer was written", "err", err)
		}
		return
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "Logs for the probe:\n%s\n", logs.String())
	if extra.Debug != "" {
		fmt.Fprintf(&out, "SNMP context:\n%s\n", extra.Debug)
	}
	out.WriteString("Metrics that would have been returned:\n")
	if err != nil {
		fmt.Fprintf(&out, "errors: %v\n", err)
	}
	out.Write(answer.Bytes())
	fmt.Fprintf(&out, "\nModule configuration (secrets redacted):\n%s", cfg.Redacted(moduleName))
	writeText(w, h.Logger, out.String())
}

// answerPool keeps answer buffers: an answer is a few KiB, written once.
var answerPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Options are the probe options of a target and module, for /probe and
// for continuous probing alike.
func (h *ProbeHandler) Options(module *config.Module, target string, timeout time.Duration, logger *slog.Logger) prober.Options {
	opts := sla.ProbeOptions(module, target)
	opts.Source, opts.Timeout, opts.MaxFrameBytes, opts.Keys = h.Source, timeout, h.MaxFrameBytes, h.Keys.Current()
	opts.Clock, opts.Dial, opts.Names, opts.Logger = h.Clock, h.Dial, h.Names, logger
	if opts.HTTP == nil {
		// Relay chains use the relays' TLS; an http module brings its own.
		opts.TLS = h.TLS
	}
	if opts.Trace != nil {
		if h.Tracer == nil {
			opts.Trace = nil // this process does not trace (--no-trace.enabled)
		} else {
			opts.Trace.Tracer, opts.Trace.Options = h.Tracer, h.TraceOptions
		}
	}
	return opts
}

// writeText answers with plain text; a failed write means the client left,
// which is worth a debug line and nothing more.
func writeText(w http.ResponseWriter, log *slog.Logger, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if _, err := io.WriteString(w, text); err != nil {
		log.Debug("client left before the answer was written", "err", err)
	}
}

// truncate keeps client-supplied text short in answers and logs.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
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

// DemotedLogger logs what a probe run logs at debug level of the process
// log: a one-shot command's failure is its output, not a log line.
func DemotedLogger(process *slog.Logger) *slog.Logger { return probeLogger(nil, process.Handler()) }

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
