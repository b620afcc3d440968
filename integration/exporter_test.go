package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestConfigCheck(t *testing.T) {
	good, _ := filepath.Abs("../internal/config/testdata/good/full.yml")
	bad, _ := filepath.Abs("../internal/config/testdata/bad/open_proxy.yml")
	if out, _, code := runBinary(t, nil, "--config.check", "--config.file", good); code != 0 || !strings.Contains(out, "is valid: 2 modules") {
		t.Errorf("good config: exit %d %q", code, out)
	}
	if _, errOut, code := runBinary(t, nil, "--config.check", "--config.file", bad); code != 1 || !strings.Contains(errOut, "open_proxy.yml:4: modules.default.targets[0]") {
		t.Errorf("bad config: exit %d %q", code, errOut)
	}
	if _, errOut, code := runBinary(t, nil, "--config.check"); code != 2 || !strings.Contains(errOut, "needs --config.file") {
		t.Errorf("no config: exit %d %q", code, errOut)
	}
	// A bad file at start-up stops the process with the reason.
	if _, errOut, code := runBinary(t, nil, "--config.file", bad, "--web.listen-address", "127.0.0.1:0"); code != 1 || !strings.Contains(errOut, "open proxy") {
		t.Errorf("start with a bad config: exit %d %q", code, errOut)
	}
}

func TestRelayIsAlsoASourceAndReloadsOnSIGHUP(t *testing.T) {
	z := startHop(t, "z", "")
	cfgPath := filepath.Join(t.TempDir(), "subsegment.yml")
	write := func(s string) {
		if err := os.WriteFile(cfgPath, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("modules:\n  default:\n    targets: [\"127.0.0.1:*\"]\n")
	// b is a relay (forwarding to z) and a source exporter at once.
	b := startHop(t, "b", z.addr, "--config.file", cfgPath)
	body := httpGet(t, "http://"+b.web+"/probe?target="+z.addr)
	if !strings.Contains(body, "probe_success 1") || !strings.Contains(body, `subsegment_segment_rtt_seconds{from="b",to="z"}`) {
		t.Fatalf("relay b as a source:\n%s", body)
	}
	// A broken file on SIGHUP keeps the old configuration.
	write("modules:\n  default:\n    bogus: true\n")
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	b.waitOutput(t, regexp.MustCompile(`configuration not loaded; the previous one stays in use.*modules\.default\.bogus`), 10*time.Second)
	eventually(t, 10*time.Second, "reload failure metric", func() error {
		if !strings.Contains(httpGet(t, "http://"+b.web+"/metrics"), "subsegment_exporter_config_last_reload_successful 0") {
			return os.ErrNotExist
		}
		return nil
	})
	if body := httpGet(t, "http://"+b.web+"/probe?target="+z.addr); !strings.Contains(body, "probe_success 1") {
		t.Errorf("old configuration gone after a failed reload")
	}
	// A good file on SIGHUP takes effect: a new module.
	write("modules:\n  default:\n    targets: [\"127.0.0.1:*\"]\n  second:\n    probes: 1\n    targets: [\"127.0.0.1:*\"]\n")
	b.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 10*time.Second, "module added by SIGHUP", func() error {
		if !strings.Contains(httpGet(t, "http://"+b.web+"/metrics"), "subsegment_exporter_config_last_reload_successful 1") {
			return os.ErrNotExist
		}
		return nil
	})
	if body := httpGet(t, "http://"+b.web+"/probe?module=second&target="+z.addr); !strings.Contains(body, "probe_success 1") {
		t.Errorf("module from the reloaded file not served:\n%s", body)
	}
}

// Two relays started alike on one host: the second says what to do about
// the web port the first holds, instead of dying with a bare bind error.
func TestSecondRelayOnTheWebPortSaysWhatToDo(t *testing.T) {
	web := "127.0.0.1:" + itoa(freePort(t))
	first := start(t, "first relay", binary, "--listen", "127.0.0.1:0", "--web.listen-address", web, "--relay.name", "b1")
	first.waitOutput(t, webListening, 10*time.Second)
	_, errOut, code := runBinary(t, nil, "--listen", "127.0.0.1:0", "--web.listen-address", web, "--relay.name", "b2")
	if code == 0 || !strings.Contains(errOut, "address already in use") || !strings.Contains(errOut, "give each process its own --web.listen-address") {
		t.Errorf("second relay: exit %d\n%s", code, errOut)
	}
}
