// Package netlab builds a network of namespaces for tests that need real
// routers: hosts joined by veth pairs, addresses, routes, forwarding,
// iptables rules and their packet counters, all inside namespaces the
// test creates, after the lab recipe the integration tests follow
// (integration/lab_test.go).
//
// Every namespace is named sstr<pid>x<random>-<host>, so that a lab never
// collides with another test's, and is deleted when the test ends (its
// interfaces and iptables rules go with it), when the process receives
// SIGTERM or SIGINT, and otherwise by the next lab created on the machine,
// which deletes the namespaces of labs whose process is gone (a test
// binary killed by -timeout runs no cleanup).
//
// Only tests import it (internal/architecture_test.go).
package netlab

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netns"
)

// prefix starts the name of every namespace a lab creates.
const prefix = "sstr"

// Lab is a set of namespaces owned by one test.
type Lab struct {
	t     testing.TB
	id    string
	mu    sync.Mutex
	hosts []*Host
}

// Host is one namespace of a lab.
type Host struct {
	// Name is the host's short name in the test ("b", "r1").
	Name string
	// NS is its namespace's name (for `ip netns exec` and netns.Do).
	NS  string
	lab *Lab
}

// Root reports whether the process can build labs (namespaces need root).
func Root() bool { return os.Geteuid() == 0 }

// New starts a lab; the test is skipped when it cannot run as root, and
// fails under CI (which runs as root) if it cannot.
func New(t testing.TB) *Lab {
	t.Helper()
	if !Root() {
		if os.Getenv("CI") != "" {
			t.Fatal("network namespace tests need root (CI runs as root)")
		}
		t.Skip("network namespace tests need root")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("network namespace tests need %s: %v", tool, err)
		}
	}
	reapStale()
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	l := &Lab{t: t, id: fmt.Sprintf("%s%dx%s", prefix, os.Getpid(), hex.EncodeToString(b[:]))}
	register(l)
	t.Cleanup(l.Close)
	return l
}

// Host adds a namespace with its loopback up. Its interfaces skip IPv6
// duplicate address detection, link-local addresses included, so that
// neighbour discovery works as soon as a link is up.
func (l *Lab) Host(name string) *Host {
	l.t.Helper()
	h := &Host{Name: name, NS: l.id + "-" + name, lab: l}
	l.ip("netns", "add", h.NS)
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	h.Sysctl("net.ipv6.conf.all.accept_dad", "0")
	h.Sysctl("net.ipv6.conf.default.accept_dad", "0")
	l.ip("-n", h.NS, "link", "set", "lo", "up")
	return h
}

// Link joins a and b with a veth pair: interface aIf in a with address
// aAddr (CIDR, IPv4 or IPv6; "" for none) and bIf in b with bAddr. IPv6
// addresses skip duplicate address detection, so they work at once.
func (l *Lab) Link(a *Host, aIf, aAddr string, b *Host, bIf, bAddr string) {
	l.t.Helper()
	l.ip("link", "add", aIf, "netns", a.NS, "type", "veth", "peer", "name", bIf, "netns", b.NS)
	for _, side := range []struct {
		h        *Host
		dev, adr string
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		for _, addr := range strings.Fields(side.adr) {
			args := []string{"-n", side.h.NS, "addr", "add", addr, "dev", side.dev}
			if strings.Contains(addr, ":") {
				args = append(args, "nodad")
			}
			l.ip(args...)
		}
		l.ip("-n", side.h.NS, "link", "set", side.dev, "up")
	}
	l.ready(a, aIf)
	l.ready(b, bIf)
}

