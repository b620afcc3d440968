package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/demo/delayproxy"
)

// helperEnv makes the test binary a helper process instead of running
// tests: the delaying proxy, run inside a network namespace.
const helperEnv = "SUBSEGMENT_TEST_HELPER"

// runHelper runs a helper: "delayproxy" with args listen, target, one-way
// delay; it serves until SIGTERM.
func runHelper(name string, args []string) int {
	if name != "delayproxy" || len(args) != 3 {
		fmt.Fprintf(os.Stderr, "unknown helper %q %v\n", name, args)
		return 2
	}
	d, err := time.ParseDuration(args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	p, err := delayproxy.Start(args[0], args[1], d, d)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("delay proxy listening on %s\n", p.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	p.Close()
	return 0
}

// lab is a chain of network namespaces A - B - C - Z joined by veth
// pairs, as ../shared/lab.md builds it, with names unique to the test.
// Everything it creates goes away when the test ends (namespaces take
// their interfaces and iptables rules with them).
type lab struct {
	t      *testing.T
	suffix string
}

// newLab creates the namespaces and links; tests that need it are root-only.
func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("network namespace tests need root (CI runs as root)")
		}
		t.Skip("network namespace tests need root")
	}
	requireTool(t, "ip")
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, suffix: hex.EncodeToString(b[:])}
	for _, n := range []string{"A", "B", "C", "Z"} {
		l.ip("netns", "add", l.ns(n))
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.ns(n)).Run() })
		l.ip("-n", l.ns(n), "link", "set", "lo", "up")
	}
	l.link("A", "B", 1)
	l.link("B", "C", 2)
	l.link("C", "Z", 3)
	return l
}

// ns is the namespace of host n.
func (l *lab) ns(n string) string { return "ss" + strings.ToLower(n) + l.suffix }

// dev is the interface in host from that leads to host to.
func (l *lab) dev(from, to string) string { return strings.ToLower(from+to) + l.suffix }

// addr is host n's address on the link to its next host (or, for the
// far side, its address on the link from the previous host).
func (l *lab) addr(n string) string {
	switch n {
	case "B":
		return "10.77.1.2"
	case "C":
		return "10.77.2.2"
	case "Z":
		return "10.77.3.2"
	}
	return "10.77.1.1"
}

func (l *lab) link(a, b string, subnet int) {
	l.ip("link", "add", l.dev(a, b), "netns", l.ns(a), "type", "veth", "peer", "name", l.dev(b, a), "netns", l.ns(b))
	l.ip("-n", l.ns(a), "addr", "add", fmt.Sprintf("10.77.%d.1/24", subnet), "dev", l.dev(a, b))
	l.ip("-n", l.ns(b), "addr", "add", fmt.Sprintf("10.77.%d.2/24", subnet), "dev", l.dev(b, a))
	l.ip("-n", l.ns(a), "link", "set", l.dev(a, b), "up")
	l.ip("-n", l.ns(b), "link", "set", l.dev(b, a), "up")
}

func (l *lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// run runs a command inside host n's namespace and fails the test on error.
func (l *lab) run(n string, args ...string) string {
	l.t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", l.ns(n)}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("in %s: %s: %v\n%s", n, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// exec returns the argument prefix that runs a command in host n's
// namespace, pinned to cpu ("" for any); on CPU 1, the loaded one, at the
// lowest priority.
func (l *lab) exec(n, cpu string) []string {
	prefix := []string{"ip", "netns", "exec", l.ns(n)}
	if cpu != "" {
		prefix = append([]string{"taskset", "-c", cpu}, prefix...)
	}
	if cpu == "1" {
		prefix = append([]string{"nice", "-n", "19"}, prefix...)
	}
	return prefix
}

// relay starts the binary as a relay in host n, listening on its address
// (port 9000), its HTTP on the namespace's own loopback.
func (l *lab) relay(n, cpu, forwardTo string, extra ...string) *proc {
	l.t.Helper()
	argv := append(l.exec(n, cpu), binary, "--listen", l.addr(n)+":9000", "--relay.name", strings.ToLower(n),
		"--web.listen-address", "127.0.0.1:9717")
	if forwardTo != "" {
		argv = append(argv, "--forward-to", forwardTo)
	}
	p := start(l.t, "relay "+n, argv[0], append(argv[1:], extra...)...)
	p.waitOutput(l.t, relayListening, 10*time.Second)
	return p
}

// delayProxy starts the delaying proxy inside host n (the test binary as
// a helper), adding oneWay each way between listen and target.
//
// The proxy is the lab's link, not a process under test: it runs with a
// real-time priority (chrt -f), so that busy processes of the test or
// beside it do not add their CPU wait to the delay it stands for. It
// sleeps but for the moments it forwards.
func (l *lab) delayProxy(n, cpu, listen, target string, oneWay time.Duration) {
	l.t.Helper()
	var argv []string
	if path, err := exec.LookPath("chrt"); err != nil || exec.Command(path, "-f", "10", "true").Run() != nil {
		// Without CAP_SYS_NICE (or real-time time in this cgroup) the
		// proxy runs at normal priority: busy neighbours may add to it.
		l.t.Logf("delay proxy at normal priority: chrt -f 10 is not available here")
	} else {
		argv = []string{path, "-f", "10"}
	}
	argv = append(argv, l.exec(n, cpu)...)
	argv = append(argv, "env", helperEnv+"=delayproxy", os.Args[0], "-test.run=^$", listen, target, oneWay.String())
	p := start(l.t, "delay proxy in "+n, argv[0], argv[1:]...)
	p.waitOutput(l.t, delayListening, 10*time.Second)
}
