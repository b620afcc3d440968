package integration

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"
	"testing"
	"time"
)

// moduleStartingSoon names a module with which the entry on target starts
// within a second: entries start spread over their interval, by a hash of
// target and module (continuous.runner.run).
func moduleStartingSoon(t *testing.T, target string, interval time.Duration) string {
	t.Helper()
	for i := range 100000 {
		name := fmt.Sprintf("rare%d", i)
		h := fnv.New64a()
		_, _ = h.Write([]byte(target + "\x00" + name))
		if time.Duration(h.Sum64()%uint64(interval)) < time.Second {
			return name
		}
	}
	t.Fatal("no module name starts within a second")
	return ""
}

// pageChain is an entry as /api/v1/chains returns it.
type pageChain struct {
	LastSuccess   *time.Time `json:"last_success"`
	WindowSeconds float64    `json:"window_seconds"`
	Hops          []struct {
		Name, SLA string
	} `json:"hops"`
	Segments []struct {
		From, To, SLA string
		Samples       int
	} `json:"segments"`
}

func chainsAPI(t *testing.T, web string) []pageChain {
	t.Helper()
	var api struct{ Chains []pageChain }
	if err := json.Unmarshal([]byte(httpGet(t, "http://"+web+"/api/v1/chains")), &api); err != nil {
		t.Fatal(err)
	}
	return api.Chains
}

// TestLongIntervalChainIsNotPaintedRed: with an interval over the page's
// minute, the healthy chain's segments and hops had no sample in the
// window a minute after each probe and showed as exceeded on /, /chains
// and /api/v1/chains. The window covers two intervals: a 90 s chain stays
// ok between its probes.
func TestLongIntervalChainIsNotPaintedRed(t *testing.T) {
	const interval = 90 * time.Second
	hops := chain(t, "b", "z")
	module := moduleStartingSoon(t, hops[0].addr, interval)
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  %s:
    targets: ["127.0.0.1:*"]
    sla:
      default: 500ms
      hops: {b: 500ms}
continuous:
  - {target: %q, module: %s, interval: 90s}
`, module, hops[0].addr, module))
	// The warm-up within a second, the first measured probe an interval
	// later.
	var first time.Time
	eventually(t, interval+30*time.Second, "the first measured probe", func() error {
		c := chainsAPI(t, ex.web)
		if len(c) != 1 || c[0].LastSuccess == nil {
			return fmt.Errorf("not yet: %+v", c)
		}
		first = time.Now()
		return nil
	})
	// More than a minute after it, before the next one.
	time.Sleep(time.Until(first.Add(62 * time.Second)))
	for i := 0; time.Since(first) < 80*time.Second && i < 20; i++ {
		c := chainsAPI(t, ex.web)[0]
		if c.WindowSeconds != 180 {
			t.Errorf("window %vs, want two intervals (180s)", c.WindowSeconds)
		}
		var states []string
		for _, s := range c.Segments {
			states = append(states, fmt.Sprintf("%s>%s %s (%d samples)", s.From, s.To, s.SLA, s.Samples))
			if s.SLA != "ok" || s.Samples < 1 {
				t.Errorf("%.0fs after the probe: segment %s -> %s %s with %d samples, want ok with the probe's sample", time.Since(first).Seconds(), s.From, s.To, s.SLA, s.Samples)
			}
		}
		for _, h := range c.Hops {
			if h.SLA == "exceeded" {
				t.Errorf("%.0fs after the probe: hop %s exceeded", time.Since(first).Seconds(), h.Name)
			}
		}
		if t.Failed() {
			break
		}
		if i == 0 {
			t.Logf("%.0fs after the probe: %s", time.Since(first).Seconds(), strings.Join(states, ", "))
		}
		time.Sleep(2 * time.Second)
	}
	if page := httpGet(t, "http://"+ex.web+"/chains"); strings.Contains(page, `data-sla="exceeded"`) {
		t.Errorf("/chains paints the healthy chain red:\n%s", page)
	}
}
