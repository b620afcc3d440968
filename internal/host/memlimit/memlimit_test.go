package memlimit

import (
	"math"
	"runtime/debug"
	"strings"
	"testing"
	"testing/fstest"
)

// Mount tables as /proc/self/mountinfo gives them.
const (
	// hybridMounts is this project's CI machine: memory on a v1
	// hierarchy, v2 mounted without it under unified.
	hybridMounts = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	v2Mounts      = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
	comountMounts = "35 31 0:32 / /sys/fs/cgroup/cpu,memory rw,relatime - cgroup cgroup rw,cpu,memory\n"
	// dockerV1Mounts: a container without a cgroup namespace on v1 sees
	// its own cgroup mounted at the hierarchy's place.
	dockerV1Mounts = "700 690 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
	escapedMounts  = `35 31 0:32 / /srv/my\040cgroups/memory rw - cgroup cgroup rw,memory` + "\n"
)

// hybridV1 is hybridMounts with the process in /api/job7, limited to own
// bytes, its parent /api to parent ("" none).
func hybridV1(own, parent string) fstest.MapFS {
	fs := fstest.MapFS{
		"proc/self/cgroup":                                    {Data: []byte("9:name=systemd:/\n4:memory:/api/job7\n3:cpuset:/\n0::/\n")},
		"proc/self/mountinfo":                                 {Data: []byte(hybridMounts)},
		"sys/fs/cgroup/unified/cgroup.controllers":            {Data: []byte("hugetlb\n")},
		"sys/fs/cgroup/memory/memory.limit_in_bytes":          {Data: []byte("9223372036854771712\n")},
		"sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes": {Data: []byte(own)},
	}
	if parent != "" {
		return with(fs, "sys/fs/cgroup/memory/api/memory.limit_in_bytes", parent)
	}
	return fs
}

// fixture is a file system of /proc and /sys files.
type fixture = fstest.MapFS

// with replaces one file of a copy of f.
func with(f fixture, name, data string) fixture {
	c := fixture{}
	for k, v := range f {
		c[k] = v
	}
	c[name] = &fstest.MapFile{Data: []byte(data)}
	return c
}

// v2 is v2Mounts with the process in cgroup, and the given files under
// /sys/fs/cgroup.
func v2(cgroup string, files map[string]string) fstest.MapFS {
	fs := fstest.MapFS{
		"proc/self/cgroup":                 {Data: []byte("0::" + cgroup + "\n")},
		"proc/self/mountinfo":              {Data: []byte(v2Mounts)},
		"sys/fs/cgroup/cgroup.controllers": {Data: []byte("cpuset cpu io memory pids\n")},
	}
	for name, data := range files {
		fs["sys/fs/cgroup/"+name] = &fstest.MapFile{Data: []byte(data)}
	}
	return fs
}

