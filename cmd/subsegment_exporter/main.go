// Command subsegment_exporter is one binary for every hop of a chain: a
// relay (--listen), the source exporter scraped like blackbox_exporter
// (/probe), a one-shot mtr-like probe, the original tool's stdin stream
// mode, and a Nagios check. This file only wires flags to packages.
//
// Layering (internal/architecture_test.go): floor 7, the top; nothing
// imports it.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/demo"
	"github.com/subsegment/subsegment_exporter/internal/exporter"
	_ "github.com/subsegment/subsegment_exporter/internal/host/buildinfo" // the version of a plain `go build`
	"github.com/subsegment/subsegment_exporter/internal/host/lowlatency"
	"github.com/subsegment/subsegment_exporter/internal/host/memlimit"
	"github.com/subsegment/subsegment_exporter/internal/output/nagios"
	"github.com/subsegment/subsegment_exporter/internal/output/report"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/source/stream"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
	"github.com/subsegment/subsegment_exporter/internal/wire/transport"
	"github.com/subsegment/subsegment_exporter/relay"
	"github.com/subsegment/subsegment_exporter/relay/reflector"
	"github.com/subsegment/subsegment_exporter/snmp"
)

const name = "subsegment_exporter"

// Exit codes of the probe and send commands.
const (
	exitOK     = 0
	exitBroken = 1
	exitUsage  = 2
)

