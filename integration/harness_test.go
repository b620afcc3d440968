// Package integration starts real processes: the built binary as relays and
// exporters on 127.0.0.1, and the Debian packages the issues name
// (Prometheus, Alertmanager, snmpd, Nagios). Every process is stopped by its
// PID when its test ends; every wait is bounded.
package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/demo/delayproxy"
)

// binary is the subsegment_exporter built for this test run.
var binary string

func TestMain(m *testing.M) {
	if helper := os.Getenv(helperEnv); helper != "" {
		os.Exit(runHelper(helper, os.Args[len(os.Args)-3:]))
	}
	dir, err := os.MkdirTemp("", "subsegment-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binary = filepath.Join(dir, "subsegment_exporter")
	build := exec.Command("go", "build", "-o", binary, "../cmd/subsegment_exporter")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool finds a program the test needs. Locally a missing tool skips
// the test; in CI (CI=true) it fails it, since `make test` installs them.
func requireTool(t *testing.T, name string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not installed: `make test` installs it (make deps)", name)
	}
	t.Skipf("%s not installed: run `make deps` (or `make test`, which does)", name)
	return ""
}

// syncBuffer collects a process's output for the test to search.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a process the test started.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// start runs a program and stops it (by PID) when the test ends.
func start(t *testing.T, name, path string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(path, args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("output of %s (pid %d):\n%s", name, p.cmd.Process.Pid, tail(p.out.String(), 4000))
		}
	})
	return p
}

// stop sends SIGTERM to the process group, then SIGKILL after 5 s.
func (p *proc) stop(t *testing.T) {
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Logf("%s (pid %d) ignored SIGTERM for 5s, killing it", p.name, pid)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-p.done
	}
}

// kill stops the process at once, as a crash would.
func (p *proc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// waitOutput waits (bounded) until the output matches re and returns the
// submatches of the first match.
func (p *proc) waitOutput(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, p.err, re, tail(p.out.String(), 4000))
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not print %q within %v:\n%s", p.name, re, timeout, tail(p.out.String(), 4000))
	return nil
}

var (
	delayListening = regexp.MustCompile(`delay proxy listening on (\S+)`)
	relayListening = regexp.MustCompile(`msg="relay listening" address=([0-9.:\[\]]+)`)
	webListening   = regexp.MustCompile(`msg="Listening on" address=([0-9.:\[\]]+)`)
)

// hop is a relay process of the binary.
type hop struct {
	*proc
	addr string // relay address
	web  string // HTTP address
}

// startHop runs the binary as a relay on loopback ports the kernel picks.
func startHop(t *testing.T, name, forwardTo string, extra ...string) *hop {
	t.Helper()
	args := []string{"--listen", "127.0.0.1:0", "--web.listen-address", "127.0.0.1:0", "--relay.name", name}
	if !slices.Contains(extra, "--log.level") {
		args = append(args, "--log.level", "debug")
	}
	if forwardTo != "" {
		args = append(args, "--forward-to", forwardTo)
	}
	p := start(t, "relay "+name, binary, append(args, extra...)...)
	h := &hop{proc: p}
	h.addr = p.waitOutput(t, relayListening, 10*time.Second)[1]
	h.web = p.waitOutput(t, webListening, 10*time.Second)[1]
	return h
}

// chain starts relays names[0] → … → names[len-1] (the end) and returns them
// first hop first.
func chain(t *testing.T, names ...string) []*hop {
	t.Helper()
	hops := make([]*hop, len(names))
	next := ""
	for i := len(names) - 1; i >= 0; i-- {
		hops[i] = startHop(t, names[i], next)
		next = hops[i].addr
	}
	return hops
}

// freePort returns a loopback port that was free a moment ago, for
// programs that cannot be told to pick their own.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func itoa(i int) string { return strconv.Itoa(i) }

// eventually retries f (bounded in time and count) until it returns nil.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for i := 0; i < 10000 && time.Now().Before(deadline); i++ {
		if err = f(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
}

// httpGet fetches a URL (bounded) and returns the body; non-200 fails.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	client := http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return string(body)
}

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}

func currentGroup() string {
	if u, err := user.Current(); err == nil {
		if g, err := user.LookupGroupId(u.Gid); err == nil {
			return g.Name
		}
	}
	return "root"
}

func regexpOf(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// startDelay starts a delaying proxy to addr that adds oneWay in each
// direction, stopped when the test ends.
func startDelay(t *testing.T, addr string, oneWay time.Duration) *delayproxy.Proxy {
	t.Helper()
	px, err := delayproxy.Start("127.0.0.1:0", addr, oneWay, oneWay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Close)
	return px
}
