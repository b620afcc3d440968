package reflector

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// The advice on a refused privileged port names both settings a systemd
// unit needs (review finding 12: AmbientCapabilities= alone, under the
// packaged units' empty bounding set, cannot take effect), the example
// drop-in and an unprivileged port; it says why ambient alone fails only
// when the bounding set is known to lack the capability.
func TestPrivilegedPortAdvice(t *testing.T) {
	always := []string{"CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
		ExampleDropIn, "docs/stamp.md", ":8620"}
	const why = "not even in this process's capability bounding set"
	for _, tc := range []struct {
		name              string
		inBounding, known bool
		wantWhy           bool
	}{
		{"bounding set lacks it", false, true, true},
		{"bounding set has it", true, true, false},
		{"bounding set unknown", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := privilegedPortAdvice(tc.inBounding, tc.known)
			for _, w := range always {
				if !strings.Contains(got, w) {
					t.Errorf("advice lacks %q: %s", w, got)
				}
			}
			if strings.Contains(got, why) != tc.wantWhy {
				t.Errorf("advice says %q: %v, want %v: %s", why, !tc.wantWhy, tc.wantWhy, got)
			}
		})
	}
}

// boundingHasNetBindService agrees with the kernel's CapBnd line of
// /proc/self/status (bit 10).
func TestBoundingHasNetBindService(t *testing.T) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	var want bool
	found := false
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			bits, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("CapBnd %q: %v", v, err)
			}
			want, found = bits&(1<<10) != 0, true
		}
	}
	if !found {
		t.Skip("no CapBnd in /proc/self/status")
	}
	got, ok := boundingHasNetBindService()
	if !ok || got != want {
		t.Errorf("boundingHasNetBindService() = %v, %v; CapBnd says %v", got, ok, want)
	}
}