// inspect, set only by tests, receives the application with every command
// and flag declared, before any argument is parsed.
var inspect func(*kingpin.Application)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	// "@file" is not an argument file here: Nagios and Icinga pass ranges
	// like @50:100 as separate arguments.
	kingpin.EnableFileExpansion = false
	app := kingpin.New(name, "Find which subsegment of a network path adds the delay: a TCP relay chain, a blackbox-style Prometheus exporter, a Nagios check and an mtr-like probe in one binary.")
	versionText := version.Print(name)
	if slices.Contains(args, "--help-man") {
		// The man page's title line holds the version: one line, not the
		// build report --version prints.
		versionText = version.Version
	}
	app.Version(versionText)
	app.VersionFlag.Short('V')
	app.HelpFlag.Short('h')
	app.UsageWriter(os.Stdout)
	var logConfig promslog.Config
	promslogflag.AddFlags(app, &logConfig)

	// The original tool's flags, with their short forms, shared by every command.
	var hop relayFlags
	app.Flag("listen", "TCP address to listen on as a relay: host:port, *:port for all interfaces, [::1]:port. Without it the process is a pure source exporter (or, with --forward-to, the original stdin stream mode).").Short('l').StringVar(&hop.listen)
	app.Flag("forward-to", "Next hop, host:port; or stamp://host[:port][?name=NAME], a STAMP reflector (a router) measured with one STAMP packet per probe as the chain's last hop. A relay without it is the end of the chain and echoes every probe.").Short('f').StringVar(&hop.forwardTo)
	hop.timeout = relay.DefaultTimeout
	durationVar(app.Flag("timeout", "Timeout of each operation: a connect, a write, the wait for the next frame (which must arrive whole within it) or a reply; for probe, each probe's round trip; for check, the whole check. Seconds (5, 0.5) or with a unit (5s, 250ms).").Short('t').Default("10s"), &hop.timeout)
	app.Flag("remove-perf-headers", "Remove the performance headers received from beyond this relay, in both directions (an administrative boundary: the source sees this relay as the last hop).").Short('r').BoolVar(&hop.removePerfHeaders)
	app.Flag("stdin-block-size", "Stream mode: bytes of stdin per block (one performance header each), 1 to 16777216.").Short('s').Default(fmt.Sprint(stream.DefaultBlockSize)).IntVar(&hop.blockSize)
	app.Flag("relay.name", "This hop's name in records, segment labels and errors (letters, digits, '.', '-', '_'; at most 64). Default: the full host name.").StringVar(&hop.name)
	app.Flag("relay.auth-key-file", "File with the chain's shared HMAC-SHA256 key, one per line (a second line is accepted too, for a key rollover). With a key, every frame is signed and unsigned or forged frames are refused. Read again on SIGHUP and POST /-/reload: every connection, open ones included, uses the new keys from its next frame (a dropped key is refused at once).").ExistingFileVar(&hop.keyFile)
	app.Flag("relay.max-frame-bytes", "Largest frame accepted or sent (the default fits 16 MiB stream blocks; buffers over 64 KiB come from --relay.buffer-budget-bytes).").Default(fmt.Sprint(frame.DefaultMaxFrameBytes)).IntVar(&hop.maxFrame)
	app.Flag("relay.buffer-budget-bytes", "Memory all connections together may hold in read buffers over 64 KiB (large stream blocks); buffers grow with the bytes that arrived, not with a header's claim, and connections that have not sent a valid frame yet share at most half of it (those idle longest are evicted for a newer buffer that does not fit). A frame that does not fit is refused as overloaded.").Default(fmt.Sprint(frame.DefaultBufferBudget)).Int64Var(&hop.budget)
	app.Flag("relay.max-hops", "Probes that already passed this many hops are refused (too_many_hops).").Default(fmt.Sprint(frame.DefaultMaxHops)).IntVar(&hop.maxHops)
	app.Flag("relay.max-connections", "Concurrent upstream connections a relay serves. At the limit the oldest connection that has not sent a valid frame is closed to admit the new one; when every connection carries probes, the new one is answered 'overloaded' and closed.").Default(fmt.Sprint(relay.DefaultMaxConnections)).IntVar(&hop.maxConns)
	app.Flag("relay.tls-cert-file", "This hop's TLS certificate (PEM): serve TLS to the upstream hop, and present it when dialing with TLS.").ExistingFileVar(&hop.tls.Cert)
	app.Flag("relay.tls-key-file", "Key of --relay.tls-cert-file (PEM).").ExistingFileVar(&hop.tls.Key)
	app.Flag("relay.tls-ca-file", "CA certificates (PEM): dial the next hop (a source: the first hop) with TLS and verify it against them.").ExistingFileVar(&hop.tls.CA)
	app.Flag("relay.tls-client-auth", "Require the upstream hop's certificate, signed by --relay.tls-ca-file (mutual TLS).").BoolVar(&hop.tls.ClientAuth)
	app.Flag("relay.tls-server-name", "Name the next hop's certificate is verified for (default: the host of its address).").StringVar(&hop.tls.ServerName)
	var tf traceFlags
	app.Flag("trace.enabled", "Trace the routers under this process's segments when a probe asks (a relay: the route to its --forward-to, on the chain's own connection; a source: to its first hop). --no-trace.enabled answers that it does not trace.").Default("true").BoolVar(&tf.enabled)
	app.Flag("trace.max-ttl", "Largest TTL a trace probes (1 to 64).").Default(fmt.Sprint(trace.DefaultMaxTTL)).IntVar(&tf.opts.MaxTTL)
	app.Flag("trace.probes", "Probes per TTL of a trace (1 to 10).").Default(fmt.Sprint(trace.DefaultProbes)).IntVar(&tf.opts.Probes)
	app.Flag("trace.max-packets-per-second", "Probe packets all traces of this process send per second, at most (bursts of 10).").Default(fmt.Sprint(trace.DefaultRate)).Float64Var(&tf.rate)
	app.Flag("trace.method", "How traces probe: auto (the connection's own TCP flow with CAP_NET_RAW, else UDP), tcp (fail without CAP_NET_RAW), udp (never raw sockets).").Default("auto").EnumVar(&tf.method, "auto", "tcp", "udp")
	app.Flag("relay.engine", "How a relay drives plain-TCP sessions: epoll (one thread, lowest round trip) or goroutines (two per session). TLS sessions always use goroutines.").Default(relay.EngineEpoll).EnumVar(&hop.engine, relay.EngineEpoll, relay.EngineGoroutines)

	serveCmd := app.Command("serve", "Run as relay (with --listen) and exporter; the default command, so the original invocation lines work unchanged.").Default()
	webFlags := kingpinflag.AddFlags(serveCmd, exporter.DefaultListenAddress)
	var so serveFlags
	serveCmd.Flag("web.enable-pprof", "Serve Go profiling at /debug/pprof/ (off: it exposes internals and costs CPU on demand).").BoolVar(&so.pprof)
	serveCmd.Flag("continuous.classic-buckets", "Continuous entries' histograms have classic buckets (one series per bucket) besides native ones; --no-continuous.classic-buckets: native histograms only, one series per histogram for a Prometheus that scrapes them (about 10x fewer series).").Default("true").BoolVar(&so.classicBuckets)
	serveCmd.Flag("history.limit", "How many /probe runs the landing page lists, with their answers (0: none).").Default(fmt.Sprint(exporter.DefaultHistoryLimit)).IntVar(&so.historyLimit)
	serveCmd.Flag("runtime.gomaxprocs", "Threads running Go code at once (GOMAXPROCS). 0: 1 for a pure source exporter (no --listen: its work is waiting, and one thread wakes for it with less CPU), Go's default (the CPUs available) for a relay.").Default("0").IntVar(&so.gomaxprocs)
	serveCmd.Flag("runtime.memory-limit-ratio", "Go's soft memory limit (GOMEMLIMIT) as a fraction of the process's cgroup memory limit, when it has one, so that the heap is collected sooner instead of the process being killed (0.1 to 1; 0: off; GOMEMLIMIT in the environment wins).").Default(fmt.Sprint(memlimit.DefaultRatio)).Float64Var(&so.memoryLimitRatio)
	serveCmd.Flag("inband.var", "A variable this relay attaches to probes that ask for context (repeatable): load1, load5, load15, an interface counter like if_in_errors:eth0 (if_in|out_bytes|packets|errors|drops), or name=OID of the local agent.").StringsVar(&so.inband.Specs)
	serveCmd.Flag("inband.snmp-agent", "Local SNMP agent (host:port, v2c) for OID in-band variables.").StringVar(&so.inband.Agent)
	serveCmd.Flag("inband.snmp-community-file", "File holding the local agent's community (default: public); read at start, by the rule of every secret file.").ExistingFileVar(&so.communityFile)
	so.inband.Refresh = time.Second
	durationVar(serveCmd.Flag("inband.refresh", "How old attached in-band values may be; they are read in the background.").Default("1s"), &so.inband.Refresh)
	serveCmd.Flag("config.file", "Modules for /probe (YAML). Without it /probe refuses every request.").StringVar(&so.configFile)
	serveCmd.Flag("config.check", "Validate --config.file and exit (0 when valid).").BoolVar(&so.check)
	so.timeoutOffset = exporter.DefaultTimeoutOffset
	durationVar(serveCmd.Flag("probe.timeout-offset", "Taken off Prometheus' scrape timeout, so the /probe answer arrives in time.").Default(exporter.DefaultTimeoutOffset.String()), &so.timeoutOffset)
	serveCmd.Flag("probe.max-concurrent", "Most /probe requests probing at once; more are answered 503 at once and counted in subsegment_exporter_probes_over_limit_total (0: no limit). Size it to at least targets x module timeout / scrape interval.").Default(fmt.Sprint(exporter.DefaultMaxConcurrentProbes)).IntVar(&so.maxProbes)
	so.idleTimeout = exporter.DefaultIdleTimeout
	durationVar(serveCmd.Flag("web.idle-timeout", "Close keep-alive HTTP connections idle this long.").Default(exporter.DefaultIdleTimeout.String()), &so.idleTimeout)
	serveCmd.Flag("snmp.walk-max-entries", "Most variables one SNMP walk (an interface lookup) collects from an agent; a longer walk is cut off (reason walk_limit).").Default(fmt.Sprint(snmp.DefaultWalkMaxEntries)).IntVar(&so.walk.MaxEntries)
	serveCmd.Flag("snmp.walk-max-bytes", "Most bytes of OIDs and values one SNMP walk collects from an agent; a larger walk is cut off (reason walk_limit).").Default(fmt.Sprint(snmp.DefaultWalkMaxBytes)).IntVar(&so.walk.MaxBytes)

	var stampCfg reflector.Config
	serveCmd.Flag("stamp.listen-address", "Answer STAMP test packets (RFC 8762/8972, TWAMP-Light compatible) on this UDP address, e.g. :862 (STAMP's registered port; below 1024 needs CAP_NET_BIND_SERVICE) or :8620. Off when empty.").StringVar(&stampCfg.Address)
	serveCmd.Flag("stamp.auth", "STAMP mode: auto (authenticated, HMAC-SHA-256 with --relay.auth-key-file, when the relay has a key file), on, off (unauthenticated).").Default(reflector.AuthAuto).EnumVar(&stampCfg.Auth, reflector.AuthAuto, reflector.AuthOn, reflector.AuthOff)
	serveCmd.Flag("stamp.mode", "STAMP sessions: stateful (the reflector numbers its replies and counts per session, so that loss is named per direction) or stateless (copies the sender's numbers).").Default(reflector.ModeStateful).EnumVar(&stampCfg.Mode, reflector.ModeStateful, reflector.ModeStateless)
	serveCmd.Flag("stamp.max-sessions", "Stateful STAMP sessions kept at once; a new sender beyond them is answered statelessly (no counters: loss in total only), counted in subsegment_stamp_stateless_replies_total{reason=\"sessions\"}.").Default(fmt.Sprint(reflector.DefaultMaxSessions)).IntVar(&stampCfg.MaxSessions)
	serveCmd.Flag("stamp.max-sessions-per-address", "STAMP sessions one sender may hold (at most --stamp.max-sessions), so that one host cannot take the table: an IPv4 sender is its address, an IPv6 sender its /64 (all addresses of a /64 share one count); its further sessions are answered statelessly (reason address).").Default(fmt.Sprint(reflector.DefaultMaxSessionsPerAddress)).IntVar(&stampCfg.MaxSessionsPerAddress)
	stampCfg.SessionTimeout = reflector.DefaultSessionTimeout
	durationVar(serveCmd.Flag("stamp.session-timeout", "A STAMP session idle this long is forgotten.").Default(reflector.DefaultSessionTimeout.String()), &stampCfg.SessionTimeout)
	serveCmd.Flag("stamp.max-packets-per-second", "STAMP packets answered per second, all senders together; the rest are refused (reason rate).").Default(fmt.Sprint(reflector.DefaultMaxRate)).IntVar(&stampCfg.MaxRate)
	serveCmd.Flag("stamp.max-packet-bytes", "Largest STAMP packet answered (UDP payload); a reply is always the size of its request.").Default(fmt.Sprint(reflector.DefaultMaxPacketBytes)).IntVar(&stampCfg.MaxPacketBytes)

	probeCmd := app.Command("probe", "Probe a chain once and print one row per segment and per hop (mtr-like).")
	var po probeFlags
	probeCmd.Arg("target", "First hop of the chain, host:port; or a URL (http://, https://) to probe through the HTTP proxies in front of it.").Required().StringVar(&po.target)
	probeCmd.Flag("count", "Measured probes (a warm-up probe that opens the connections comes first).").Default("5").IntVar(&po.count)
	po.interval = 200 * time.Millisecond
	durationVar(probeCmd.Flag("interval", "Pause between probes.").Default("200ms"), &po.interval)
	probeCmd.Flag("payload-bytes", "Padding per probe (0 to 65536 bytes, within --relay.max-frame-bytes): large probes reveal MTU/MSS black holes.").Default("0").IntVar(&po.payload)
	probeCmd.Flag("output", "Output format: table or json.").Default("table").EnumVar(&po.output, "table", "json")
	probeCmd.Flag("trace", "After the probes, trace the routers under every segment (each relay traces the route to its next hop on the chain's own connection) and print them.").BoolVar(&po.trace)
	probeCmd.Flag("stamp.auth", "A stamp:// TARGET's mode: auto (authenticated STAMP, HMAC-SHA-256 with --relay.auth-key-file, when there is a key file), on, off (unauthenticated).").Default(stamp.AuthAuto).EnumVar(&po.stampAuth, stamp.AuthAuto, stamp.AuthOn, stamp.AuthOff)

	checkCmd := app.Command("check", "Nagios-compatible check: probe the chain once; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Monitoring Plugins guidelines).")
	var co nagios.Options
	checkCmd.Arg("target", "First hop of the chain, host:port; or a URL (http://, https://) to probe through the HTTP proxies in front of it.").Required().StringVar(&co.Target)
	checkCmd.Flag("config.file", "Modules file (probes, SLAs, SNMP context); without it module defaults apply.").StringVar(&co.ConfigFile)
	checkCmd.Flag("module", "Module of --config.file to use.").Default("default").StringVar(&co.Module)
	checkCmd.Flag("warning", "Warning range of every segment's rtt (median): 10, 10:, ~:10, 10:20, @10:20; milliseconds, or with ms, s, us.").Short('w').StringVar(&co.Warning)
	checkCmd.Flag("critical", "Critical range of every segment's rtt, same syntax. Without -w and -c, the module's SLAs are the critical thresholds.").Short('c').StringVar(&co.Critical)
	checkCmd.Flag("segment", "Per-segment ranges, from:to=WARN,CRIT (repeatable; leave one empty to keep -w or -c).").StringsVar(&co.Segments)
	checkCmd.Flag("trace", "Trace the routers under every segment and list them in the long text (without it, the module's trace mode applies: on_violation by default).").BoolVar(&co.Trace)
	checkCmd.Flag("stamp.auth", "A stamp:// TARGET's mode without --config.file (a module's authenticated: decides with it): auto (authenticated STAMP with --relay.auth-key-file when there is a key file), on, off.").Default(stamp.AuthAuto).EnumVar(&co.STAMPAuth, stamp.AuthAuto, stamp.AuthOn, stamp.AuthOff)
	checkCmd.Flag("verbose", "More detail in the long text (repeatable: -v hops, -vv the kernel's view).").Short('v').CounterVar(&co.Verbose)

	sendCmd := app.Command("send", "Stream stdin through the chain (--forward-to) and write what comes back to stdout; timing statistics go to stderr.")

	demoCmd := app.Command("demo", "Start a local chain on 127.0.0.1 with one slow segment and the exporter, print the probe report, and serve until Ctrl-C.")
	var do demo.Options
	demoCmd.Flag("demo.base-port", "First of the loopback ports the demo uses.").Default("19000").IntVar(&do.BasePort)
	do.Delay = 20 * time.Millisecond
	durationVar(demoCmd.Flag("demo.delay", "Added round-trip time of the slow segment (b -> c).").Default("20ms"), &do.Delay)

	if inspect != nil {
		// A test reads the declared commands and flags (docs/flags.md is
		// checked against them); nothing is parsed or run.
		inspect(app)
		return exitOK
	}
	isCheck := slices.Contains(args, "check")
	if isCheck {
		// A plugin answers UNKNOWN (3) for --help, -V and bad arguments, on stdout.
		app.Terminate(func(int) { os.Exit(int(nagios.Unknown)) })
	}
	cmd, err := app.Parse(args)
	if err != nil {
		if isCheck {
			return pluginOutput(nagios.Unknown, nagios.UnknownText("%v (try check --help)", err))
		}
		fmt.Fprintf(os.Stderr, "%s: %v (try --help)\n", name, err)
		return exitUsage
	}
	if hop.name == "" {
		// Resolved here, not as the flag's default, so that --help and the
		// man page do not show the name of the machine that built them.
		hop.name = peer.DefaultName()
	}
	logger := promslog.New(&logConfig)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	keys, err := hop.keys()
	if err == nil {
		hop.tlsServer, hop.tlsClient, err = hop.tls.Load()
	}
	if err == nil {
		hop.tracer, hop.traceOpts, err = tf.tracer()
	}
	if err != nil {
		if cmd == checkCmd.FullCommand() {
			return pluginOutput(nagios.Unknown, nagios.UnknownText("%v", err))
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return exitUsage
	}
	switch cmd {
	case serveCmd.FullCommand():
		if hop.listen == "" && peer.IsSTAMPTarget(hop.forwardTo) {
			fmt.Fprintf(os.Stderr, "%s: --forward-to %s without --listen would stream stdin to a STAMP reflector, which carries no data: run a relay (--listen) in front of it, or measure to it with probe %s\n", name, hop.forwardTo, hop.forwardTo)
			return exitUsage
		}
		if hop.listen == "" && hop.forwardTo != "" {
			// The original tool: no --listen means stream stdin to --forward-to.
			return send(ctx, hop, keys, logger)
		}
		if so.check {
			return checkConfig(so.configFile, hop, len(keys) > 0)
		}
		if err := so.validate(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			return exitUsage
		}
		if stampCfg.Address != "" {
			so.stamp = &stampCfg
		}
		return serve(ctx, hop, keys, so, webFlags, logger)
	case probeCmd.FullCommand():
		return probe(ctx, hop, keys, po, os.Stdout, logger)
	case checkCmd.FullCommand():
		co.Source, co.Timeout, co.Keys, co.MaxFrameBytes, co.MaxHops, co.TLS = hop.name, hop.timeout, keys, hop.maxFrame, hop.maxHops, hop.tlsClient
		co.Tracer, co.TraceOptions = hop.tracer, hop.traceOpts
		return pluginOutput(nagios.Run(ctx, co))
	case sendCmd.FullCommand():
		return send(ctx, hop, keys, logger)
	case demoCmd.FullCommand():
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: cannot find my own binary: %v\n", name, err)
			return exitUsage
		}
		do.Executable, do.Out, do.Logger = exe, os.Stdout, logger
		if err := demo.Run(ctx, do); err != nil {
			fmt.Fprintf(os.Stderr, "%s demo: %v\n", name, err)
			return exitBroken
		}
		return exitOK
	}
	return exitUsage
}

