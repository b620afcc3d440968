package nagios

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/subsegment/subsegment_exporter/config"
	"github.com/subsegment/subsegment_exporter/frame"
	"github.com/subsegment/subsegment_exporter/prober"
	"github.com/subsegment/subsegment_exporter/sla"
	"github.com/subsegment/subsegment_exporter/snmp"
)

// Options of one check.
type Options struct {
	Target string
	// ConfigFile and Module choose probes, SLAs and SNMP context; without
	// a file the module defaults apply and any target may be checked.
	ConfigFile string
	Module     string
	Source     string
	Warning    string
	Critical   string
	Segments   []string
	// Timeout bounds the whole check (the plugin timeout).
	Timeout       time.Duration
	Keys          frame.Keys
	MaxFrameBytes int
	SNMPClient    snmp.Client
	// Dial reaches the first hop (TLS); nil dials plain TCP.
	Dial func(ctx context.Context, address string) (net.Conn, error)
}

// Run performs the check and returns its state and output. Problems with
// the arguments or the configuration are UNKNOWN; a broken chain is
// CRITICAL.
func Run(ctx context.Context, o Options) (State, string) {
	unknown := func(format string, args ...any) (State, string) {
		var b writer
		WriteUnknown(&b, format, args...)
		return Unknown, b.String()
	}
	var t Thresholds
	var err error
	if o.Warning != "" {
		if t.Warn, err = ParseRange(o.Warning); err != nil {
			return unknown("-w: %v", err)
		}
	}
	if o.Critical != "" {
		if t.Crit, err = ParseRange(o.Critical); err != nil {
			return unknown("-c: %v", err)
		}
	}
	for _, spec := range o.Segments {
		from, to, w, c, err := ParseSegment(spec)
		if err != nil {
			return unknown("%v", err)
		}
		if t.Segments == nil {
			t.Segments = map[[2]string][2]Range{}
		}
		t.Segments[[2]string{from, to}] = [2]Range{w, c}
	}
	if o.Timeout <= 0 {
		return unknown("--timeout %v must be positive", o.Timeout)
	}
	cfg := &config.Config{}
	module := &config.Module{Probes: config.DefaultProbes, Interval: config.Duration(config.DefaultInterval), Timeout: config.Duration(o.Timeout)}
	if o.ConfigFile != "" {
		if cfg, err = config.Load(o.ConfigFile); err != nil {
			return unknown("%v", err)
		}
		if module = cfg.Modules[o.Module]; module == nil {
			return unknown("module %q is not in %s", o.Module, o.ConfigFile)
		}
		if err := module.Allows(o.Target); err != nil {
			return unknown("%v (module %s)", err, o.Module)
		}
	}
	opts := prober.Options{Target: o.Target, Source: o.Source, Count: module.Probes, Interval: time.Duration(module.Interval),
		PayloadBytes: module.PayloadBytes, Timeout: min(o.Timeout, time.Duration(module.Timeout)), MaxFrameBytes: o.MaxFrameBytes, Keys: o.Keys, Dial: o.Dial,
		Logger: slog.New(slog.DiscardHandler)}
	opts.AnnotateWarmup, opts.AnnotateAfter = sla.Annotation(module)
	if err := opts.Validate(); err != nil {
		return unknown("%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	res := prober.Run(ctx, opts)
	var sctx *snmp.Context
	if module.SNMP != nil || module.Inband != config.InbandNever && module.Inband != "" {
		client := o.SNMPClient
		if client == nil {
			client = snmp.GoSNMP{}
		}
		sctx = snmp.Investigate(ctx, snmp.NewQuerier(client), cfg, module, res, sla.Evaluate(res, module.SLA))
	}
	return Evaluate(res, t, sctx)
}

type writer struct{ b []byte }

func (w *writer) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
func (w *writer) String() string              { return string(w.b) }
