package nagios

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
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
	// Verbose is the number of -v flags.
	Verbose int
	// Timeout bounds the whole check (the plugin timeout).
	Timeout time.Duration
	Keys    frame.Keys
	// STAMPAuth chooses a stamp:// target's mode without a configuration
	// file (--stamp.auth: stamp.ChooseMode); a module's authenticated:
	// decides with one.
	STAMPAuth     string
	MaxFrameBytes int
	MaxHops       int
	SNMPClient    snmp.Client
	// Dial reaches the first hop over TCP (nil: plainly); TLS makes the
	// connection TLS.
	Dial func(ctx context.Context, address string) (net.Conn, error)
	TLS  *tls.Config
	// Trace traces every segment (--trace); otherwise the module's trace
	// mode applies. Tracer is the process's (nil: no trace).
	Trace        bool
	Tracer       *trace.Tracer
	TraceOptions trace.Options
}

// Run performs the check and returns its state and output. Problems with
// the arguments or the configuration are UNKNOWN; a broken chain is
// CRITICAL. An unexpected panic is UNKNOWN too, with what happened.
func Run(ctx context.Context, o Options) (state State, out string) {
	defer func() {
		if p := recover(); p != nil {
			state, out = unknown("internal error (please report it): %v; %s", p, firstFrames(debug.Stack()))
		}
	}()
	t, err := o.thresholds()
	if err != nil {
		return unknown("%v", err)
	}
	if o.Timeout <= 0 {
		return unknown("--timeout %v must be positive", o.Timeout)
	}
	cfg := &config.Config{}
	module := config.DefaultModule(o.Target, o.Timeout)
	if module.IsSTAMP() {
		mode, err := stamp.ChooseMode(o.STAMPAuth, len(o.Keys) > 0)
		if err != nil {
			return unknown("%v", err)
		}
		module.STAMP.Authenticated = mode == stamp.Authenticated
	}
	if o.ConfigFile != "" {
		if cfg, err = config.Load(o.ConfigFile, config.Limits{MaxFrameBytes: o.MaxFrameBytes, MaxHops: o.MaxHops, AuthKey: len(o.Keys) > 0}); err != nil {
			return unknown("%v", err)
		}
		if module = cfg.Modules[o.Module]; module == nil {
			return unknown("module %q is not in %s", o.Module, o.ConfigFile)
		}
		if err := module.Allows(o.Target); err != nil {
			return unknown("%v (module %s)", err, o.Module)
		}
		t.fromModule(module.SLA, o.Warning == "" && o.Critical == "")
	}
	opts := sla.ProbeOptions(module, o.Target)
	opts.Source, opts.Timeout, opts.MaxFrameBytes, opts.Keys = o.Source, min(o.Timeout, time.Duration(module.Timeout)), o.MaxFrameBytes, o.Keys
	opts.Dial, opts.Logger = o.Dial, slog.New(slog.DiscardHandler)
	if opts.HTTP == nil {
		opts.TLS = o.TLS
	}
	switch {
	case o.Trace && (opts.HTTP != nil || opts.STAMP != nil):
		return unknown("--trace traces relay chains, not HTTP proxies or a STAMP reflector")
	case o.Trace && o.Tracer == nil:
		return unknown("--trace needs --trace.enabled")
	case o.Trace:
		opts.Trace = &prober.TraceOptions{}
	}
	if opts.Trace != nil {
		if o.Tracer == nil {
			opts.Trace = nil
		} else {
			opts.Trace.Tracer, opts.Trace.Options = o.Tracer, o.TraceOptions
		}
	}
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

// thresholds parses -w, -c and --segment.
func (o *Options) thresholds() (Thresholds, error) {
	t := Thresholds{Verbose: o.Verbose}
	var err error
	if o.Warning != "" {
		if t.Warn, err = ParseRange(o.Warning); err != nil {
			return t, fmt.Errorf("-w: %w", err)
		}
	}
	if o.Critical != "" {
		if t.Crit, err = ParseRange(o.Critical); err != nil {
			return t, fmt.Errorf("-c: %w", err)
		}
	}
	for _, spec := range o.Segments {
		from, to, w, c, err := ParseSegment(spec)
		if err != nil {
			return t, err
		}
		if t.Segments == nil {
			t.Segments = map[[2]string][2]Range{}
		}
		t.Segments[[2]string{from, to}] = [2]Range{w, c}
	}
	return t, nil
}

// fromModule adds the module's SLAs as critical thresholds: every hop's
// residence SLA, and, when neither -w nor -c is given, the segments' rtt
// SLAs (a --segment override still wins for its segment).
func (t *Thresholds) fromModule(s config.SLA, segments bool) {
	for hop, d := range s.Hops {
		if t.Hops == nil {
			t.Hops = map[string]Range{}
		}
		t.Hops[hop] = above(time.Duration(d))
	}
	if !segments {
		return
	}
	t.SLA = &s
}

// above is the range that alerts above d.
func above(d time.Duration) Range {
	r, _ := ParseRange(fmt.Sprintf("~:%gms", float64(d)/1e6))
	return r
}

func unknown(format string, args ...any) (State, string) {
	return Unknown, UnknownText(format, args...)
}

// firstFrames keeps the first lines of a stack for an UNKNOWN line.
func firstFrames(stack []byte) string {
	lines := strings.Split(string(stack), "\n")
	return strings.Join(lines[:min(len(lines), 8)], " ")
}