// pluginOutput writes a plugin's answer on stdout; when even that fails,
// the state is UNKNOWN (and there is nowhere left to say why).
func pluginOutput(state nagios.State, out string) int {
	if _, err := io.WriteString(os.Stdout, out); err != nil {
		return int(nagios.Unknown)
	}
	return int(state)
}

type relayFlags struct {
	listen, forwardTo, name, keyFile, engine string
	tls                                      transport.TLSFiles
	tlsServer, tlsClient                     *tls.Config
	timeout                                  time.Duration
	removePerfHeaders                        bool
	blockSize                                int
	maxFrame, maxHops, maxConns              int
	budget                                   int64
	// tracer is the process's (nil with --no-trace.enabled).
	tracer    *trace.Tracer
	traceOpts trace.Options
}

type traceFlags struct {
	enabled bool
	rate    float64
	method  string
	opts    trace.Options
}

// tracer is the process's Tracer and the bounds of its traces; nil with
// --no-trace.enabled.
func (f traceFlags) tracer() (*trace.Tracer, trace.Options, error) {
	o := f.opts
	if f.method != "auto" {
		o.Method = trace.Method(f.method)
	}
	switch {
	case o.MaxTTL < 1 || o.MaxTTL > trace.MaxMaxTTL:
		return nil, o, fmt.Errorf("--trace.max-ttl=%d: use 1 to %d", o.MaxTTL, trace.MaxMaxTTL)
	case o.Probes < 1 || o.Probes > trace.MaxProbes:
		return nil, o, fmt.Errorf("--trace.probes=%d: use 1 to %d", o.Probes, trace.MaxProbes)
	case f.rate <= 0:
		return nil, o, fmt.Errorf("--trace.max-packets-per-second=%v: give a positive rate", f.rate)
	}
	if !f.enabled {
		return nil, o, nil
	}
	t, err := trace.NewTracer(trace.Config{Rate: f.rate})
	return t, o, err
}

