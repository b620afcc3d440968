// Package demo runs `make demo`: a real chain of this binary's relays on
// 127.0.0.1 with one slow segment (a delaying proxy inside the demo
// process, so no root and no tc), the source exporter, and a printed report
// of what to open and curl. It serves until interrupted and then stops
// every process it started and removes what it wrote.
//
// Layering (internal/architecture_test.go): floor 6; it may import the
// packages below it but not relay (it runs this binary's relays as
// processes), and never cmd.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/demo/delayproxy"
	"github.com/subsegment/subsegment_exporter/internal/output/report"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// Options of the demo.
type Options struct {
	// Executable is this binary, started once per hop.
	Executable string
	// BasePort: relays listen on BasePort+1.., their HTTP on BasePort+101..
	BasePort int
	// Delay is the round trip the slow segment (b -> c) adds.
	Delay  time.Duration
	Out    io.Writer
	Logger *slog.Logger
}

type hop struct {
	name      string
	port      int
	webPort   int
	forwardTo string
}

// demoConfig is the source exporter's module: SLAs the slow segment
// breaks. Its first target is the demo's first hop, which the landing
// page's example link uses.
const demoConfig = `modules:
  default:
    timeout: 5s
    probes: 3
    interval: 50ms
    targets: ["127.0.0.1:%d", "127.0.0.1:*"]
    inband: on_violation
    sla:
      default: 5ms
      segments:
        - {from: b, to: c, rtt: 15ms}
`

// demoContinuous draws the chain on the landing page: one probe every
// 200 ms, between scrapes.
const demoContinuous = `continuous:
  - {target: "127.0.0.1:%d", module: default, interval: 200ms}
`

// Run starts the chain, prints the report and serves until ctx ends.
func Run(ctx context.Context, o Options) error {
	if o.BasePort < 1024 || o.BasePort > 65535-200 {
		return fmt.Errorf("--demo.base-port %d out of range: use 1024 to %d", o.BasePort, 65535-200)
	}
	if o.Delay < 0 {
		return fmt.Errorf("--demo.delay %v is negative", o.Delay)
	}
	addr := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	proxyPort := o.BasePort + 12
	hops := []hop{
		{name: "z", port: o.BasePort + 3, webPort: o.BasePort + 103},
		{name: "c", port: o.BasePort + 2, webPort: o.BasePort + 102, forwardTo: addr(o.BasePort + 3)},
		{name: "b", port: o.BasePort + 1, webPort: o.BasePort + 101, forwardTo: addr(proxyPort)},
	}
	haproxy, nginx, withHTTP := httpTools()
	ports := []int{hops[0].port, hops[1].port, hops[2].port, proxyPort, o.BasePort + 100, hops[0].webPort, hops[1].webPort, hops[2].webPort}
	if withHTTP {
		ports = append(ports, o.BasePort+h1Offset, o.BasePort+httpProxOffset, o.BasePort+n1Offset)
	}
	for _, p := range ports {
		if err := portFree(p); err != nil {
			return fmt.Errorf("port %d is in use (%v): stop what uses it or pick other ports with --demo.base-port", p, err)
		}
	}
	dir, err := os.MkdirTemp("", "subsegment-demo-")
	if err != nil {
		return fmt.Errorf("temp dir for the demo's logs: %w", err)
	}
	out := &errWriter{w: o.Out}
	out.printf("subsegment demo: the chain page will be at http://%s/ (open it: it draws the chains as they start)\n", addr(o.BasePort+100))
	// Logs and config go when the demo ends, however it ends.
	defer func() {
		if err := os.RemoveAll(dir); err != nil {
			out.printf("subsegment demo: cannot remove %s: %v\n", dir, err)
		}
	}()
	procs := &processes{}
	defer procs.stop(out)
	d := &run{o: o, out: out, procs: procs, dir: dir, addr: addr, http: withHTTP}
	if err := d.start(hops, proxyPort); err != nil {
		return err
	}
	target := addr(hops[2].port)
	res, err := waitForChain(ctx, prober.Options{Target: target}, procs)
	if err != nil {
		return d.withLogs(err)
	}
	var httpRes *prober.Result
	if withHTTP {
		if err := d.startHTTPChain(haproxy, nginx); err != nil {
			return d.withLogs(err)
		}
		httpTarget := "http://" + addr(o.BasePort+h1Offset) + "/"
		if httpRes, err = waitForChain(ctx, prober.Options{Target: httpTarget, HTTP: &prober.HTTPOptions{Hops: []string{"h1", "n1"}}}, procs); err != nil {
			return d.withLogs(err)
		}
	}
	out.printf("\n")
	if err := report.Table(out, res); err != nil {
		return err
	}
	if httpRes != nil {
		out.printf("\n")
		if err := report.Table(out, httpRes); err != nil {
			return err
		}
	}
	d.printGuide(hops, target)
	d.httpGuide(withHTTP)
	out.printf("Press Ctrl-C to stop: it stops every process above and removes their logs.\n")
	if out.err != nil {
		return fmt.Errorf("write the demo's output: %w", out.err)
	}
	// Ctrl-C reaches only the demo (its children have their own process
	// groups), so the first thing to end is ctx, never a child.
	select {
	case <-ctx.Done():
		out.printf("\nsubsegment demo: stopping\n")
		return out.err
	case err := <-procs.exited:
		if ctx.Err() != nil {
			return out.err
		}
		return d.withLogs(fmt.Errorf("a demo process stopped on its own: %w", err))
	}
}

// run is one demo run's state.
type run struct {
	o     Options
	out   *errWriter
	procs *processes
	dir   string
	addr  func(int) string
	// http: HAProxy and nginx are installed, the HTTP chain runs too.
	http bool
}

