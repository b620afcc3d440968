package reflector

import (
	"strings"

	"golang.org/x/sys/unix"
)

// ExampleDropIn is where the Debian package installs the systemd drop-in
// that lets a unit bind STAMP's port 862 (packaging/systemd/...).
const ExampleDropIn = "/usr/share/doc/prometheus-subsegment-exporter/examples/stamp-port-862.conf"

// privilegedPortAdvice says what to do when the kernel refused to bind a
// privileged port (EACCES). inBounding tells whether CAP_NET_BIND_SERVICE
// is in the process's capability bounding set (known false: the packaged
// units' empty CapabilityBoundingSet=, under which an AmbientCapabilities=
// line alone is dropped by systemd and cannot take effect); known is false
// when that could not be read.
func privilegedPortAdvice(inBounding, known bool) string {
	var b strings.Builder
	b.WriteString("a port below 1024 (STAMP's is 862) needs CAP_NET_BIND_SERVICE")
	if known && !inBounding {
		b.WriteString(", which is not even in this process's capability bounding set (as under the packaged units' empty CapabilityBoundingSet=), so AmbientCapabilities= alone cannot grant it")
	}
	b.WriteString(": under systemd add a drop-in that sets both CapabilityBoundingSet=CAP_NET_BIND_SERVICE and AmbientCapabilities=CAP_NET_BIND_SERVICE (the package's example: ")
	b.WriteString(ExampleDropIn)
	b.WriteString(", docs/stamp.md), or listen on an unprivileged port such as :8620 and point the senders at it")
	return b.String()
}

// boundingHasNetBindService reads whether CAP_NET_BIND_SERVICE is in this
// process's capability bounding set; ok is false when it cannot be read.
func boundingHasNetBindService() (in, ok bool) {
	r, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, unix.CAP_NET_BIND_SERVICE, 0, 0, 0)
	if err != nil {
		return false, false
	}
	return r == 1, true
}