// ready waits (at most 5 s) until the kernel has made an interface ready
// for IPv6: it adds the link-local address only once the link is up on
// both ends (linkwatch may take a second), and until then IPv6 packets,
// neighbour solicitations included, are dropped.
func (l *Lab) ready(h *Host, dev string) {
	l.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command("ip", "-n", h.NS, "-6", "addr", "show", "dev", dev, "scope", "link").CombinedOutput()
		if err == nil && strings.Contains(string(out), "fe80::") && !strings.Contains(string(out), "tentative") {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("in %s: %s not ready for IPv6 after 5 s: %s", h.Name, dev, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close deletes every namespace of the lab (test cleanup calls it).
func (l *Lab) Close() {
	l.mu.Lock()
	hosts := l.hosts
	l.hosts = nil
	l.mu.Unlock()
	for _, h := range hosts {
		_ = exec.Command("ip", "netns", "del", h.NS).Run()
	}
	unregister(l)
}

func (l *Lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Run runs a command inside the host and fails the test if it fails.
func (h *Host) Run(args ...string) string {
	h.lab.t.Helper()
	out, err := h.Try(args...)
	if err != nil {
		h.lab.t.Fatalf("in %s: %s: %v\n%s", h.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs a command inside the host and returns its combined output.
func (h *Host) Try(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", h.NS}, args...)...).CombinedOutput()
	return string(out), err
}

// Command is a command that runs inside the host (not started).
func (h *Host) Command(args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS}, args...)...)
}

// Do runs fn on a thread inside the host's namespace (see netns.Do):
// sockets fn opens live in the host.
func (h *Host) Do(fn func() error) error { return netns.Do(h.NS, fn) }

// Sysctl sets a sysctl inside the host (key as in sysctl(8)).
func (h *Host) Sysctl(key, value string) {
	h.lab.t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	err := h.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		h.lab.t.Fatalf("in %s: sysctl %s=%s: %v", h.Name, key, value, err)
	}
}

// Router makes the host forward IPv4 and IPv6, and answer every expired
// packet: the kernel's ICMP rate limit per destination (one a second
// after a burst of six) is turned off so that back-to-back traces in a
// test all see every router.
func (h *Host) Router() {
	h.Sysctl("net.ipv4.ip_forward", "1")
	h.Sysctl("net.ipv6.conf.all.forwarding", "1")
	h.Sysctl("net.ipv4.icmp_ratelimit", "0")
	h.Sysctl("net.ipv6.icmp.ratelimit", "0")
}

// Route runs `ip route ARGS` (or `ip -6 route` for an IPv6 prefix) in the
// host: Route("replace", "10.0.3.0/24", "via", "10.0.1.2").
func (h *Host) Route(args ...string) {
	h.lab.t.Helper()
	cmd := []string{"ip"}
	for _, a := range args {
		if strings.Contains(a, ":") {
			cmd = append(cmd, "-6")
			break
		}
	}
	h.Run(append(append(cmd, "route"), args...)...)
}

// Packets is the packet counter of the rule in table/chain commented with
// name (added with `-m comment --comment name`), read with iptables
// -nvxL; ip6 reads ip6tables.
func (h *Host) Packets(ip6 bool, table, chain, name string) uint64 {
	h.lab.t.Helper()
	tool := "iptables"
	if ip6 {
		tool = "ip6tables"
	}
	out := h.Run(tool, "-t", table, "-nvxL", chain)
	n, err := packetsOf(out, name)
	if err != nil {
		h.lab.t.Fatalf("in %s: %s -t %s -nvxL %s: %v\n%s", h.Name, tool, table, chain, err, out)
	}
	return n
}

// packetsOf finds the rule commented /* name */ in iptables -nvxL output.
func packetsOf(out, name string) (uint64, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "/* "+name+" */") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			break
		}
		return strconv.ParseUint(f[0], 10, 64)
	}
	return 0, fmt.Errorf("no rule commented %q", name)
}

// Labs alive in this process, for the signal handler.
var (
	liveMu  sync.Mutex
	live    = map[*Lab]struct{}{}
	sigOnce sync.Once
)

func register(l *Lab) {
	sigOnce.Do(func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		go func() {
			s := <-c
			liveMu.Lock()
			labs := make([]*Lab, 0, len(live))
			for l := range live {
				labs = append(labs, l)
			}
			liveMu.Unlock()
			for _, l := range labs {
				l.Close()
			}
			fmt.Fprintf(os.Stderr, "netlab: %v: namespaces deleted\n", s)
			os.Exit(1)
		}()
	})
	liveMu.Lock()
	live[l] = struct{}{}
	liveMu.Unlock()
}

func unregister(l *Lab) {
	liveMu.Lock()
	delete(live, l)
	liveMu.Unlock()
}

// reapStale deletes namespaces of labs whose process has exited.
func reapStale() {
	entries, err := os.ReadDir(netns.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		pidText, _, ok := strings.Cut(strings.TrimPrefix(name, prefix), "x")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			continue
		}
		_ = exec.Command("ip", "netns", "del", name).Run()
	}
}
