package reflector

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// nsLab is a sender namespace S, a router R and a reflector namespace F:
// S (10.99.1.1) - R - F (10.99.2.2), with names unique to the test. The
// namespaces take their links and iptables rules with them when the test
// ends.
type nsLab struct {
	t      *testing.T
	suffix string
}

const labReflector = "10.99.2.2"

func needRoot(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("network namespace tests need root (CI runs as root)")
		}
		t.Skip("network namespace tests need root")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing: make deps installs it", tool)
			}
			t.Skipf("%s is missing (make deps installs it)", tool)
		}
	}
}

func newNSLab(t *testing.T) *nsLab {
	needRoot(t, "iptables")
	var b [3]byte
	_, _ = rand.Read(b[:])
	l := &nsLab{t: t, suffix: hex.EncodeToString(b[:])}
	for _, n := range []string{"S", "R", "F"} {
		l.run("", "ip", "netns", "add", l.ns(n))
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.ns(n)).Run() })
		l.run(n, "ip", "link", "set", "lo", "up")
	}
	l.run("", "ip", "link", "add", "sr", "netns", l.ns("S"), "type", "veth", "peer", "name", "rs", "netns", l.ns("R"))
	l.run("", "ip", "link", "add", "rf", "netns", l.ns("R"), "type", "veth", "peer", "name", "fr", "netns", l.ns("F"))
	for _, a := range [][3]string{{"S", "sr", "10.99.1.1/24"}, {"R", "rs", "10.99.1.2/24"}, {"R", "rf", "10.99.2.1/24"}, {"F", "fr", labReflector + "/24"}} {
		l.run(a[0], "ip", "addr", "add", a[2], "dev", a[1])
		l.run(a[0], "ip", "link", "set", a[1], "up")
	}
	l.run("S", "ip", "route", "add", "default", "via", "10.99.1.2")
	l.run("F", "ip", "route", "add", "default", "via", "10.99.2.1")
	l.run("R", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return l
}

func (l *nsLab) ns(n string) string { return "stamp" + n + l.suffix }

