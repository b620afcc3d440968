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
	"slices"
	"strconv"
	"strings"
)

// Decision is what Apply did, for the start-up log.
type Decision struct {
	// Limit is the soft memory limit in force (bytes; 0: none).
	Limit int64
	// Cgroup is the process's cgroup memory limit (0: none found), read
	// also when GOMEMLIMIT or a ratio of 0 sets the soft limit.
	Cgroup int64
	// From says where the limit comes from: "GOMEMLIMIT",
	// "--runtime.memory-limit-ratio=0", the cgroup file it read, or why
	// there is none.
	From string
}

// Bytes writes a limit for a log line: its bytes, or "none" for 0 and
// for Go's "no limit" (math.MaxInt64).
func Bytes(limit int64) string {
	if limit <= 0 || limit == math.MaxInt64 {
		return "none"
	}
	return strconv.FormatInt(limit, 10)
}

// DefaultRatio is --runtime.memory-limit-ratio's default: Prometheus'
// (--auto-gomemlimit.ratio), room for what Go does not count (stacks
// outside the heap, the page cache of the cgroup's other processes).
const DefaultRatio = 0.9

// unlimited is where cgroup v1 says "no limit": a page-rounded
// math.MaxInt64. Anything from 2^62 up counts as none.
const unlimited = int64(1) << 62

// MinRatio is the smallest --runtime.memory-limit-ratio taken (besides 0):
// below it the collector would run all the time.
const MinRatio = 0.1

// CheckRatio says what is wrong with a --runtime.memory-limit-ratio: 0, or
// from MinRatio to 1.
func CheckRatio(ratio float64) error {
	if ratio == 0 || (ratio >= MinRatio && ratio <= 1) {
		return nil
	}
	return fmt.Errorf("--runtime.memory-limit-ratio=%g: give the fraction of the cgroup's memory limit Go's soft limit takes, from %g to 1 (0 turns the soft limit off)", ratio, MinRatio)
}

// Apply sets the soft memory limit to ratio × the cgroup's memory limit,
// unless GOMEMLIMIT is set in the environment (getenv) or ratio is 0.
// root is the file system /proc and /sys are read from ("/" in
// production, fixtures in tests). A cgroup without a limit, or one that
// cannot be read, leaves Go's default (no limit); the error says why it
// could not be read.
func Apply(ratio float64, getenv func(string) string, root fs.FS) (Decision, error) {
	if err := CheckRatio(ratio); err != nil {
		return Decision{}, err
	}
	cgroup, from, err := CgroupLimit(root)
	switch {
	case getenv("GOMEMLIMIT") != "": // the cgroup's limit only for the log
		return Decision{Limit: debug.SetMemoryLimit(-1), Cgroup: cgroup, From: "GOMEMLIMIT"}, nil
	case ratio == 0:
		return Decision{Cgroup: cgroup, From: "--runtime.memory-limit-ratio=0"}, nil
	case err != nil:
		return Decision{From: "none"}, err
	case cgroup == 0:
		return Decision{From: from}, nil
	}
	soft := int64(float64(cgroup) * ratio)
	debug.SetMemoryLimit(soft)
	return Decision{Limit: soft, Cgroup: cgroup, From: from}, nil
}

// CgroupLimit is the memory limit of the process's cgroup and of its
// ancestors (the smallest: the kernel applies them all) and the file it
// came from; without a limit, 0 and why there is none. It finds the
// hierarchy with the memory controller in proc/self/mountinfo (cgroup
// v1's, whose limit is memory.limit_in_bytes, else v2's, memory.max) and
// the process's cgroup in it in proc/self/cgroup.
func CgroupLimit(root fs.FS) (int64, string, error) {
	self, err := fs.ReadFile(root, "proc/self/cgroup")
	if errors.Is(err, fs.ErrNotExist) {
		return 0, "no cgroups (no /proc/self/cgroup)", nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("reading the process's cgroup: %w", err)
	}
	info, err := fs.ReadFile(root, "proc/self/mountinfo")
	if err != nil {
		return 0, "", fmt.Errorf("finding the cgroup hierarchies: %w", err)
	}
	v1, v2, err := parseSelfCgroup(self)
	if err != nil {
		return 0, "", err
	}
	m1, m2 := cgroupMounts(info)
	switch {
	case v1 != "":
		m := mountOf(m1, v1)
		if m == nil {
			return 0, "", fmt.Errorf("/proc/self/cgroup puts the process in the v1 memory cgroup %s, but /proc/self/mountinfo mounts no v1 hierarchy with the memory controller that holds it", v1)
		}
		return smallest(root, *m, v1, "memory.limit_in_bytes")
	case v2 != "":
		m := mountOf(m2, v2)
		if m == nil {
			return 0, "", fmt.Errorf("/proc/self/cgroup puts the process in the cgroup %s, but /proc/self/mountinfo mounts no cgroup2 hierarchy that holds it", v2)
		}
		controllers, _ := fs.ReadFile(root, path.Join(strings.TrimPrefix(m.point, "/"), "cgroup.controllers"))
		if !slices.Contains(strings.Fields(string(controllers)), "memory") {
			return 0, "no memory controller in the cgroup hierarchy", nil
		}
		return smallest(root, *m, v2, "memory.max")
	}
	return 0, "no cgroup memory limit", nil
}

