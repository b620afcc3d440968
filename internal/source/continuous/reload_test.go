package continuous

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/relay"
)

// tokenBackend is an HTTP backend that records the X-Token of every
// request it gets.
type tokenBackend struct {
	*httptest.Server
	mu     sync.Mutex
	tokens []string
}

func newTokenBackend(t *testing.T) *tokenBackend {
	b := &tokenBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.tokens = append(b.tokens, r.Header.Get("X-Token"))
		b.mu.Unlock()
		_, _ = w.Write([]byte("ok\n"))
	}))
	t.Cleanup(b.Close)
	return b
}

// seen returns the tokens received from index from on.
func (b *tokenBackend) seen(from int) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.tokens[min(from, len(b.tokens)):])
}

func (b *tokenBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.tokens)
}

// Item 6 of issue 20: a reload that rotates only a secret (an http
// header, an SNMP password) must give the entry a runner with the new
// value; the old one kept sending the old value until a restart.
func TestReloadWithARotatedSecretRestartsTheEntry(t *testing.T) {
	backend := newTokenBackend(t)
	// The options /probe builds (sla.ProbeOptions): headers and all.
	m := NewManager(NewMetrics(prometheus.NewPedanticRegistry()), func(target string, mod *config.Module) prober.Options {
		o := sla.ProbeOptions(mod, target)
		o.Source, o.Timeout, o.Names = "a", time.Duration(mod.Timeout), names
		return o
	}, slog.New(slog.DiscardHandler))
	t.Cleanup(m.Stop)
	var mu sync.Mutex
	var passwords []string
	m.SetContext(func(_ context.Context, cfg *config.Config, mod *config.Module, _ *prober.Result) map[string]map[string]float64 {
		mu.Lock()
		defer mu.Unlock()
		passwords = append(passwords, string(cfg.Auths[mod.SNMP.Hops["backend"].Auth].Password))
		return nil
	})
	cfg := func(token, password string) *config.Config {
		return parse(t, fmt.Sprintf(`modules:
  web:
    prober: http
    targets: ["127.0.0.1:*"]
    http: {headers: {X-Token: %s}}
    sla: {default: 1ns}
    snmp:
      hops: {backend: {target: "127.0.0.1:1", auth: v3}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
auths:
  v3: {version: 3, security_level: authNoPriv, username: u, auth_protocol: SHA256, password: %s}
continuous:
  - {target: "%s/", module: web, interval: 20ms}
`, token, password, backend.URL))
	}
	lastPassword := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(passwords) == 0 {
			return ""
		}
		return passwords[len(passwords)-1]
	}
	m.Apply(cfg("old-token", "old-password"))
	waitFor(t, "probes with the old token and a context read with the old password", func() bool {
		return slices.Contains(backend.seen(0), "old-token") && lastPassword() == "old-password"
	})

	m.Apply(cfg("new-token", "new-password"))
	from := backend.count()
	waitFor(t, "a probe with the rotated token", func() bool { return slices.Contains(backend.seen(from), "new-token") })
	waitFor(t, "a context read with the rotated password", func() bool { return lastPassword() == "new-password" })
	// Once the new value arrived, the old one never comes again.
	at := backend.count()
	waitFor(t, "more probes", func() bool { return backend.count() >= at+5 })
	if got := backend.seen(at); slices.Contains(got, "old-token") {
		t.Errorf("the old token was still sent after the new one: %q", got)
	}
}

// Item 9 of issue 20: stopping a runner that is stuck (an SNMP query
// that ends only at its timeout) must not hold the lock that the chain
// page (Snapshot) takes.
func TestPageAnswersWhileARunnerIsStuck(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "z")
	m, _ := newTestManager(t)
	entered, cancelled := make(chan struct{}), make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	m.SetContext(func(ctx context.Context, _ *config.Config, _ *config.Module, _ *prober.Result) map[string]map[string]float64 {
		once.Do(func() {
			close(entered)
			go func() { <-ctx.Done(); close(cancelled) }()
		})
		<-release // deaf to cancellation, as a UDP read until its timeout
		return nil
	})
	m.Apply(parse(t, fmt.Sprintf(`modules:
  default:
    timeout: 5m
    targets: ["127.0.0.1:*"]
    sla: {default: 1ns}
continuous:
  - {target: "%s", module: default, interval: 10ms}
`, target)))
	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the runner never asked for context")
	}
	applied := make(chan struct{})
	go func() {
		defer close(applied)
		m.Apply(parse(t, "modules:\n  default: {targets: [\"127.0.0.1:*\"]}\n"))
	}()
	select {
	case <-cancelled: // Apply is stopping the runner
	case <-time.After(20 * time.Second):
		close(release)
		t.Fatal("Apply did not cancel the runner")
	}
	page := make(chan []EntryState)
	go func() { page <- m.Snapshot() }()
	select {
	case <-page:
		select {
		case <-applied:
			t.Error("Apply returned before the stuck runner ended: a changed entry could run twice")
		default:
		}
		close(release)
	case <-time.After(10 * time.Second):
		t.Error("the chain page blocked while a runner was being stopped")
		close(release)
		<-page
	}
	<-applied
	if got := m.Snapshot(); len(got) != 0 {
		t.Errorf("entries left after Apply removed them: %+v", got)
	}
}

// A reload that removes entries deletes every series they had — probes,
// failures per reason, SLAs of segments and hops, retransmissions,
// histograms — by their label values, and leaves the kept entry's.
func TestRemovedEntriesLeaveNoSeries(t *testing.T) {
	chain := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "c", "z")
	refused := chaintest.FreeAddr(t)
	kept := chaintest.StartRelay(t, relay.Config{Name: "k"})
	m, reg := newTestManager(t)
	m.Apply(parse(t, slaModules+entry(chain, "m")+entry(refused, "m")+entry(kept, "m")))
	waitFor(t, "probes of the chain and failures of the refused target", func() bool {
		return value(t, reg, "subsegment_continuous_hop_sla_seconds", map[string]string{"target": chain}) > 0 &&
			value(t, reg, "subsegment_continuous_segment_failures_total", map[string]string{"target": refused}) > 0 &&
			value(t, reg, "subsegment_continuous_probes_total", map[string]string{"target": kept, "result": "success"}) > 0
	})
	targets := func() map[string]int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, mf := range mfs {
			for _, mt := range mf.Metric {
				for _, lp := range mt.Label {
					if lp.GetName() == "target" {
						seen[lp.GetValue()]++
					}
				}
			}
		}
		return seen
	}
	before := targets()
	if before[chain] < 10 || before[refused] < 3 {
		t.Fatalf("series before the reload: %v", before)
	}
	m.Apply(parse(t, slaModules+entry(kept, "m")))
	after := targets()
	if after[chain] != 0 || after[refused] != 0 || after[kept] == 0 {
		t.Errorf("series per target after removing two entries: %v (before: %v), want the kept entry's only", after, before)
	}
}
