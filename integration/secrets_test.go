package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// headerBackend is an HTTP backend (the application behind a chain's
// proxies) that records the X-Token of every request.
type headerBackend struct {
	addr   string
	mu     sync.Mutex
	tokens []string
}

func startHeaderBackend(t *testing.T) *headerBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &headerBackend{addr: ln.Addr().String()}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.tokens = append(b.tokens, r.Header.Get("X-Token"))
		b.mu.Unlock()
		_, _ = io.WriteString(w, "ok\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return b
}

// since returns the tokens received after the first n, and the count.
func (b *headerBackend) since(n int) ([]string, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.tokens[min(n, len(b.tokens)):]), len(b.tokens)
}

// chainContext reads /api/v1/chains: the context values of a hop of the
// first entry.
func chainContext(t *testing.T, web, hop string) map[string]float64 {
	t.Helper()
	var api struct {
		Chains []struct {
			Hops []struct {
				Name    string             `json:"name"`
				Context map[string]float64 `json:"context"`
			} `json:"hops"`
		} `json:"chains"`
	}
	if err := json.Unmarshal([]byte(httpGet(t, "http://"+web+"/api/v1/chains")), &api); err != nil {
		t.Fatal(err)
	}
	for _, c := range api.Chains {
		for _, h := range c.Hops {
			if h.Name == hop {
				return h.Context
			}
		}
	}
	return nil
}

// waitToken waits until the backend got want after its first n requests,
// and returns the index of that request.
func (b *headerBackend) waitToken(t *testing.T, n int, want string) int {
	t.Helper()
	eventually(t, 30*time.Second, "continuous probes sending "+want, func() error {
		if got, _ := b.since(n); !slices.Contains(got, want) {
			return fmt.Errorf("backend got %d requests since, the last %q", len(got), got[max(0, len(got)-3):])
		}
		return nil
	})
	got, _ := b.since(n)
	return n + slices.Index(got, want)
}

// rotated waits until the backend gets want, then checks that old never
// comes again over the next ten probes.
func (b *headerBackend) rotated(t *testing.T, old, want string) {
	t.Helper()
	_, from := b.since(0)
	at := b.waitToken(t, from, want)
	eventually(t, 30*time.Second, "more probes", func() error {
		if _, n := b.since(0); n < at+10 {
			return fmt.Errorf("%d requests", n)
		}
		return nil
	})
	if after, _ := b.since(at); slices.Contains(after, old) {
		t.Errorf("%s sent again after %s: %q", old, want, after)
	}
}

// waitContext waits until the chain page shows the hop's load1 as read
// from the agent.
func waitContext(t *testing.T, web, hop string, load1 float64) {
	t.Helper()
	eventually(t, 30*time.Second, "context read from snmpd with the password of the file", func() error {
		if c := chainContext(t, web, hop); c["load1"] != load1 {
			return fmt.Errorf("context %v", c)
		}
		return nil
	})
}

