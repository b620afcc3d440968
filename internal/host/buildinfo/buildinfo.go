// Package buildinfo gives the binary its version whichever way it was
// built: `make build` stamps it with ldflags (as promu does); `go build`
// and `go install …@version` leave those empty, and then the module
// version and the VCS revision, time and state recorded by the Go
// toolchain fill them in.
//
// Layering (internal/architecture_test.go): floor 0; it imports nothing of
// the project.
package buildinfo

import (
	"runtime/debug"
	"strings"

	"github.com/prometheus/common/version"
)

func init() { fill(debug.ReadBuildInfo()) }

// fill sets what ldflags did not set.
func fill(info *debug.BuildInfo, ok bool) {
	if !ok {
		return
	}
	var revision, when string
	modified := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if version.Version == "" {
		v := strings.TrimPrefix(info.Main.Version, "v")
		if v == "" || v == "(devel)" {
			v = "devel"
			if revision != "" {
				v += "-" + revision[:min(12, len(revision))]
			}
		}
		if modified && !strings.Contains(v, "dirty") {
			v += "-dirty"
		}
		version.Version = v
	}
	if version.Revision == "" || version.Revision == "unknown" {
		if revision != "" {
			version.Revision = revision
		}
	}
	if version.BuildDate == "" && when != "" {
		version.BuildDate = when
	}
	if version.Branch == "" {
		version.Branch = "unknown"
	}
}
