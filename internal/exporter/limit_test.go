package exporter

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
)

// Item 9 of issue 20: /probe work is bounded. With the limit reached by
// probes of a hung hop, the next request is answered 503 at once with
// the reason and counted; once they end, probing works again.
func TestProbeLimitAnswers503AndCounts(t *testing.T) {
	hung := chaintest.Silent(t)
	answering := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "z")
	e := newTestExporter(t, "modules:\n  default: {timeout: 5m, targets: [\"127.0.0.1:*\"], probes: 1}\n", nil)
	limit := NewProbeLimit(e.reg, 2)
	e.probe.Limit = limit
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/probe?target="+hung, nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for limit.inFlight.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := limit.inFlight.Load(); n != 2 {
		cancel()
		t.Fatalf("%d probes in flight, want 2", n)
	}
	resp, err := http.Get(e.srv.URL + "/probe?target=" + answering)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "--probe.max-concurrent=2") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a probe over the limit: %d %q (Retry-After %q), want 503 naming --probe.max-concurrent", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if got := testutil.ToFloat64(limit.over); got != 1 {
		t.Errorf("probes_over_limit_total %v, want 1", got)
	}
	// Bad requests are not work: still answered 400, never 503.
	if a := e.get(t, "/probe?target=10.9.9.9:1", nil); a.code != http.StatusBadRequest {
		t.Errorf("a bad request at the limit: %d", a.code)
	}
	cancel() // the clients leave: their probes end
	wg.Wait()
	for limit.inFlight.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a := e.get(t, "/probe?target="+answering, nil); a.code != 200 || !strings.Contains(a.body, "probe_success 1") {
		t.Errorf("after the hung probes ended: %d %s", a.code, a.body)
	}
	if a := e.get(t, "/metrics", nil); !strings.Contains(a.body, "subsegment_exporter_probes_over_limit_total 1") || !strings.Contains(a.body, "subsegment_exporter_probes_in_flight 0") {
		t.Errorf("/metrics lacks the limit's metrics:\n%s", a.body)
	}
}
