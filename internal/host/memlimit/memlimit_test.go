package memlimit

import (
	"math"
	"runtime/debug"
	"strings"
	"testing"
	"testing/fstest"
)

// hybridV1 is this project's CI machine: memory on a v1 hierarchy, v2
// mounted without it under unified.
func hybridV1(own, parent string) fstest.MapFS {
	fs := fstest.MapFS{
		"proc/self/cgroup":                                    {Data: []byte("9:name=systemd:/\n4:memory:/api/job7\n3:cpuset:/\n0::/\n")},
		"sys/fs/cgroup/unified/cgroup.controllers":            {Data: []byte("hugetlb\n")},
		"sys/fs/cgroup/memory/memory.limit_in_bytes":          {Data: []byte("9223372036854771712\n")},
		"sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes": {Data: []byte(own)},
	}
	if parent != "" {
		fs["sys/fs/cgroup/memory/api/memory.limit_in_bytes"] = &fstest.MapFile{Data: []byte(parent)}
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
		{name: "no /proc/self/cgroup: not Linux or no cgroups", fs: fstest.MapFS{}},
		{name: "v1 unlimited", fs: hybridV1("9223372036854771712\n", "")},
		{name: "v1 own limit", fs: hybridV1("536870912\n", ""), limit: 512 << 20, from: "/sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes"},
		{name: "v1 a parent's smaller limit applies", fs: hybridV1("536870912\n", "268435456\n"), limit: 256 << 20, from: "/sys/fs/cgroup/memory/api/memory.limit_in_bytes"},
		{name: "v1 own limit under a larger parent's", fs: hybridV1("268435456\n", "536870912\n"), limit: 256 << 20, from: "/sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes"},
		{name: "v2 service under an unlimited slice", fs: fstest.MapFS{
			"proc/self/cgroup":                                                  {Data: []byte("0::/system.slice/subsegment_exporter.service\n")},
			"sys/fs/cgroup/cgroup.controllers":                                  {Data: []byte("cpu memory pids\n")},
			"sys/fs/cgroup/system.slice/memory.max":                             {Data: []byte("max\n")},
			"sys/fs/cgroup/system.slice/subsegment_exporter.service/memory.max": {Data: []byte("1073741824\n")},
		}, limit: 1 << 30, from: "/sys/fs/cgroup/system.slice/subsegment_exporter.service/memory.max"},
		{name: "v2 container: its namespace's root", fs: fstest.MapFS{
			"proc/self/cgroup":                 {Data: []byte("0::/\n")},
			"sys/fs/cgroup/cgroup.controllers": {Data: []byte("cpu memory pids\n")},
			"sys/fs/cgroup/memory.max":         {Data: []byte("2147483648\n")},
		}, limit: 2 << 30, from: "/sys/fs/cgroup/memory.max"},
		{name: "v2 host root: no limit file", fs: fstest.MapFS{
			"proc/self/cgroup":                 {Data: []byte("0::/\n")},
			"sys/fs/cgroup/cgroup.controllers": {Data: []byte("cpu memory pids\n")},
		}},
		{name: "v2 only under unified (hybrid without a v1 memory hierarchy)", fs: fstest.MapFS{
			"proc/self/cgroup":                         {Data: []byte("1:name=systemd:/\n0::/job\n")},
			"sys/fs/cgroup/unified/cgroup.controllers": {Data: []byte("memory\n")},
			"sys/fs/cgroup/unified/job/memory.max":     {Data: []byte("1048576\n")},
		}, limit: 1 << 20, from: "/sys/fs/cgroup/unified/job/memory.max"},
		{name: "a malformed /proc/self/cgroup line", fs: fstest.MapFS{
			"proc/self/cgroup": {Data: []byte("0::/\ngarbage\n")},
		}, wantErr: `/proc/self/cgroup line 2: "garbage" is not id:controllers:/path`},
		{name: "a limit that is not a number", fs: hybridV1("lots\n", ""),
			wantErr: `/sys/fs/cgroup/memory/api/job7/memory.limit_in_bytes: memory limit "lots" is neither bytes nor "max"`},
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
		{name: "ratio 0: off", ratio: 0, fs: limited, want: Decision{From: "--runtime.memory-limit-ratio=0"}, runtime: math.MaxInt64},
		{name: "GOMEMLIMIT wins", ratio: 0.9, env: "700MiB", fs: limited, want: Decision{Limit: 123456789, From: "GOMEMLIMIT"}, runtime: 123456789},
		{name: "a ratio over 1", ratio: 1.5, fs: limited, wantErr: "--runtime.memory-limit-ratio=1.5: give a fraction", runtime: math.MaxInt64},
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