// keys reads --relay.auth-key-file by the rule of every secret file.
func (f relayFlags) keys() (frame.Keys, error) {
	if f.keyFile == "" {
		return nil, nil
	}
	keys, err := config.ReadKeyFile(f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("--relay.auth-key-file: %w", err)
	}
	return keys, nil
}

type probeFlags struct {
	target, output, stampAuth string
	count, payload            int
	interval                  time.Duration
	trace                     bool
}

func probe(ctx context.Context, hop relayFlags, keys frame.Keys, po probeFlags, out io.Writer, logger *slog.Logger) int {
	o := prober.Options{Target: po.target, Source: hop.name, Count: po.count, Interval: po.interval, PayloadBytes: po.payload,
		Timeout: hop.timeout, MaxFrameBytes: hop.maxFrame, Keys: keys, Logger: exporter.DemotedLogger(logger), TLS: hop.tlsClient}
	if peer.IsHTTPTarget(po.target) {
		// A URL: the chain of HTTP proxies in front of it, with the
		// defaults of an http module (GET, any 2xx).
		o.HTTP = &prober.HTTPOptions{}
	}
	if peer.IsSTAMPTarget(po.target) {
		// A STAMP reflector, with the defaults of a stamp module, in the
		// mode --stamp.auth chooses.
		m := config.DefaultModule(po.target, hop.timeout)
		mode, err := stamp.ChooseMode(po.stampAuth, len(keys) > 0)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s probe: %v\n", name, err)
			return exitUsage
		}
		m.STAMP.Authenticated = mode == stamp.Authenticated
		o.STAMP = sla.ProbeOptions(m, po.target).STAMP
		o.STAMP.PacketTimeout = hop.timeout
	}
	if po.trace {
		if o.HTTP != nil || o.STAMP != nil || hop.tracer == nil {
			fmt.Fprintf(os.Stderr, "%s probe: --trace traces relay chains, with --trace.enabled\n", name)
			return exitUsage
		}
		o.Trace = &prober.TraceOptions{Tracer: hop.tracer, Options: hop.traceOpts}
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "%s probe: %v\n", name, err)
		return exitUsage
	}
	res := prober.Run(ctx, o)
	write := report.Table
	if po.output == "json" {
		write = report.JSON
	}
	if err := write(out, res); err != nil {
		fmt.Fprintf(os.Stderr, "%s probe: write output: %v\n", name, err)
		return exitUsage
	}
	if res.Failure != nil {
		fmt.Fprintf(os.Stderr, "%s probe: chain broken: segment %s -> %s failed (%s): %s\n", name, res.Failure.From, res.Failure.To, res.Failure.Reason, res.Failure.Message)
		return exitBroken
	}
	return exitOK
}