func TestCgroupLimit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fs      fstest.MapFS
		limit   int64
		from    string
		wantErr string
	}{
		{name: "no /proc/self/cgroup: not Linux or no cgroups", fs: fstest.MapFS{}, from: "no cgroups (no /proc/self/cgroup)"},
		{name: "v1 unlimited", fs: hybridV1("9223372036854771712\n", ""), from: "no cgroup memory limit"},
		{name: "v1 own limit", fs: hybridV1("536870912\n", ""), limit: 512 << 20, from: "/sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes"},
		{name: "v1 a parent's smaller limit applies", fs: hybridV1("536870912\n", "268435456\n"), limit: 256 << 20, from: "/sys/fs/cgroup/memory/api/memory.limit_in_bytes"},
		{name: "v1 own limit under a larger parent's", fs: hybridV1("268435456\n", "536870912\n"), limit: 256 << 20, from: "/sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes"},
		{name: "v1 memory co-mounted with cpu", fs: fstest.MapFS{
			"proc/self/cgroup":    {Data: []byte("4:cpu,memory:/job\n")},
			"proc/self/mountinfo": {Data: []byte(comountMounts)},
			"sys/fs/cgroup/cpu,memory/job/memory.limit_in_bytes": {Data: []byte("536870912\n")},
		}, limit: 512 << 20, from: "/sys/fs/cgroup/cpu,memory/job/memory.limit_in_bytes"},
		{name: "v1 mounted elsewhere, its path escaped", fs: fstest.MapFS{
			"proc/self/cgroup":    {Data: []byte("4:memory:/job\n")},
			"proc/self/mountinfo": {Data: []byte(escapedMounts)},
			"srv/my cgroups/memory/job/memory.limit_in_bytes": {Data: []byte("536870912\n")},
		}, limit: 512 << 20, from: "/srv/my cgroups/memory/job/memory.limit_in_bytes"},
		{name: "v1 container: the mount's root is its own cgroup", fs: fstest.MapFS{
			"proc/self/cgroup":                           {Data: []byte("4:memory:/docker/abc\n")},
			"proc/self/mountinfo":                        {Data: []byte(dockerV1Mounts)},
			"sys/fs/cgroup/memory/memory.limit_in_bytes": {Data: []byte("1073741824\n")},
		}, limit: 1 << 30, from: "/sys/fs/cgroup/memory/memory.limit_in_bytes"},
		{name: "v1 cgroup outside the mounted part", fs: fstest.MapFS{
			"proc/self/cgroup":                           {Data: []byte("4:memory:/other\n")},
			"proc/self/mountinfo":                        {Data: []byte(dockerV1Mounts)},
			"sys/fs/cgroup/memory/memory.limit_in_bytes": {Data: []byte("1073741824\n")},
		}, wantErr: "mounts no v1 hierarchy with the memory controller that holds it"},
		{name: "v1 in /proc/self/cgroup but not mounted", fs: fstest.MapFS{
			"proc/self/cgroup":    {Data: []byte("4:memory:/job\n")},
			"proc/self/mountinfo": {Data: []byte(v2Mounts)},
		}, wantErr: "mounts no v1 hierarchy with the memory controller"},
		{name: "v2 a bind mount of another subtree listed first", fs: with(v2("/job", map[string]string{"job/memory.max": "536870912\n"}),
			"proc/self/mountinfo", "50 29 0:26 /other /mnt/other rw - cgroup2 cgroup2 rw\n"+v2Mounts),
			limit: 512 << 20, from: "/sys/fs/cgroup/job/memory.max"},
		{name: "v1 listed twice, a subtree first", fs: with(hybridV1("536870912\n", ""),
			"proc/self/mountinfo", "60 31 0:32 /other /srv/x rw - cgroup cgroup rw,memory\n"+hybridMounts),
			limit: 512 << 20, from: "/sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes"},
		{name: "v2 mount with an empty source", fs: with(v2("/job", map[string]string{"job/memory.max": "536870912\n"}),
			"proc/self/mountinfo", "29 23 0:26 / /sys/fs/cgroup rw - cgroup2  rw,nsdelegate\n"),
			limit: 512 << 20, from: "/sys/fs/cgroup/job/memory.max"},
		{name: "v2 in /proc/self/cgroup but no cgroup2 mount", fs: with(v2("/job", nil), "proc/self/mountinfo", hybridMounts[:strings.Index(hybridMounts, "41 ")]),
			wantErr: "mounts no cgroup2 hierarchy that holds it"},
		{name: "v2 service under an unlimited slice", fs: v2("/system.slice/subsegment_exporter.service", map[string]string{
			"system.slice/memory.max":                             "max\n",
			"system.slice/subsegment_exporter.service/memory.max": "1073741824\n",
		}), limit: 1 << 30, from: "/sys/fs/cgroup/system.slice/subsegment_exporter.service/memory.max"},
		{name: "v2 container: its namespace's root", fs: v2("/", map[string]string{"memory.max": "2147483648\n"}),
			limit: 2 << 30, from: "/sys/fs/cgroup/memory.max"},
		{name: "v2 host root: no limit file", fs: v2("/", nil), from: "no cgroup memory limit"},
		{name: "v2 outside the cgroup namespace", fs: v2("/../../x", map[string]string{"x/memory.max": "268435456\n"}),
			from: "the process's cgroup /../../x is outside this cgroup namespace"},
		{name: "v2 without the memory controller", fs: fstest.MapFS{
			"proc/self/cgroup":                 {Data: []byte("0::/job\n")},
			"proc/self/mountinfo":              {Data: []byte(v2Mounts)},
			"sys/fs/cgroup/cgroup.controllers": {Data: []byte("cpu pids\n")},
			"sys/fs/cgroup/job/memory.max":     {Data: []byte("1048576\n")},
		}, from: "no memory controller in the cgroup hierarchy"},
		{name: "v2 only under unified (a hybrid without a v1 memory hierarchy)", fs: fstest.MapFS{
			"proc/self/cgroup":                         {Data: []byte("1:name=systemd:/\n0::/job\n")},
			"proc/self/mountinfo":                      {Data: []byte("41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")},
			"sys/fs/cgroup/unified/cgroup.controllers": {Data: []byte("memory\n")},
			"sys/fs/cgroup/unified/job/memory.max":     {Data: []byte("1048576\n")},
		}, limit: 1 << 20, from: "/sys/fs/cgroup/unified/job/memory.max"},
		{name: "a line it does not need may be odd", fs: with(hybridV1("536870912\n", ""), "proc/self/cgroup", "garbage\n4:memory:/api/job7\n"),
			limit: 512 << 20, from: "/sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes"},
		{name: "a malformed memory line", fs: with(hybridV1("536870912\n", ""), "proc/self/cgroup", "4:memory\n"),
			wantErr: `/proc/self/cgroup line 1: "4:memory" is not id:controllers:/path`},
		{name: "a limit that is not a number", fs: hybridV1("lots\n", ""),
			wantErr: `/sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes: memory limit "lots" is neither bytes nor "max"`},
		{name: "no mountinfo", fs: fstest.MapFS{"proc/self/cgroup": {Data: []byte("0::/\n")}},
			wantErr: "finding the cgroup hierarchies"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limit, from, err := CgroupLimit(tc.fs)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("CgroupLimit = %d, %q, %v; want the error %q", limit, from, err, tc.wantErr)
				}
				return
			}
			if err != nil || limit != tc.limit || from != tc.from {
				t.Fatalf("CgroupLimit = %d, %q, %v; want %d, %q", limit, from, err, tc.limit, tc.from)
			}
		})
	}
}

