package integration

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/memlimit"
)

// memoryCgroup makes a memory cgroup limited to limit bytes and removes it
// when the test ends, after the processes in it: register it before
// starting them. On a v1 memory hierarchy it is a child of the test's own
// cgroup (the exporter stays inside the test's accounting, and finds its
// limit below an unlimited parent); on v2 a child of the root, whose
// subtree_control must have memory. It returns the directory.
func memoryCgroup(t *testing.T, limit int64) string {
	t.Helper()
	name := fmt.Sprintf("subsegment-it-%d", os.Getpid())
	var dir, limitFile string
	switch {
	case v1MemoryMount() != nil:
		m, own := v1MemoryMount(), "/"
		for _, line := range strings.Split(readFile("/proc/self/cgroup"), "\n") {
			if f := strings.SplitN(line, ":", 3); len(f) == 3 && slices.Contains(strings.Split(f[1], ","), "memory") {
				own = f[2]
			}
		}
		if m[0] != "/" {
			own = "/" + strings.TrimPrefix(strings.TrimPrefix(own, m[0]), "/")
		}
		dir, limitFile = filepath.Join(m[1], own, name), "memory.limit_in_bytes"
	case strings.Contains(readFile("/sys/fs/cgroup/cgroup.subtree_control"), "memory"):
		dir, limitFile = filepath.Join("/sys/fs/cgroup", name), "memory.max"
	default:
		t.Skip("no memory cgroup controller to make a cgroup with (v1 memory hierarchy, or v2 with memory in the root's subtree_control)")
	}
	_ = os.Remove(dir) // a previous run's, left empty by a crash
	if err := os.Mkdir(dir, 0o755); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot make a memory cgroup as root: %v", err)
		}
		t.Skipf("cannot make a memory cgroup (not root, or cgroups delegated elsewhere?): %v", err)
	}
	t.Cleanup(func() {
		// The kernel removes an empty cgroup's files itself: rmdir, and
		// retry while the stopped processes leave it.
		for range 50 {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("cgroup %s left behind", dir)
	})
	if err := os.WriteFile(filepath.Join(dir, limitFile), []byte(fmt.Sprint(limit)), 0o644); err != nil {
		t.Fatalf("setting %s: %v", limitFile, err)
	}
	return dir
}

// v1MemoryMount is the root and mount point of the v1 hierarchy with the
// memory controller (nil: none), from /proc/self/mountinfo.
func v1MemoryMount() []string {
	for _, line := range strings.Split(readFile("/proc/self/mountinfo"), "\n") {
		before, after, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(before), strings.SplitN(after, " ", 3)
		if ok && len(f) >= 5 && len(g) == 3 && g[0] == "cgroup" && slices.Contains(strings.Split(g[2], ","), "memory") {
			return []string{f[3], f[4]}
		}
	}
	return nil
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// TestMemoryLimitFromCgroup: an exporter started in a cgroup limited to
// 512 MiB sets Go's soft memory limit to 0.9 of it, says so at start and
// shows it in go_gc_gomemlimit_bytes; GOMEMLIMIT wins over the cgroup;
// outside that cgroup (in the test's own) what the test's own cgroup
// gives applies; a ratio out of range is refused at start.
func TestMemoryLimitFromCgroup(t *testing.T) {
	const limit = 512 << 20
	dir := memoryCgroup(t, limit)
	own, _, err := memlimit.CgroupLimit(os.DirFS("/"))
	if err != nil {
		t.Fatalf("the test's own cgroup limit: %v", err)
	}
	if own > 0 && own <= limit {
		t.Skipf("the test's own cgroup is limited to %d bytes, not above the %d this test sets", own, limit)
	}
	outside := tcOutside(own)
	for _, tc := range []struct {
		name, env, flags string
		inCgroup         bool
		want             float64
		log              string
	}{
		{name: "in the cgroup", inCgroup: true, want: math.Floor(limit * 0.9),
			log: `memory_limit=483183820 cgroup_memory_limit=536870912 memory_limit_from=` + dir + "/"},
		{name: "a ratio of 0.5", inCgroup: true, flags: "--runtime.memory-limit-ratio=0.5", want: limit / 2, log: `memory_limit=268435456 cgroup_memory_limit=536870912`},
		{name: "ratio 0: off", inCgroup: true, flags: "--runtime.memory-limit-ratio=0", want: math.MaxInt64,
			log: `memory_limit=none cgroup_memory_limit=536870912 memory_limit_from="--runtime.memory-limit-ratio=0"`},
		{name: "GOMEMLIMIT wins", inCgroup: true, env: "GOMEMLIMIT=300MiB", want: 300 << 20, log: `memory_limit=314572800 cgroup_memory_limit=536870912 memory_limit_from=GOMEMLIMIT`},
		{name: "outside the cgroup", want: outside.want, log: outside.log},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, "exporter", "/bin/sh", "-c", exporterIn(tc.inCgroup, dir, tc.env, "--web.listen-address 127.0.0.1:0 "+tc.flags))
			web := p.waitOutput(t, webListening, 20*time.Second)[1]
			p.waitOutput(t, regexpOf(`msg="starting subsegment_exporter".*`+regexp.QuoteMeta(tc.log)), 5*time.Second)
			if got := metricValue(httpGet(t, "http://"+web+"/metrics"), "go_gc_gomemlimit_bytes"); got != tc.want {
				t.Fatalf("go_gc_gomemlimit_bytes = %g, want %g", got, tc.want)
			}
			p.stop(t)
		})
	}
	for _, ratio := range []string{"0.05", "1.5", "NaN"} {
		t.Run("refused ratio "+ratio, func(t *testing.T) {
			p := start(t, "exporter", "/bin/sh", "-c", exporterIn(true, dir, "", "--web.listen-address 127.0.0.1:0 --runtime.memory-limit-ratio="+ratio))
			select {
			case <-p.done:
			case <-time.After(20 * time.Second):
				t.Fatalf("the exporter did not refuse --runtime.memory-limit-ratio=%s", ratio)
			}
			if want := "--runtime.memory-limit-ratio=" + ratio + ": give the fraction of the cgroup's memory limit Go's soft limit takes, from 0.1 to 1 (0 turns the soft limit off)"; p.err == nil || !strings.Contains(p.out.String(), want) {
				t.Fatalf("exit %v, output %q; want a failure saying %q", p.err, p.out.String(), want)
			}
		})
	}
}

// exporterIn is a shell line that starts the exporter with args, in the
// cgroup dir when in is set, with env (NAME=value) when given.
func exporterIn(in bool, dir, env, args string) string {
	line := fmt.Sprintf("exec env %s %s %s", env, binary, args)
	if in {
		line = fmt.Sprintf("echo $$ > %s && %s", filepath.Join(dir, "cgroup.procs"), line)
	}
	return line
}

// reported is what an exporter reports of its memory limit: the metric
// and the start-up line's part.
type reported struct {
	want float64
	log  string
}

// tcOutside is what an exporter in the test's own cgroup, whose limit is
// own (0: none), reports.
func tcOutside(own int64) reported {
	if own == 0 {
		return reported{math.MaxInt64, `memory_limit=none cgroup_memory_limit=none`}
	}
	soft := int64(float64(own) * 0.9)
	return reported{float64(soft), fmt.Sprintf("memory_limit=%d cgroup_memory_limit=%d", soft, own)}
}