// start starts the relays, the delaying proxy and the source exporter.
func (d *run) start(hops []hop, proxyPort int) error {
	d.out.printf("subsegment demo: starting a chain on 127.0.0.1\n")
	for _, h := range hops {
		// Each relay attaches its load (from /proc) to probes that ask.
		args := []string{"--listen", d.addr(h.port), "--relay.name", h.name, "--web.listen-address", d.addr(h.webPort), "--inband.var", "load1", "--inband.var", "load5"}
		if h.forwardTo != "" {
			args = append(args, "--forward-to", h.forwardTo)
		}
		if err := d.procs.start(d.o.Executable, args, filepath.Join(d.dir, h.name+".log")); err != nil {
			return err
		}
	}
	proxy, err := delayproxy.Start(d.addr(proxyPort), d.addr(hops[1].port), d.o.Delay/2, d.o.Delay-d.o.Delay/2)
	if err != nil {
		return err
	}
	d.procs.onStop(proxy.Close)
	cfgPath := filepath.Join(d.dir, "subsegment.yml")
	cfg := fmt.Sprintf(demoConfig, hops[2].port)
	if d.http {
		cfg += httpModule
	}
	cfg += fmt.Sprintf(demoContinuous, hops[2].port)
	if d.http {
		cfg += fmt.Sprintf(httpContinuous, d.o.BasePort+h1Offset)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write the demo's config: %w", err)
	}
	sourceArgs := []string{"--relay.name", "a", "--web.listen-address", d.addr(d.o.BasePort + 100), "--config.file", cfgPath}
	return d.procs.start(d.o.Executable, sourceArgs, filepath.Join(d.dir, "a.log"))
}

// printGuide says what runs and what to open.
func (d *run) printGuide(hops []hop, target string) {
	exporterURL := "http://" + d.addr(d.o.BasePort+100)
	d.out.printf(`
The chain a -> b -> c -> z is running; b -> c goes through a proxy that adds %v.
  exporter (source a):  %s/
  probe, as Prometheus scrapes it:
    curl -s '%s/probe?target=%s&module=default' | grep -v '^#'
  the SLA violation, with the far end's load (read in band from /proc):
    curl -s '%s/probe?target=%s&module=default' | grep violation_info
  the same with the probe's log and module:
    curl -s '%s/probe?target=%s&module=default&debug=true'
  one-shot probe:       %s probe %s --relay.name a
  relay metrics:        curl -s http://%s/metrics | grep subsegment_relay   (b; c and z on :%d and :%d)
`, d.o.Delay, exporterURL, exporterURL, target, exporterURL, target, exporterURL, target, d.o.Executable, target,
		d.addr(hops[2].webPort), hops[1].webPort, hops[0].webPort)
}

// withLogs adds the end of each process's log to a failure: the logs
// themselves are removed with the demo.
func (d *run) withLogs(err error) error {
	files, _ := filepath.Glob(filepath.Join(d.dir, "*.log"))
	for _, f := range files {
		b, rerr := os.ReadFile(f)
		if rerr != nil || len(b) == 0 {
			continue
		}
		if len(b) > 2000 {
			b = b[len(b)-2000:]
		}
		err = fmt.Errorf("%w\n--- %s:\n%s", err, filepath.Base(f), b)
	}
	return err
}

// waitForChain probes until the whole chain answers (at most 15 s); o
// names the target (and, for the HTTP chain, its options).
func waitForChain(ctx context.Context, o prober.Options, procs *processes) (*prober.Result, error) {
	deadline := time.Now().Add(15 * time.Second)
	var last *prober.Result
	for attempt := 0; attempt < 150 && time.Now().Before(deadline); attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		o.Source, o.Count, o.Interval, o.Timeout = "a", 5, 100*time.Millisecond, 2*time.Second
		last = prober.Run(pctx, o)
		cancel()
		if last.Success {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-procs.exited:
			return nil, fmt.Errorf("a demo process stopped on its own: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("the chain did not answer within 15s: %s -> %s: %s", last.Failure.From, last.Failure.To, last.Failure.Message)
}

func portFree(port int) error {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return ln.Close()
}

// errWriter writes the demo's output and keeps the first error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, args ...any) { _, _ = fmt.Fprintf(e, format, args...) }

// processes are the demo's children, stopped by PID at the end.
type processes struct {
	mu      sync.Mutex
	cmds    []*exec.Cmd
	waits   []chan struct{}
	cleanup []func()
	exited  chan error
}

func (p *processes) start(exe string, args []string, logPath string) error {
	if p.exited == nil {
		p.exited = make(chan error, 16)
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("demo log file: %w", err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C in the terminal reaches the demo
	// alone, which then stops its children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s %v: %w", exe, args, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmds = append(p.cmds, cmd)
	p.waits = append(p.waits, done)
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logFile.Close()
		close(done)
		if err == nil {
			err = errors.New("exited with status 0")
		}
		select {
		case p.exited <- fmt.Errorf("pid %d (%s): %w", cmd.Process.Pid, filepath.Base(logPath), err):
		default:
		}
	}()
	return nil
}

// onStop runs fn when the processes are stopped.
func (p *processes) onStop(fn func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cleanup = append(p.cleanup, fn)
}

// stop sends SIGTERM to every child, waits up to 5 s, then SIGKILLs.
func (p *processes) stop(out *errWriter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cmds {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(5 * time.Second)
	for i, done := range p.waits {
		select {
		case <-done:
		case <-deadline:
			if err := p.cmds[i].Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				out.printf("subsegment demo: cannot kill pid %d: %v\n", p.cmds[i].Process.Pid, err)
			}
			<-done
		}
	}
	for _, fn := range p.cleanup {
		fn()
	}
}
