// Package demo runs `make demo`: a real chain of this binary's relays on
// 127.0.0.1 with one slow segment (a delaying proxy inside the demo
// process, so no root and no tc), the source exporter, and a printed report
// of what to open and curl. It serves until interrupted and then stops
// every process it started.
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

	"github.com/subsegment/subsegment_exporter/internal/delayproxy"
	"github.com/subsegment/subsegment_exporter/prober"
	"github.com/subsegment/subsegment_exporter/report"
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
	extra     []string
}

// demoConfig is the source exporter's module: SLAs the slow segment breaks.
const demoConfig = `modules:
  default:
    timeout: 5s
    probes: 3
    interval: 50ms
    targets: ["127.0.0.1:*"]
    inband: on_violation
    sla:
      default: 5ms
      segments:
        - {from: b, to: c, rtt: 15ms}
`

// Run starts the chain, prints the report and serves until ctx ends.
func Run(ctx context.Context, o Options) error {
	if o.BasePort < 1024 || o.BasePort > 65535-200 {
		return fmt.Errorf("--demo.base-port %d out of range: use 1024 to %d", o.BasePort, 65535-200)
	}
	if o.Delay < 0 {
		return fmt.Errorf("--demo.delay %v is negative", o.Delay)
	}
	dir, err := os.MkdirTemp("", "subsegment-demo-")
	if err != nil {
		return fmt.Errorf("temp dir for the demo's logs: %w", err)
	}
	addr := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	proxyPort := o.BasePort + 12
	hops := []hop{
		{name: "z", port: o.BasePort + 3, webPort: o.BasePort + 103},
		{name: "c", port: o.BasePort + 2, webPort: o.BasePort + 102, forwardTo: addr(o.BasePort + 3)},
		{name: "b", port: o.BasePort + 1, webPort: o.BasePort + 101, forwardTo: addr(proxyPort)},
	}
	for _, p := range []int{hops[0].port, hops[1].port, hops[2].port, proxyPort, o.BasePort + 100, hops[0].webPort, hops[1].webPort, hops[2].webPort} {
		if err := portFree(p); err != nil {
			return fmt.Errorf("port %d is in use (%v): stop what uses it or pick other ports with --demo.base-port", p, err)
		}
	}

	procs := &processes{}
	defer procs.stop(o.Out)
	fmt.Fprintf(o.Out, "subsegment demo: starting a chain on 127.0.0.1 (logs in %s)\n", dir)
	for _, h := range hops {
		// Each relay attaches its load (from /proc) to probes that ask.
		args := []string{"--listen", addr(h.port), "--relay.name", h.name, "--web.listen-address", addr(h.webPort), "--inband.var", "load1", "--inband.var", "load5"}
		if h.forwardTo != "" {
			args = append(args, "--forward-to", h.forwardTo)
		}
		if err := procs.start(o.Executable, append(args, h.extra...), filepath.Join(dir, h.name+".log")); err != nil {
			return err
		}
	}
	proxy, err := delayproxy.Start(addr(proxyPort), addr(hops[1].port), o.Delay/2, o.Delay-o.Delay/2)
	if err != nil {
		return err
	}
	defer proxy.Close()
	cfgPath := filepath.Join(dir, "subsegment.yml")
	if err := os.WriteFile(cfgPath, []byte(demoConfig), 0o644); err != nil {
		return fmt.Errorf("write the demo's config: %w", err)
	}
	sourceArgs := []string{"--relay.name", "a", "--web.listen-address", addr(o.BasePort + 100), "--config.file", cfgPath}
	if err := procs.start(o.Executable, sourceArgs, filepath.Join(dir, "a.log")); err != nil {
		return err
	}

	target := addr(hops[2].port)
	res, err := waitForChain(ctx, target, procs)
	if err != nil {
		return err
	}
	fmt.Fprintln(o.Out)
	if err := report.Table(o.Out, res); err != nil {
		return err
	}
	exporterURL := "http://" + addr(o.BasePort+100)
	fmt.Fprintf(o.Out, `
The chain a -> b -> c -> z is running; b -> c goes through a proxy that adds %v.
  exporter (source a):  %s/
  probe, as Prometheus scrapes it:
    curl -s '%s/probe?target=%s&module=default' | grep -v '^#'
  the SLA violation, with the far end's load (read in band from /proc):
    curl -s '%s/probe?target=%s&module=default' | grep violation_info
  the same with the probe's log and module:
    curl -s '%s/probe?target=%s&module=default&debug=true'
  one-shot probe:       %s probe %s
  relay metrics:        curl -s http://%s/metrics | grep subsegment_relay   (b; c and z on :%d and :%d)
  config (SLA 5ms, b -> c 15ms): %s
Press Ctrl-C to stop.
`, o.Delay, exporterURL, exporterURL, target, exporterURL, target, exporterURL, target, o.Executable, target,
		addr(hops[2].webPort), hops[1].webPort, hops[0].webPort, cfgPath)

	select {
	case <-ctx.Done():
		fmt.Fprintln(o.Out, "\nsubsegment demo: stopping")
		return nil
	case err := <-procs.exited:
		return fmt.Errorf("a demo process stopped on its own: %w (logs in %s)", err, dir)
	}
}

// waitForChain probes until the whole chain answers (at most 15 s).
func waitForChain(ctx context.Context, target string, procs *processes) (*prober.Result, error) {
	deadline := time.Now().Add(15 * time.Second)
	var last *prober.Result
	for attempt := 0; attempt < 150 && time.Now().Before(deadline); attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		last = prober.Run(pctx, prober.Options{Target: target, Source: "a", Count: 5, Interval: 100 * time.Millisecond, Timeout: 2 * time.Second})
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

// processes are the demo's children, stopped by PID at the end.
type processes struct {
	mu     sync.Mutex
	cmds   []*exec.Cmd
	waits  []chan struct{}
	exited chan error
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
		select {
		case p.exited <- fmt.Errorf("pid %d (%s): %v", cmd.Process.Pid, filepath.Base(logPath), err):
		default:
		}
	}()
	return nil
}

// stop sends SIGTERM to every child, waits up to 5 s, then SIGKILLs.
func (p *processes) stop(out io.Writer) {
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
				fmt.Fprintf(out, "subsegment demo: cannot kill pid %d: %v\n", p.cmds[i].Process.Pid, err)
			}
			<-done
		}
	}
}
