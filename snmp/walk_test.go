package snmp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosnmp/gosnmp"

	"github.com/subsegment/subsegment_exporter/internal/config"
)

// endlessAgent is a scripted SNMP v2c agent on a loopback UDP port whose
// walks never end: every GetBulk is answered with max-repetitions new
// rows after the one asked, each holding valueBytes of text. It returns
// its address and a count of the requests it answered.
func endlessAgent(t *testing.T, valueBytes int) (string, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	requests := &atomic.Int64{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		dec := &gosnmp.GoSNMP{Version: gosnmp.Version2c}
		row := 0
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			req, err := dec.SnmpDecodePacket(buf[:n])
			if err != nil || len(req.Variables) == 0 {
				continue
			}
			requests.Add(1)
			col := oidIfName
			resp := &gosnmp.SnmpPacket{Version: req.Version, Community: req.Community, PDUType: gosnmp.GetResponse, RequestID: req.RequestID}
			for range max(1, int(req.MaxRepetitions)) {
				row++
				resp.Variables = append(resp.Variables, gosnmp.SnmpPDU{Name: fmt.Sprintf(".%s.%d", col, row), Type: gosnmp.OctetString, Value: []byte(strings.Repeat("x", valueBytes))})
			}
			out, err := resp.MarshalMsg()
			if err != nil {
				t.Errorf("agent: %v", err)
				return
			}
			_, _ = pc.WriteTo(out, addr)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String(), requests
}

// Item 9 of issue 20: an agent that keeps a walk going must be cut off
// at the walk's bounds, long before the scrape's deadline, having sent
// only what fits them.
func TestWalkIsBoundedInEntriesAndBytes(t *testing.T) {
	auth := &config.Auth{Version: 2, Community: "public"}
	for _, tc := range []struct {
		name       string
		limits     WalkLimits
		valueBytes int
		bound      string
		maxRows    int
	}{
		{"entries", WalkLimits{MaxEntries: 1000}, 4, "--snmp.walk-max-entries", 1000},
		{"bytes", WalkLimits{MaxBytes: 256 << 10}, 1000, "--snmp.walk-max-bytes", 256 << 10 / 1000},
		{"defaults", WalkLimits{}, 1000, "--snmp.walk-max-bytes", DefaultWalkMaxBytes / 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agent, requests := endlessAgent(t, tc.valueBytes)
			// A deadline far beyond what the bound needs: the walk must
			// end at its bound, not at this.
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			pdus, err := GoSNMP{WalkLimits: tc.limits}.Walk(ctx, Target{Hop: "c", Address: agent, Auth: auth}, oidIfName, Attempt{Timeout: 5 * time.Second})
			if !errors.Is(err, ErrWalkLimit) || Classify(err) != ReasonWalkLimit || !strings.Contains(err.Error(), tc.bound) {
				t.Fatalf("walk of an endless table: %d rows, err %v; want %s naming %s", len(pdus), err, ReasonWalkLimit, tc.bound)
			}
			if ctx.Err() != nil {
				t.Fatal("the walk ended at the deadline, not at its bound")
			}
			// gosnmp asks for 50 rows a request: the agent was asked for
			// no more than the bound's rows (and one request more).
			if n := requests.Load(); int(n) > tc.maxRows/50+2 {
				t.Errorf("%d requests for a bound of %d rows", n, tc.maxRows)
			}
		})
	}
}

// The interface lookup of a query reports the cut-off walk as its reason.
func TestInterfaceLookupOfAnEndlessTable(t *testing.T) {
	agent, _ := endlessAgent(t, 8)
	q := NewQuerier(GoSNMP{WalkLimits: WalkLimits{MaxEntries: 500}})
	var reasons []string
	q.Errors = func(_, reason string) { reasons = append(reasons, reason) }
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res := q.Query(ctx, []Request{{Target: Target{Hop: "c", Address: agent, Auth: &config.Auth{Version: 2, Community: "public"}},
		Vars: []config.Variable{{Name: "if_in_errors", OID: "1.3.6.1.2.1.2.2.1.14", Interface: "eth0"}}}})
	if len(res) != 1 || res[0].Up || len(res[0].Errors) != 1 || res[0].Errors[0].Reason != ReasonWalkLimit {
		t.Fatalf("result %+v, want one walk_limit error", res)
	}
	if len(reasons) != 1 || reasons[0] != ReasonWalkLimit {
		t.Errorf("counted reasons %v", reasons)
	}
}
