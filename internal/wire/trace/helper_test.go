package trace_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// helperEnv makes the test binary a helper process: it dials the address
// in the variable, traces the connection and prints the result as JSON.
const helperEnv = "SSTR_TRACE_HELPER"

func TestMain(m *testing.M) {
	if target := os.Getenv(helperEnv); target != "" {
		os.Exit(helper(target))
	}
	os.Exit(m.Run())
}

// helperOut is what the helper reports.
type helperOut struct {
	CapNetRaw  bool
	Capability string
	Why        string
	Protocol   string
	Reason     string
	Local      string
	Path       []string
	Reached    bool
}

func helper(target string) int {
	conn, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	tr, err := trace.NewTracer(trace.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := tr.Trace(ctx, conn.(*net.TCPConn), trace.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	method, why := trace.Capability()
	out := helperOut{CapNetRaw: hasCapNetRaw(), Capability: string(method), Why: why, Protocol: string(res.Flow.Protocol),
		Reason: res.Flow.Reason, Local: res.Flow.Local.String(), Path: path(res), Reached: res.Reached}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 1
	}
	return 0
}

// hasCapNetRaw reads CAP_NET_RAW (bit 13) of the effective set.
func hasCapNetRaw() bool {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<13) != 0
		}
	}
	return false
}

// runHelper runs the test binary as a helper in b, behind prefix (a
// command that drops privileges, or none), tracing its connection to target.
func runHelper(t *testing.T, l *chainLab, prefix []string, target string) helperOut {
	t.Helper()
	cmd := l.b.Command(append(prefix, os.Args[0], "-test.run=^$")...)
	cmd.Env = append(os.Environ(), helperEnv+"="+target)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, stderr.String())
	}
	var got helperOut
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	t.Logf("%+v", got)
	return got
}

// Without CAP_NET_RAW (a process whose bounding set lacks it, as a relay
// run without the unit's AmbientCapabilities): the UDP fallback runs, the
// result says so and why, and the routers are still listed. With it, the
// same helper uses TCP.
func TestTraceUnprivileged(t *testing.T) {
	l := newChainLab(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is needed to drop CAP_NET_RAW")
	}
	for _, v := range []struct {
		name string
		addr func(string) string
	}{{"ipv4", func(a string) string { return a }}, {"ipv6", v6}} {
		target := echo(t, l.c, net.JoinHostPort(v.addr("10.61.3.2"), "0"))
		want := []string{v.addr("10.61.1.2"), v.addr("10.61.2.2"), v.addr("10.61.3.2")}
		for _, c := range []struct {
			name       string
			prefix     []string
			raw        bool
			wantMethod string
		}{
			{"unprivileged", []string{setpriv, "--inh-caps=-all", "--bounding-set=-net_raw", "--"}, false, "udp"},
			{"privileged", nil, true, "tcp"},
		} {
			t.Run(v.name+"/"+c.name, func(t *testing.T) {
				got := runHelper(t, l, c.prefix, target)
				if got.CapNetRaw != c.raw {
					t.Fatalf("CAP_NET_RAW %v in the helper, want %v", got.CapNetRaw, c.raw)
				}
				if got.Protocol != c.wantMethod || got.Capability != c.wantMethod {
					t.Errorf("method %s (capability %s), want %s", got.Protocol, got.Capability, c.wantMethod)
				}
				if !c.raw && (!strings.Contains(got.Reason, "no CAP_NET_RAW") || !strings.Contains(got.Why, "no CAP_NET_RAW")) {
					t.Errorf("reason %q, capability %q: want them to say CAP_NET_RAW is missing", got.Reason, got.Why)
				}
				if strings.Join(got.Path, " ") != strings.Join(want, " ") || !got.Reached {
					t.Errorf("path %v (reached %v), want %v", got.Path, got.Reached, want)
				}
			})
		}
	}
}
