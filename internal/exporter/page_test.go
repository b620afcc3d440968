package exporter

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
)

func TestConfigPageRedactsSecrets(t *testing.T) {
	e := newTestExporter(t, `modules:
  web:
    prober: http
    targets: ["127.0.0.1:*"]
    http: {headers: {Authorization: Bearer s3cr3t-t0ken}}
  default:
    targets: ["127.0.0.1:*"]
    snmp:
      hops: {c: {target: "10.0.0.3", auth: v3}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
auths:
  v3: {version: 3, security_level: authNoPriv, username: u, password: p4ssw0rd-secret, auth_protocol: SHA256}
`, nil)
	a := e.get(t, "/config", nil)
	if a.code != 200 || !strings.Contains(a.body, "Authorization: <secret>") || !strings.Contains(a.body, "password: <secret>") {
		t.Fatalf("/config: %d\n%s", a.code, a.body)
	}
	for _, secret := range []string{"s3cr3t-t0ken", "p4ssw0rd-secret"} {
		if strings.Contains(a.body, secret) {
			t.Errorf("/config shows %q:\n%s", secret, a.body)
		}
	}
	if a := newTestExporter(t, "", nil).get(t, "/config", nil); a.code != 200 || !strings.Contains(a.body, "no --config.file") {
		t.Errorf("/config without a file: %d %s", a.code, a.body)
	}
}

func TestHistoryOnTheLandingPage(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "z")
	e := newTestExporter(t, "modules:\n  default: {targets: [\"127.0.0.1:*\"], probes: 1, interval: 1ms}\n", nil)
	for range 4 {
		e.get(t, "/probe?target="+target, nil)
	}
	e.get(t, "/probe?target="+target+"&debug=true", nil)
	page := e.get(t, "/", nil)
	ids := regexp.MustCompile(`href="probe/history\?id=(\d+)"`).FindAllStringSubmatch(page.body, -1)
	if len(ids) != 3 || ids[0][1] != "5" || ids[2][1] != "3" {
		t.Fatalf("landing page lists %v, want the last 3 (5, 4, 3), newest first:\n%s", ids, page.body)
	}
	debug := e.get(t, "/probe/history?id=5", nil)
	for _, want := range []string{"module default, target " + target + ", success", "Logs for the probe:\ntime=", "probe_success 1", "Module configuration (secrets redacted)"} {
		if !strings.Contains(debug.body, want) {
			t.Errorf("history 5 lacks %q:\n%s", want, debug.body)
		}
	}
	if h := e.get(t, "/probe/history?id=4", nil); !strings.Contains(h.body, "kept only for /probe?debug=true") {
		t.Errorf("history 4 (no debug):\n%s", h.body)
	}
	if h := e.get(t, "/probe/history?id=1", nil); h.code != 404 || !strings.Contains(h.body, "only the last 3") {
		t.Errorf("a run no longer kept: %d %s", h.code, h.body)
	}
	if h := e.get(t, "/probe/history?id=x", nil); h.code != 400 {
		t.Errorf("a bad id: %d %s", h.code, h.body)
	}
	var api ChainsAPI
	if err := json.Unmarshal([]byte(e.get(t, "/api/v1/chains", nil).body), &api); err != nil || api.Chains == nil && len(api.Chains) != 0 {
		t.Errorf("/api/v1/chains: %v %+v", err, api)
	}
	if f := e.get(t, "/chains", nil); f.code != 200 || !strings.Contains(f.body, `<div id="chains"`) {
		t.Errorf("/chains: %d %s", f.code, f.body)
	}
}
