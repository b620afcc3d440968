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
