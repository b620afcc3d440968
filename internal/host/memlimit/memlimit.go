// Package memlimit sets the Go runtime's soft memory limit from the
// memory limit of the process's cgroup, as Prometheus' --auto-gomemlimit
// does: Go does not read that limit itself, and an exporter whose heap
// goal grows past it is killed instead of collecting sooner. A scrape of
// 10 000 continuous entries holds its 1.4 million series in memory: the
// next heap goal doubles them, and RSS went 445 → 1200 MiB over a few
// scrapes (bench/README.md).
//
// Layering (internal/architecture_test.go): floor 0; it imports nothing of
// the project.
package memlimit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
)

// Decision is what Apply did, for the start-up log.
type Decision struct {
	// Limit is the soft memory limit in force (bytes; 0: none).
	Limit int64
	// Cgroup is the cgroup's limit the soft limit comes from (0: none
	// found).
	Cgroup int64
	// From says where the limit comes from: "GOMEMLIMIT",
	// "--runtime.memory-limit-ratio=0", the cgroup file it read, or why
	// there is none.
	From string
}

// DefaultRatio is --runtime.memory-limit-ratio's default: Prometheus'
// (--auto-gomemlimit.ratio), room for what Go does not count (stacks
// outside the heap, the page cache of the cgroup's other processes).
const DefaultRatio = 0.9

// unlimited is where cgroup v1 says "no limit": a page-rounded
// math.MaxInt64. Anything from 2^62 up counts as none.
const unlimited = int64(1) << 62

// Apply sets the soft memory limit to ratio × the cgroup's memory limit,
// unless GOMEMLIMIT is set in the environment (getenv) or ratio is 0.
// root is the file system /proc and /sys are read from ("/" in
// production, fixtures in tests). A cgroup without a limit, or one that
// cannot be read, leaves Go's default (no limit); the error says why it
// could not be read.
func Apply(ratio float64, getenv func(string) string, root fs.FS) (Decision, error) {
	if getenv("GOMEMLIMIT") != "" {
		return Decision{Limit: debug.SetMemoryLimit(-1), From: "GOMEMLIMIT"}, nil
	}
	if ratio <= 0 {
		return Decision{From: "--runtime.memory-limit-ratio=0"}, nil
	}
	if ratio > 1 {
		return Decision{}, fmt.Errorf("--runtime.memory-limit-ratio=%g: give a fraction of the cgroup's memory limit, above 0 and at most 1 (0 turns the soft limit off)", ratio)
	}
	limit, file, err := CgroupLimit(root)
	if err != nil {
		return Decision{From: "none"}, err
	}
	if limit == 0 {
		return Decision{From: "no cgroup memory limit"}, nil
	}
	soft := int64(float64(limit) * ratio)
	debug.SetMemoryLimit(soft)
	return Decision{Limit: soft, Cgroup: limit, From: file}, nil
}

// CgroupLimit is the memory limit of the process's cgroup and of its
// ancestors (the smallest: the kernel applies them all), and the file it
// came from; 0 when there is none. It reads cgroup v2's memory.max under
// sys/fs/cgroup (or sys/fs/cgroup/unified), else cgroup v1's
// memory.limit_in_bytes under sys/fs/cgroup/memory, for the cgroup
// proc/self/cgroup names.
func CgroupLimit(root fs.FS) (int64, string, error) {
	self, err := fs.ReadFile(root, "proc/self/cgroup")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, "", nil
		}
		return 0, "", fmt.Errorf("reading the process's cgroup: %w", err)
	}
	v1, v2, err := parseSelfCgroup(self)
	if err != nil {
		return 0, "", err
	}
	// The memory controller is on v1 when a v1 hierarchy has it (a hybrid
	// system mounts v2 without it), else on v2.
	if v1 != "" {
		return smallest(root, "sys/fs/cgroup/memory", v1, "memory.limit_in_bytes")
	}
	if v2 != "" {
		for _, mount := range []string{"sys/fs/cgroup", "sys/fs/cgroup/unified"} {
			if _, err := fs.Stat(root, mount+"/cgroup.controllers"); err == nil {
				return smallest(root, mount, v2, "memory.max")
			}
		}
	}
	return 0, "", nil
}

// parseSelfCgroup reads /proc/self/cgroup: the path of the v1 hierarchy
// with the memory controller, and the v2 path ("0::/path").
func parseSelfCgroup(b []byte) (v1, v2 string, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		id, rest, ok := strings.Cut(sc.Text(), ":")
		controllers, p, ok2 := strings.Cut(rest, ":")
		if !ok || !ok2 || !strings.HasPrefix(p, "/") {
			return "", "", fmt.Errorf("/proc/self/cgroup line %d: %q is not id:controllers:/path", n, sc.Text())
		}
		switch {
		case id == "0" && controllers == "":
			v2 = p
		case strings.Contains(","+controllers+",", ",memory,"):
			v1 = p
		}
	}
	return v1, v2, sc.Err()
}

// smallest walks from the cgroup up to the hierarchy's root and returns
// the smallest limit in file along the way. A cgroup namespace (a
// container) shows its own root as "/": its limit is the mount's.
func smallest(root fs.FS, mount, cgroup, file string) (int64, string, error) {
	var limit int64
	var from string
	for dir := path.Clean(cgroup); ; dir = path.Dir(dir) {
		name := path.Join(mount, strings.TrimPrefix(dir, "/"), file)
		b, err := fs.ReadFile(root, name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// The root cgroup has no limit file; a cgroup outside the
			// namespace's view has none either.
		case err != nil:
			return 0, "", fmt.Errorf("reading the cgroup memory limit: %w", err)
		default:
			v, err := parseLimit(b)
			if err != nil {
				return 0, "", fmt.Errorf("/%s: %w", name, err)
			}
			if v > 0 && (limit == 0 || v < limit) {
				limit, from = v, "/"+name
			}
		}
		if dir == "/" || dir == "." {
			return limit, from, nil
		}
	}
}

// parseLimit reads a limit file: bytes, or "max" (v2) or a value from
// 2^62 (v1) for none (0).
func parseLimit(b []byte) (int64, error) {
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory limit %q is neither bytes nor \"max\"", s)
	}
	if v >= uint64(unlimited) || v > math.MaxInt64 {
		return 0, nil
	}
	return int64(v), nil
}