func (f relayFlags) relayConfig(keys frame.Keys) relay.Config {
	return relay.Config{Name: f.name, ForwardTo: f.forwardTo, Timeout: f.timeout, RemovePerfHeaders: f.removePerfHeaders,
		MaxFrameBytes: f.maxFrame, MaxHops: f.maxHops, MaxConnections: f.maxConns, Keys: keys, Engine: f.engine,
		TLS: f.tlsServer, DialTLS: f.tlsClient, BufferBudget: f.budget}
}

type serveFlags struct {
	configFile   string
	check        bool
	pprof        bool
	gomaxprocs   int
	historyLimit int
	// memoryLimitRatio: the soft memory limit, of the cgroup's limit.
	memoryLimitRatio float64
	// classicBuckets: continuous histograms keep classic buckets too.
	classicBuckets bool
	timeoutOffset  time.Duration
	inband         snmp.LocalOptions
	communityFile  string
	maxProbes      int
	idleTimeout    time.Duration
	walk           snmp.WalkLimits
	stamp          *reflector.Config
}

// validate checks the bounds a flag cannot check itself.
func (so serveFlags) validate() error {
	if err := memlimit.CheckRatio(so.memoryLimitRatio); err != nil {
		return err
	}
	switch {
	case so.maxProbes < 0:
		return fmt.Errorf("--probe.max-concurrent=%d: give a number of probes, or 0 for no limit", so.maxProbes)
	case so.idleTimeout <= 0:
		return fmt.Errorf("--web.idle-timeout=%v: give a positive duration, e.g. 2m", so.idleTimeout)
	case so.walk.MaxEntries < 1:
		return fmt.Errorf("--snmp.walk-max-entries=%d: give at least 1 (the default is %d)", so.walk.MaxEntries, snmp.DefaultWalkMaxEntries)
	case so.walk.MaxBytes < 1:
		return fmt.Errorf("--snmp.walk-max-bytes=%d: give at least 1 (the default is %d)", so.walk.MaxBytes, snmp.DefaultWalkMaxBytes)
	}
	return nil
}