// parseSelfCgroup reads /proc/self/cgroup: the path of the v1 hierarchy
// with the memory controller, and the v2 path ("0::/path"). Lines it does
// not need are not checked.
func parseSelfCgroup(b []byte) (v1, v2 string, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		id, rest, ok := strings.Cut(sc.Text(), ":")
		controllers, p, ok2 := strings.Cut(rest, ":")
		memory := slices.Contains(strings.Split(controllers, ","), "memory")
		v2line := id == "0" && controllers == ""
		if !memory && !v2line {
			continue
		}
		if !ok || !ok2 || !strings.HasPrefix(p, "/") {
			return "", "", fmt.Errorf("/proc/self/cgroup line %d: %q is not id:controllers:/path", n, sc.Text())
		}
		if memory {
			v1 = p
		} else {
			v2 = p
		}
	}
	return v1, v2, sc.Err()
}

// cgroupMount is where a cgroup hierarchy is mounted: point shows the
// hierarchy's cgroup root (a container sees its own cgroup as "/").
type cgroupMount struct{ root, point string }

// cgroupMounts lists, from /proc/self/mountinfo, the mounts of v1
// hierarchies with the memory controller and of the v2 hierarchy.
func cgroupMounts(info []byte) (v1, v2 []cgroupMount) {
	sc := bufio.NewScanner(bytes.NewReader(info))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// id parent major:minor root point options [optional...] - type source super;
		// an empty source is an empty field.
		before, after, ok := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(before), strings.SplitN(after, " ", 3)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		m := cgroupMount{root: unescapeMount(f[3]), point: unescapeMount(f[4])}
		switch {
		case g[0] == "cgroup" && slices.Contains(strings.Split(strings.TrimSpace(g[2]), ","), "memory"):
			v1 = append(v1, m)
		case g[0] == "cgroup2":
			v2 = append(v2, m)
		}
	}
	return v1, v2
}

// mountOf is the mount among ms that shows cgroup: the one with the
// longest root that holds it (a bind mount of another subtree does not).
func mountOf(ms []cgroupMount, cgroup string) *cgroupMount {
	var best *cgroupMount
	for i, m := range ms {
		if m.root == "/" || cgroup == m.root || strings.HasPrefix(cgroup, m.root+"/") {
			if best == nil || len(m.root) > len(best.root) {
				best = &ms[i]
			}
		}
	}
	return best
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// smallest walks from the cgroup, which m holds, up to the mount's root
// and returns the smallest limit in file along the way; without one, 0
// and why.
func smallest(root fs.FS, m cgroupMount, cgroup, file string) (int64, string, error) {
	rel := cgroup // m holds it (mountOf)
	if m.root != "/" {
		rel = "/" + strings.TrimPrefix(strings.TrimPrefix(rel, m.root), "/")
	}
	if rel == "/.." || strings.HasPrefix(rel, "/../") {
		// Outside this cgroup namespace's view: its files are not ours.
		return 0, fmt.Sprintf("the process's cgroup %s is outside this cgroup namespace", cgroup), nil
	}
	var limit int64
	var from string
	for dir := path.Clean(rel); ; dir = path.Dir(dir) {
		name := strings.TrimPrefix(path.Join(m.point, dir, file), "/")
		b, err := fs.ReadFile(root, name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// The root cgroup has no limit file.
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
			if limit == 0 {
				return 0, "no cgroup memory limit", nil
			}
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