// run runs a command, inside namespace n unless n is empty.
func (l *nsLab) run(n string, args ...string) string {
	l.t.Helper()
	if n != "" {
		args = append([]string{"ip", "netns", "exec", l.ns(n)}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// in runs fn on an OS thread moved into namespace n: sockets fn opens live
// there for good. The thread is discarded afterwards (the goroutine ends
// locked), so no other goroutine runs in the namespace.
func (l *nsLab) in(n string, fn func()) {
	l.t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/var/run/netns/" + l.ns(n))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		l.t.Fatal(err)
	}
}

// reflector starts a reflector in F on STAMP's port.
func (l *nsLab) reflector(cfg Config) *Reflector {
	var r *Reflector
	cfg.Address = labReflector + ":862"
	l.in("F", func() {
		var err error
		if r, err = New(cfg); err != nil {
			l.t.Error(err)
		}
	})
	if r == nil {
		l.t.FailNow()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Serve(ctx) }()
	l.t.Cleanup(func() { cancel(); <-done })
	return r
}

// session opens a sender session in S.
func (l *nsLab) session(o stamp.SessionOptions) *stamp.Session {
	var s *stamp.Session
	o.Target = labReflector + ":862"
	l.in("S", func() {
		var err error
		if s, err = stamp.Open(context.Background(), o); err != nil {
			l.t.Error(err)
		}
	})
	if s == nil {
		l.t.FailNow()
	}
	l.t.Cleanup(func() { s.Close() })
	return s
}

func probeSession(t *testing.T, s *stamp.Session, n int, interval time.Duration) (*stamp.Result, stamp.Summary) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := s.Probe(ctx, n, interval, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return res, stamp.Summarize(res)
}

// Loss on one direction only (iptables drops on the receiving side, in
// the namespace): the session's summary names the direction from the
// Direct Measurement counters, and the other direction stays clean.
func TestLossPerDirection(t *testing.T) {
	l := newNSLab(t)
	l.reflector(Config{})
	for _, dir := range []string{"forward", "return"} {
		t.Run(dir, func(t *testing.T) {
			var rule []string
			if dir == "forward" {
				rule = []string{"F", "iptables", "-I", "INPUT", "-i", "fr", "-p", "udp", "--dport", "862"}
			} else {
				rule = []string{"S", "iptables", "-I", "INPUT", "-i", "sr", "-p", "udp", "--sport", "862"}
			}
			l.run(rule[0], append(rule[1:], "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP")...)
			defer l.run(rule[0], append([]string{"iptables", "-D"}, append(rule[3:], "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP")...)...)
			s := l.session(stamp.SessionOptions{TLVs: stamp.TLVRequest{DirectMeasurement: true}})
			_, sum := probeSession(t, s, 200, time.Millisecond)
			t.Logf("%s: sent %d received %d lost %d: forward %d return %d unknown %d", dir, sum.Sent, sum.Received, sum.Lost, sum.ForwardLost, sum.ReturnLost, sum.UnknownLost)
			if !sum.LossByDirection || sum.Lost == 0 || sum.ForwardLost+sum.ReturnLost+sum.UnknownLost != sum.Lost {
				t.Fatalf("summary %+v", sum)
			}
			named, other := sum.ForwardLost, sum.ReturnLost
			if dir == "return" {
				named, other = sum.ReturnLost, sum.ForwardLost
			}
			if other != 0 || named == 0 || sum.UnknownLost > sum.Lost/2 {
				t.Errorf("%s loss: forward %d, return %d, unknown %d", dir, sum.ForwardLost, sum.ReturnLost, sum.UnknownLost)
			}
		})
	}
}

// A router re-marks DSCP to 0 in one direction: the summary names it.
func TestDSCPRemarkedPerDirection(t *testing.T) {
	l := newNSLab(t)
	l.reflector(Config{})
	for _, tc := range []struct {
		name, out string
	}{{"none", ""}, {"forward", "rf"}, {"return", "rs"}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.out != "" {
				rule := []string{"-t", "mangle", "-A", "FORWARD", "-o", tc.out, "-j", "DSCP", "--set-dscp", "0"}
				l.run("R", append([]string{"iptables"}, rule...)...)
				defer l.run("R", append([]string{"iptables"}, append([]string{"-t", "mangle", "-D"}, rule[3:]...)...)...)
			}
			s := l.session(stamp.SessionOptions{DSCP: 46, TLVs: stamp.TLVRequest{ClassOfService: true, ReturnDSCP: 34}})
			_, sum := probeSession(t, s, 10, time.Millisecond)
			t.Logf("%s: sent %d at the reflector %d asked %d returned %d; remarked forward %v return %v", tc.name, sum.DSCPSent, sum.DSCPAtReflector, sum.DSCPRequested, sum.DSCPReturned, sum.ForwardRemarked, sum.ReturnRemarked)
			if sum.Received != 10 || !sum.ForwardKnown || !sum.ReturnKnown {
				t.Fatalf("summary %+v", sum)
			}
			if sum.ForwardRemarked != (tc.name == "forward") || sum.ReturnRemarked != (tc.name == "return") {
				t.Errorf("re-marked forward %v return %v, want the %s direction only", sum.ForwardRemarked, sum.ReturnRemarked, tc.name)
			}
			wantAt, wantBack := uint8(46), uint8(34)
			if tc.name == "forward" {
				wantAt = 0
			}
			if tc.name == "return" {
				wantBack = 0
			}
			if sum.DSCPAtReflector != wantAt || sum.DSCPReturned != wantBack {
				t.Errorf("DSCP at the reflector %d (want %d), returned %d (want %d)", sum.DSCPAtReflector, wantAt, sum.DSCPReturned, wantBack)
			}
		})
	}
}
