package buildinfo

import (
	"runtime/debug"
	"testing"

	"github.com/prometheus/common/version"
)

func TestFill(t *testing.T) {
	vcs := func(rev, when, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: when}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tc := range []struct {
		name                             string
		ldflagsVersion, ldflagsRevision  string
		info                             *debug.BuildInfo
		ok                               bool
		wantVersion, wantRevision, wantT string
	}{
		{name: "go install module@v0.2.0", info: &debug.BuildInfo{Main: debug.Module{Version: "v0.2.0"}}, ok: true,
			wantVersion: "0.2.0", wantRevision: "unknown"},
		{name: "go build in a clean checkout after v0.2.0",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v0.2.1-0.20261123140000-0123456789ab"}, Settings: vcs("0123456789abcdef0123", "2026-11-23T14:00:00Z", "false")}, ok: true,
			wantVersion: "0.2.1-0.20261123140000-0123456789ab", wantRevision: "0123456789abcdef0123", wantT: "2026-11-23T14:00:00Z"},
		{name: "go build with local changes, no module version",
			info: &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("0123456789abcdef0123", "2026-11-23T14:00:00Z", "true")}, ok: true,
			wantVersion: "devel-0123456789ab-dirty", wantRevision: "0123456789abcdef0123", wantT: "2026-11-23T14:00:00Z"},
		{name: "go's own +dirty suffix is not doubled",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v0.2.0+dirty"}, Settings: vcs("abc", "", "true")}, ok: true,
			wantVersion: "0.2.0+dirty", wantRevision: "abc"},
		{name: "-buildvcs=false: no revision", info: &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, ok: true,
			wantVersion: "devel", wantRevision: "unknown"},
		{name: "ldflags win (make build, promu)", ldflagsVersion: "0.2.0", ldflagsRevision: "feedbeef",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v9.9.9"}, Settings: vcs("0123", "", "true")}, ok: true,
			wantVersion: "0.2.0", wantRevision: "feedbeef"},
		{name: "no build information", ok: false, wantVersion: "", wantRevision: "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saved := []string{version.Version, version.Revision, version.BuildDate, version.Branch}
			t.Cleanup(func() {
				version.Version, version.Revision, version.BuildDate, version.Branch = saved[0], saved[1], saved[2], saved[3]
			})
			version.Version, version.Revision, version.BuildDate, version.Branch = tc.ldflagsVersion, tc.ldflagsRevision, "", ""
			if version.Revision == "" {
				version.Revision = "unknown" // what client_golang's common/version holds without ldflags
			}
			fill(tc.info, tc.ok)
			if version.Version != tc.wantVersion || version.Revision != tc.wantRevision || version.BuildDate != tc.wantT {
				t.Errorf("version %q revision %q date %q, want %q %q %q",
					version.Version, version.Revision, version.BuildDate, tc.wantVersion, tc.wantRevision, tc.wantT)
			}
		})
	}
}
