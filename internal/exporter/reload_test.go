package exporter

import (
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
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
