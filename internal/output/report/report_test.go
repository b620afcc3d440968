package report

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
	"github.com/subsegment/subsegment_exporter/relay"
)

func probe(t *testing.T, target string) *prober.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return prober.Run(ctx, prober.Options{Target: target, Source: "a", Count: 3, Timeout: 2 * time.Second})
}

func TestTableAndJSON(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{Front: func(name, addr string) string {
		if name != "c" {
			return addr
		}
		return chaintest.DelayProxy(t, addr, 2*time.Millisecond, 2*time.Millisecond).Addr()
	}}, "b", "c", "z")
	r := probe(t, target)
	var table bytes.Buffer
	if err := Table(&table, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SEGMENT", "RTT MIN", "a -> b", "b -> c *", "c -> z", "HOP", "RESIDENCE MIN", "unsynced", "* slowest segment: b -> c"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	var js bytes.Buffer
	if err := JSON(&js, r); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	// The documented top-level fields, and nothing internal leaking out.
	for _, key := range []string{"target", "source", "success", "probes", "hops_reached", "truncated", "stripped", "duplicate_names", "hops", "segments", "failure", "duration_seconds"} {
		if _, ok := doc[key]; !ok {
			t.Errorf("JSON lacks %q", key)
		}
	}
	seg := doc["segments"].([]any)[1].(map[string]any)
	for _, key := range []string{"from", "to", "samples", "rtt_seconds", "jitter_seconds", "connect_seconds", "tcp", "tcp_far", "retransmits", "one_way", "slowest"} {
		if _, ok := seg[key]; !ok {
			t.Errorf("segment JSON lacks %q", key)
		}
	}
	hop := doc["hops"].([]any)[1].(map[string]any)
	for _, key := range []string{"name", "id", "residence_seconds", "wait_seconds", "kernel_timestamps", "clock_synced"} {
		if _, ok := hop[key]; !ok {
			t.Errorf("hop JSON lacks %q", key)
		}
	}
	if len(doc) != 12 || len(seg) != 11 || len(hop) != 6 {
		t.Errorf("JSON has undocumented fields: %d top-level, %d per segment, %d per hop", len(doc), len(seg), len(hop))
	}
}

func TestTableBrokenChain(t *testing.T) {
	c := chaintest.StartRelay(t, relay.Config{Name: "c", ForwardTo: chaintest.FreeAddr(t)})
	r := probe(t, c)
	var table bytes.Buffer
	Table(&table, r)
	if !strings.Contains(table.String(), "CHAIN BROKEN: segment c -> ") || !strings.Contains(table.String(), "(refused)") || !strings.Contains(table.String(), "BROKEN") {
		t.Errorf("table of a broken chain:\n%s", table.String())
	}
}

// A traced run prints the routers under each traced segment, marks where
// the delay appears, and says it in the slowest segment's note; the JSON
// carries path, path_flow and path_delay.
func TestTableAndJSONWithPaths(t *testing.T) {
	tr, err := trace.NewTracer(trace.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := prober.Run(ctx, prober.Options{Target: chaintest.TracedHop(t, chaintest.SlowPath(), 20*time.Millisecond), Source: "a", Count: 3, Timeout: 5 * time.Second,
		Trace: &prober.TraceOptions{Tracer: tr}})
	var table bytes.Buffer
	if err := Table(&table, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PATH b -> c: tcp 10.61.1.1:41000 -> 10.61.3.2:9000, reached, 11 packets in 1.25s; tcp: CAP_NET_RAW",
		"TTL  ADDRESS", "20.100ms", "<- delay appears: +20.0 ms at 10.61.2.2 (TTL 2)\n3    10.61.3.2",
		"PATH a -> b: ", "* slowest segment: b -> c, median 20.", "; delay appears +20.0 ms at 10.61.2.2 (TTL 2), 3 TTLs traced (tcp)"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	var js bytes.Buffer
	if err := JSON(&js, r); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Segments []struct {
			From, To string
			Path     []struct {
				TTL       int      `json:"ttl"`
				Address   *string  `json:"address"`
				RTT       *Seconds `json:"rtt_seconds"`
				LossRatio float64  `json:"loss_ratio"`
			} `json:"path"`
			PathFlow  map[string]any `json:"path_flow"`
			PathDelay map[string]any `json:"path_delay"`
		} `json:"segments"`
	}
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	bc := doc.Segments[1]
	if bc.From != "b" || len(bc.Path) != 3 || *bc.Path[1].Address != "10.61.2.2" || bc.Path[1].RTT.Median != 0.0201 || bc.PathFlow["protocol"] != "tcp" ||
		bc.PathFlow["remote_port"] != float64(9000) || bc.PathDelay["address"] != "10.61.2.2" {
		t.Errorf("b -> c in JSON: %+v", bc)
	}
}

type Seconds = prober.Seconds