func checkConfig(path string, hop relayFlags, authKey bool) int {
	if path == "" {
		fmt.Fprintf(os.Stderr, "%s: --config.check needs --config.file\n", name)
		return exitUsage
	}
	c, err := config.Load(path, config.Limits{MaxFrameBytes: hop.maxFrame, MaxHops: hop.maxHops, AuthKey: authKey})
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return exitBroken
	}
	n := len(c.Modules)
	modules := "modules"
	if n == 1 {
		modules = "module"
	}
	fmt.Printf("%s: %s is valid: %d %s\n", name, path, n, modules)
	return exitOK
}

func serve(ctx context.Context, hop relayFlags, keys frame.Keys, so serveFlags, webFlags *web.FlagConfig, logger *slog.Logger) int {
	if hop.listen != "" && hop.engine == relay.EngineEpoll && hop.tlsServer == nil && hop.tlsClient == nil {
		// The epoll engine waits like a C program only without async
		// preemption: this re-executes the process when it is on.
		if err := lowlatency.Ensure(); err != nil {
			logger.Warn("relay runs with async preemption on: slower to answer on a busy CPU", "err", err)
		}
	}
	procs := lowlatency.Procs(so.gomaxprocs, hop.listen != "")
	mem, err := memlimit.Apply(so.memoryLimitRatio, os.Getenv, os.DirFS("/"))
	if err != nil {
		logger.Warn("cannot read this process's cgroup memory limit: Go's soft memory limit stays off (set GOMEMLIMIT to set one)", "err", err)
	}
	logger.Info("starting "+name, "version", version.Info(), "build_context", version.BuildContext(), "async_preemption_off", lowlatency.Active(), "gomaxprocs", procs,
		"memory_limit", memlimit.Bytes(mem.Limit), "cgroup_memory_limit", memlimit.Bytes(mem.Cgroup), "memory_limit_from", mem.From)
	so.inband.Community = "public"
	if so.communityFile != "" {
		community, err := config.ReadSecretFile(so.communityFile)
		if err != nil {
			logger.Error("cannot read --inband.snmp-community-file", "err", err)
			return exitUsage
		}
		so.inband.Community = string(community)
	}
	err = exporter.Serve(ctx, exporter.Config{ListenAddress: hop.listen, Relay: hop.relayConfig(keys), ConfigFile: so.configFile, KeyFile: hop.keyFile,
		TimeoutOffset: so.timeoutOffset, Web: webFlags, Logger: logger, Inband: so.inband, Pprof: so.pprof, HistoryLimit: so.historyLimit,
		MaxConcurrentProbes: so.maxProbes, IdleTimeout: so.idleTimeout, SNMPWalk: so.walk, ContinuousNativeOnly: !so.classicBuckets,
		Probe: func(p *exporter.ProbeHandler) { p.TLS = hop.tlsClient }, STAMP: so.stamp, Tracer: hop.tracer, TraceOptions: hop.traceOpts})
	if err != nil {
		logger.Error("stopped", "err", err)
		return exitBroken
	}
	return exitOK
}

func send(ctx context.Context, hop relayFlags, keys frame.Keys, logger *slog.Logger) int {
	res, err := stream.Send(ctx, os.Stdin, os.Stdout, stream.Options{ForwardTo: hop.forwardTo, Source: hop.name, BlockSize: hop.blockSize,
		Timeout: hop.timeout, MaxFrameBytes: hop.maxFrame, Keys: keys, Logger: exporter.DemotedLogger(logger), TLS: hop.tlsClient})
	if res != nil {
		if werr := stream.WriteStats(os.Stderr, res); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s send: %v\n", name, err)
		var incomplete *stream.Error
		if errors.As(err, &incomplete) {
			return exitBroken
		}
		return exitUsage
	}
	return exitOK
}