func TestBytes(t *testing.T) {
	for limit, want := range map[int64]string{0: "none", -1: "none", math.MaxInt64: "none", 483183820: "483183820"} {
		if got := Bytes(limit); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", limit, got, want)
		}
	}
}

func TestCheckRatio(t *testing.T) {
	for _, tc := range []struct {
		ratio float64
		ok    bool
	}{
		{0, true}, {0.1, true}, {0.9, true}, {1, true},
		{-0.5, false}, {0.05, false}, {1e-300, false}, {1.5, false}, {math.NaN(), false}, {math.Inf(1), false},
	} {
		if err := CheckRatio(tc.ratio); (err == nil) != tc.ok {
			t.Errorf("CheckRatio(%g) = %v, want ok %v", tc.ratio, err, tc.ok)
		} else if err != nil && !strings.Contains(err.Error(), "from 0.1 to 1 (0 turns the soft limit off)") {
			t.Errorf("CheckRatio(%g) = %v, want it to say what to give", tc.ratio, err)
		}
	}
}

func TestApply(t *testing.T) {
	t.Cleanup(func() { debug.SetMemoryLimit(math.MaxInt64) })
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "GOMEMLIMIT" {
				return v
			}
			return ""
		}
	}
	limited := hybridV1("1000000000\n", "")
	for _, tc := range []struct {
		name    string
		ratio   float64
		env     string
		fs      fstest.MapFS
		want    Decision
		runtime int64
		wantErr string
	}{
		{name: "the cgroup's limit times the ratio", ratio: 0.9, fs: limited,
			want: Decision{Limit: 900000000, Cgroup: 1000000000, From: "/sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes"}, runtime: 900000000},
		{name: "no cgroup limit: Go's default", ratio: 0.9, fs: hybridV1("9223372036854771712\n", ""),
			want: Decision{From: "no cgroup memory limit"}, runtime: math.MaxInt64},
		{name: "ratio 0: off", ratio: 0, fs: limited, want: Decision{Cgroup: 1000000000, From: "--runtime.memory-limit-ratio=0"}, runtime: math.MaxInt64},
		{name: "GOMEMLIMIT wins", ratio: 0.9, env: "700MiB", fs: limited, want: Decision{Limit: 123456789, Cgroup: 1000000000, From: "GOMEMLIMIT"}, runtime: 123456789},
		{name: "a ratio over 1", ratio: 1.5, fs: limited, wantErr: "--runtime.memory-limit-ratio=1.5: give the fraction", runtime: math.MaxInt64},
		{name: "NaN", ratio: math.NaN(), fs: limited, wantErr: "--runtime.memory-limit-ratio=NaN: give the fraction", runtime: math.MaxInt64},
		{name: "an unreadable limit leaves Go's default", ratio: 0.9, fs: hybridV1("lots", ""), want: Decision{From: "none"}, wantErr: "neither bytes", runtime: math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetMemoryLimit(math.MaxInt64)
			if tc.env != "" {
				// The runtime read GOMEMLIMIT at start: stand in for it.
				debug.SetMemoryLimit(123456789)
			}
			got, err := Apply(tc.ratio, env(tc.env), tc.fs)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Apply = %+v, %v; want the error %q", got, err, tc.wantErr)
				}
			} else if err != nil || got != tc.want {
				t.Fatalf("Apply = %+v, %v; want %+v", got, err, tc.want)
			}
			if rt := debug.SetMemoryLimit(-1); rt != tc.runtime {
				t.Fatalf("the runtime's soft limit is %d, want %d", rt, tc.runtime)
			}
		})
	}
}
