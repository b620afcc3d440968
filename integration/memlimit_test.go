package integration

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// memoryCgroup makes a memory cgroup limited to limit bytes (on the v1
// hierarchy with the memory controller, else on v2) and removes it when
// the test ends, after the processes in it: register it before starting
// them. It returns the file a process joins it through.
func memoryCgroup(t *testing.T, limit int64) string {
	t.Helper()
	name := fmt.Sprintf("subsegment-it-%d", os.Getpid())
	var dir, limitFile string
	switch {
	case fileExists("/sys/fs/cgroup/memory/memory.limit_in_bytes"):
		dir, limitFile = filepath.Join("/sys/fs/cgroup/memory", name), "memory.limit_in_bytes"
	case strings.Contains(readFile("/sys/fs/cgroup/cgroup.subtree_control"), "memory"):
		dir, limitFile = filepath.Join("/sys/fs/cgroup", name), "memory.max"
	default:
		t.Skip("no memory cgroup controller to make a cgroup with (v1 memory hierarchy, or v2 with memory in the root's subtree_control)")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a memory cgroup (root on a machine that delegates cgroups?): %v", err)
	}
	t.Cleanup(func() {
		// The kernel removes an empty cgroup's files itself: rmdir, and
		// retry while the killed processes leave it.
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
	return filepath.Join(dir, "cgroup.procs")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// TestMemoryLimitFromCgroup: an exporter started in a cgroup limited to
// 512 MiB sets Go's soft memory limit to 0.9 of it, says so at start and
// shows it in go_gc_gomemlimit_bytes; GOMEMLIMIT wins over the cgroup;
// outside a limited cgroup (this CI's own) Go's default stays.
func TestMemoryLimitFromCgroup(t *testing.T) {
	const limit = 512 << 20
	procs := memoryCgroup(t, limit)
	for _, tc := range []struct {
		name, env, flags string
		inCgroup         bool
		want             float64
		log              string
	}{
		{name: "in the cgroup", inCgroup: true, want: math.Floor(limit * 0.9), log: `memory_limit_bytes=483183820 memory_limit_from=/sys/fs/cgroup/`},
		{name: "a ratio of 0.5", inCgroup: true, flags: "--runtime.memory-limit-ratio=0.5", want: limit / 2, log: `memory_limit_bytes=268435456`},
		{name: "ratio 0: off", inCgroup: true, flags: "--runtime.memory-limit-ratio=0", want: math.MaxInt64, log: `memory_limit_from="--runtime.memory-limit-ratio=0"`},
		{name: "GOMEMLIMIT wins", inCgroup: true, env: "GOMEMLIMIT=300MiB", want: 300 << 20, log: `memory_limit_bytes=314572800 memory_limit_from=GOMEMLIMIT`},
		{name: "outside the cgroup", want: -1, log: `memory_limit_from=`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := fmt.Sprintf("exec env %s %s --web.listen-address 127.0.0.1:0 %s", tc.env, binary, tc.flags)
			if tc.inCgroup {
				script = fmt.Sprintf("echo $$ > %s && %s", procs, script)
			}
			p := start(t, "exporter", "/bin/sh", "-c", script)
			web := p.waitOutput(t, webListening, 20*time.Second)[1]
			p.waitOutput(t, regexpOf(`msg="starting subsegment_exporter".*`+regexp.QuoteMeta(tc.log)), 5*time.Second)
			got := metricValue(httpGet(t, "http://"+web+"/metrics"), "go_gc_gomemlimit_bytes")
			if tc.want >= 0 && got != tc.want {
				t.Fatalf("go_gc_gomemlimit_bytes = %g, want %g", got, tc.want)
			}
			if tc.want < 0 && got <= 0 {
				t.Fatalf("go_gc_gomemlimit_bytes = %g, want a limit (Go's default outside a limited cgroup, or this machine's own)", got)
			}
			p.stop(t)
		})
	}
}