// postReload asks for a reload and returns the status and answer.
func postReload(t *testing.T, web string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+web+"/-/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Items 2 and 6 of issue 20: a header secret and an SNMPv3 password given
// as *_file references are rotated in their files; after SIGHUP, and
// after POST /-/reload, the next continuous probes send the new header
// (to a backend that records it) and ask a real snmpd with the new
// password, while the old values are never sent again.
func TestSecretFilesRotatedOnReloadReachContinuousProbes(t *testing.T) {
	agent := startSNMPD(t, "7.25", "3.10")
	backend := startHeaderBackend(t)
	dir := t.TempDir()
	token, password := filepath.Join(dir, "token"), filepath.Join(dir, "v3.auth")
	mustWrite(t, token, "token-1\n")
	mustWrite(t, password, "authpass123\n")
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  web:
    prober: http
    timeout: 5s
    targets: ["127.0.0.1:*"]
    http:
      header_files: {X-Token: %s}
    sla: {default: 1ns}   # always out of SLA: every probe may read context
    snmp:
      timeout: 500ms
      retries: 0
      hops: {backend: {target: "%s", auth: v3}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
auths:
  v3: {version: 3, security_level: authPriv, username: v3user, auth_protocol: SHA256, password_file: %s, priv_protocol: AES, priv_password: privpass123}
continuous:
  - {target: "http://%s/", module: web, interval: 100ms}
`, token, agent.addr, password, backend.addr))
	authErrors := func() float64 {
		return metricValue(httpGet(t, "http://"+ex.web+"/metrics"), `subsegment_snmp_errors_total{hop="backend",reason="auth"}`)
	}
	backend.waitToken(t, 0, "token-1")
	waitContext(t, ex.web, "backend", 7.25)
	if n := authErrors(); n > 0 {
		t.Fatalf("auth errors with the right password: %v", n)
	}

	// SIGHUP: a new token, and a password the agent refuses.
	mustWrite(t, token, "token-2\n")
	mustWrite(t, password, "wrongpass123\n")
	if err := ex.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	backend.rotated(t, "token-1", "token-2")
	eventually(t, 30*time.Second, "the continuous entry asking snmpd with the rotated password", func() error {
		if n := authErrors(); n < 1 {
			return fmt.Errorf("%v auth errors", n)
		}
		return nil
	})
	if body := httpGet(t, "http://"+ex.web+"/probe?module=web&target=http://"+backend.addr+"/"); !strings.Contains(body, `subsegment_snmp_up{hop="backend"} 0`) {
		t.Errorf("/probe after the rotation to a wrong password:\n%s", grepLines(body, "snmp"))
	}

	// POST /-/reload: the right password again, and a third token.
	mustWrite(t, token, "token-3\n")
	mustWrite(t, password, "authpass123\n")
	if code, body := postReload(t, ex.web); code != http.StatusOK {
		t.Fatalf("/-/reload: %d %s", code, body)
	}
	backend.rotated(t, "token-2", "token-3")
	waitContext(t, ex.web, "backend", 7.25)

	// Nothing shows a secret: /config, the log.
	cfg := httpGet(t, "http://"+ex.web+"/config")
	for _, secret := range []string{"token-", "authpass123", "wrongpass123", "privpass123"} {
		if strings.Contains(cfg, secret) || strings.Contains(ex.out.String(), secret) {
			t.Errorf("%q shown on /config or in the log", secret)
		}
	}
	if !strings.Contains(cfg, "password_file: "+password) || !strings.Contains(cfg, "X-Token: "+token) {
		t.Errorf("/config does not name the secret files:\n%s", cfg)
	}

	// A file that cannot be read on reload: the error names the file's
	// line, the path and what to do; the running configuration stays.
	if err := os.Remove(token); err != nil {
		t.Fatal(err)
	}
	code, body := postReload(t, ex.web)
	if code != http.StatusInternalServerError || !regexp.MustCompile(`subsegment\.yml:7: modules\.web\.http\.header_files\.X-Token: cannot read `+regexp.QuoteMeta(token)+`: it does not exist: create it`).MatchString(body) {
		t.Errorf("reload with a missing secret file: %d %s", code, body)
	}
	backend.rotated(t, "token-2", "token-3") // still probing, with the last good configuration
}

// A secret file the service user cannot read says so, and what to do.
func TestUnreadableSecretFileSaysWhatToDo(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the binary as nobody")
	}
	setpriv := requireTool(t, "setpriv", "/usr/bin/setpriv")
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret, cfg := filepath.Join(dir, "community"), filepath.Join(dir, "subsegment.yml")
	mustWrite(t, secret, "public\n") // 0600 root: not for nobody
	if err := os.WriteFile(cfg, []byte("modules:\n  default: {targets: [\"127.0.0.1:*\"]}\nauths:\n  v2: {version: 2, community_file: community}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", binary, "--config.check", "--config.file", cfg).CombinedOutput()
	want := cfg + ":4: auths.v2.community_file: cannot read " + secret + ": permission denied: make it readable by the user the exporter runs as"
	if err == nil || !strings.Contains(string(out), want) {
		t.Errorf("--config.check as nobody: %v\n%s\nwant %q", err, out, want)
	}
	// As root it loads.
	if out, err := exec.Command(binary, "--config.check", "--config.file", cfg).CombinedOutput(); err != nil {
		t.Errorf("--config.check as root: %v\n%s", err, out)
	}
	// The configuration file itself, unreadable: the same advice.
	if err := os.Chmod(cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", binary, "--config.check", "--config.file", cfg).CombinedOutput()
	if want := "read config file " + cfg + ": permission denied: make it readable by the user the exporter runs as"; err == nil || !strings.Contains(string(out), want) {
		t.Errorf("--config.check of an unreadable file as nobody: %v\n%s\nwant %q", err, out, want)
	}
}
