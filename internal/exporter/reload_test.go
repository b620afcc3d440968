package exporter

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/collector"
	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// Item 9 of issue 20: /-/reload and SIGHUP may reload at the same time.
// Each reload must store its configuration and apply it (to the
// continuous runners) as one step, or /config ends on one configuration
// and the runners on another.
func TestConcurrentReloadsEndOnOneConfiguration(t *testing.T) {
	e := newTestExporter(t, "modules:\n  default: {targets: [\"127.0.0.1:*\"]}\n", nil)
	holder := e.holder
	var mu sync.Mutex
	var applied *config.Config
	holder.OnLoad(func(c *config.Config) {
		// Applying takes a while (runners stop and start): long enough
		// for another reload to overtake this one.
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		mu.Lock()
		applied = c
		mu.Unlock()
	})
	for round := range 20 {
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i%2 == 0 {
					_ = holder.Reload() // as SIGHUP does
					return
				}
				resp, err := http.Post(e.srv.URL+"/-/reload", "", nil)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("reload: %d", resp.StatusCode)
				}
			}()
		}
		wg.Wait()
		mu.Lock()
		same := applied == holder.Get()
		mu.Unlock()
		if !same {
			t.Fatalf("round %d: /config shows one configuration, the runners were given another", round)
		}
	}
}

// A reload reads the key file again into the ring every session takes
// its keys from, and the configuration loaded with it carries them, so
// that the continuous relay chains restart with them; a key file that
// cannot be read fails the reload and keeps keys and configuration. A
// process with a key file and no configuration file reloads its keys.
func TestReloadReadsTheKeyFile(t *testing.T) {
	dir := t.TempDir()
	keyFile, cfgFile := filepath.Join(dir, "key"), filepath.Join(dir, "subsegment.yml")
	write := func(p, text string) {
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(keyFile, "first-0123456789abcdef\n")
	write(cfgFile, "modules:\n  relays: {targets: [\"127.0.0.1:*\"]}\ncontinuous:\n  - {target: \"127.0.0.1:9000\", module: relays}\n")
	ring := frame.NewKeyRing(nil)
	source := collector.NewSource(prometheus.NewRegistry())
	holder, err := NewConfigHolder(cfgFile, KeyFile{Path: keyFile, Ring: ring}, config.Limits{}, source, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	current := func() string { return string(bytes.Join(ring.Current(), []byte(","))) }
	if current() != "first-0123456789abcdef" {
		t.Fatalf("keys after the load: %q", current())
	}
	entry := holder.Get().Continuous[0]
	fp := holder.Get().Fingerprint(entry)

	write(keyFile, "second-0123456789abcdef\nfirst-0123456789abcdef\n")
	if err := holder.Reload(); err != nil {
		t.Fatal(err)
	}
	if current() != "second-0123456789abcdef,first-0123456789abcdef" || holder.Get().Fingerprint(entry) == fp {
		t.Errorf("after the reload: keys %q, fingerprint changed %v", current(), holder.Get().Fingerprint(entry) != fp)
	}

	cfg := holder.Get()
	write(keyFile, "\n")
	if err := holder.Reload(); err == nil || !strings.Contains(err.Error(), "--relay.auth-key-file: "+keyFile+" is empty") {
		t.Errorf("reload with an empty key file: %v", err)
	}
	if current() != "second-0123456789abcdef,first-0123456789abcdef" || holder.Get() != cfg {
		t.Errorf("a failed reload changed the keys (%q) or the configuration", current())
	}

	keysOnly, err := NewConfigHolder("", KeyFile{Path: keyFile, Ring: ring}, config.Limits{}, source, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	write(keyFile, "third-0123456789abcdef\n")
	if err := keysOnly.Reload(); err != nil || current() != "third-0123456789abcdef" {
		t.Errorf("a relay without a configuration file reloading its keys: %v, keys %q", err, current())
	}
}
