package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// claimingHop is an end host whose record says it took claim to answer
// every probe and stream block.
func claimingHop(t *testing.T, name string, claim time.Duration) string {
	return chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		rec := chaintest.EndRecord(name)
		rec.Forward = claim
		return chaintest.Reply(v, req, frame.AppendHop(nil, &rec), 1)
	})
}

// TestOverclaimingHopIsABadFrameEverywhere: an end host whose record says
// it took a second while relay b measured well under that around it would
// make b -> z's rtt negative. Every output refuses it as bad_frame on the
// segment into z, naming z: /probe, check, probe, send (stream mode) and a
// continuous entry's page (its failed warm-ups count on its first
// segment). An honest hop behind an identical relay passes.
func TestOverclaimingHopIsABadFrameEverywhere(t *testing.T) {
	b := startHop(t, "b", claimingHop(t, "z", time.Second))
	honest := startHop(t, "b", claimingHop(t, "z", 20*time.Microsecond))
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  default:
    timeout: 3s
    targets: ["127.0.0.1:*"]
continuous:
  - {target: %q, module: default, interval: 100ms}
`, b.addr))

	// /probe
	body := httpGet(t, "http://"+ex.web+"/probe?target="+b.addr)
	if !strings.Contains(body, "probe_success 0") || !strings.Contains(body, `subsegment_probe_failed_segment_info{from="b",reason="bad_frame",to="z"} 1`) {
		t.Errorf("/probe through an overclaiming hop is not a bad_frame failure of b -> z:\n%s", grepLines(body, "probe_")+"\n"+grepLines(body, "segment_rtt"))
	}
	if body := httpGet(t, "http://"+ex.web+"/probe?target="+honest.addr); !strings.Contains(body, "probe_success 1") {
		t.Errorf("/probe through an honest scripted hop failed:\n%s", grepLines(body, "probe_"))
	}

	// probe --output json
	stdout, stderr, code := runBinary(t, nil, "probe", b.addr, "--relay.name", "a", "--output", "json", "--count", "3", "--interval", "0.01", "--timeout", "3")
	var doc struct {
		Success bool `json:"success"`
		Failure *struct {
			From, To, Reason, Message string
		} `json:"failure"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatalf("probe --output json: %v (exit %d)\n%s\n%s", err, code, stdout, stderr)
	}
	if f := doc.Failure; doc.Success || f == nil || f.From != "b" || f.To != "z" || f.Reason != "bad_frame" || !strings.Contains(f.Message, "z") {
		t.Errorf("probe: success %v, failure %+v; want bad_frame on b -> z naming z", doc.Success, f)
	} else {
		t.Logf("probe: %s", f.Message)
	}

	// check (Nagios)
	stdout, _, code = runBinary(t, nil, "check", b.addr, "--relay.name", "a", "-w", "100", "-c", "200", "-t", "3")
	if code != 2 || !strings.HasPrefix(stdout, "SUBSEGMENT CRITICAL - chain broken at b -> z (bad_frame)") {
		t.Errorf("check: exit %d\n%s", code, stdout)
	}

	// send (stream mode)
	_, stderr, code = runBinary(t, strings.NewReader(strings.Repeat("block of data ", 200)), "send", "-f", b.addr, "-t", "3s", "--relay.name", "a")
	if code != 1 || !strings.Contains(stderr, "bad_frame: reply to block 0") || !strings.Contains(stderr, "the record of hop 2 (z) was refused: z says it took 1s") {
		t.Errorf("send through an overclaiming hop: exit %d\n%s", code, stderr)
	} else {
		t.Logf("send: %s", stderr)
	}

	// continuous
	var api struct {
		Chains []struct {
			Failure *struct{ From, To, Reason string } `json:"failure"`
		} `json:"chains"`
	}
	eventually(t, 30*time.Second, "the continuous entry broken at b -> z (bad_frame)", func() error {
		if err := json.Unmarshal([]byte(httpGet(t, "http://"+ex.web+"/api/v1/chains")), &api); err != nil {
			return err
		}
		if len(api.Chains) != 1 || api.Chains[0].Failure == nil || *api.Chains[0].Failure != (struct{ From, To, Reason string }{"b", "z", "bad_frame"}) {
			return fmt.Errorf("chains %+v", api.Chains)
		}
		return nil
	})
	metrics := httpGet(t, "http://"+ex.web+"/metrics")
	if v := metricValue(metrics, fmt.Sprintf(`subsegment_continuous_probes_total{module="default",result="success",target=%q}`, b.addr)); v > 0 {
		t.Errorf("%v continuous probes through the overclaiming hop counted as successes", v)
	}
	// Every warm-up fails so: the failures are counted on the entry's
	// first segment as configured, no series is named after z's record
	// (the page above says b -> z).
	if !strings.Contains(metrics, `subsegment_continuous_segment_failures_total{from="a",module="default",reason="bad_frame",target="`+b.addr+`",to="`+b.addr+`"}`) ||
		strings.Contains(grepLines(metrics, "subsegment_continuous_"), `to="z"`) {
		t.Errorf("no bad_frame failure counted on a -> %s, or a series of b -> z from failed warm-ups:\n%s", b.addr, grepLines(metrics, "subsegment_continuous_"))
	}
}

// stampingProxy is an HTTP reverse proxy in the test that adds the entry
// stamp() returns to every response, whatever time it took: a proxy whose
// stamps lie.
func stampingProxy(t *testing.T, upstream string, stamp func() string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream})
	rp.ModifyResponse = func(r *http.Response) error {
		r.Header.Add("Subsegment-Timing", stamp())
		return nil
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestHTTPEntriesHeldToWhatEnclosesThem: source -> HAProxy (h1, real) ->
// n1 (a proxy in the test whose stamps lie) -> backend. An entry that
// overflows, or that claims more than HAProxy measured around it (with
// the module's hops), or more than the source's own round trip (without),
// is bad_header on the segment into n1, naming it.
func TestHTTPEntriesHeldToWhatEnclosesThem(t *testing.T) {
	var stamp atomic.Value
	stamp.Store("n1;dur=100us")
	n1 := stampingProxy(t, startBackend(t), func() string { return stamp.Load().(string) })
	h1 := startHAProxy(t, "h1", n1, "")
	ex := startExporter(t, "a", `modules:
  hops:
    prober: http
    targets: ["127.0.0.1:*"]
    http: {hops: [h1, n1]}
  any:
    prober: http
    targets: ["127.0.0.1:*"]
`)
	probe := func(module string) string {
		return httpGet(t, "http://"+ex.web+"/probe?module="+module+"&target=http://"+h1+"/&debug=true")
	}
	for _, c := range []struct {
		name, stamp, module, from, msg string
	}{
		{"overflow", "n1;dur=10000000000s", "hops", "h1", "dur over 24h0m0s"},
		{"longer than HAProxy's time around it", "n1;dur=2s", "hops", "h1", "n1 says it took 2s from request in to reply out, but h1 measured only"},
		{"longer than the source's round trip", "n1;dur=2s", "any", "a", "n1 says it took 2s from request in to reply out, but a measured only"},
	} {
		t.Run(c.name, func(t *testing.T) {
			stamp.Store(c.stamp)
			body := probe(c.module)
			want := fmt.Sprintf(`subsegment_probe_failed_segment_info{from=%q,reason="bad_header",to="n1"} 1`, c.from)
			if !strings.Contains(body, "probe_success 0") || !strings.Contains(body, want) || !strings.Contains(body, c.msg) {
				t.Fatalf("want %s and a message containing %q:\n%s", want, c.msg, body)
			}
			for _, line := range strings.Split(body, "\n") {
				if strings.HasPrefix(line, "subsegment_segment_rtt") && strings.Contains(line, " -") {
					t.Errorf("negative segment: %s", line)
				}
			}
		})
	}
	// The same chain, n1 stamping what it plausibly took: accepted.
	stamp.Store("n1;dur=1us")
	for _, module := range []string{"hops", "any"} {
		if body := probe(module); !strings.Contains(body, "probe_success 1") {
			t.Errorf("module %s, n1 stamping 1us: not a success:\n%s", module, body)
		}
	}
}

// TestHTTPEntryWithinItsResolutionIsHeld: a proxy stamping `be;dur=1s`
// (1 s resolution) in front of its backend, when the whole probe took a
// few milliseconds, is within the tolerance of its stamps: the probe
// succeeds, and the entry counts as what the source measured around it,
// so the segment behind it is no longer than the probe (it showed 1 s,
// over the SLA), and segments and residences add up to the round trip
// (REVIEW-1 finding 5).
func TestHTTPEntryWithinItsResolutionIsHeld(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Subsegment-Timing", "be;dur=1s")
		w.Write([]byte("ok"))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	ex := startExporter(t, "a", `modules:
  web:
    prober: http
    targets: ["127.0.0.1:*"]
    sla: {default: 500ms}
`)
	body := httpGet(t, "http://"+ex.web+"/probe?module=web&target=http://"+ln.Addr().String()+"/x")
	seg := func(from, to string) float64 {
		return metricValue(body, fmt.Sprintf(`subsegment_segment_rtt_max_seconds{from=%q,to=%q}`, from, to))
	}
	res := func(hop string) float64 {
		return metricValue(body, fmt.Sprintf(`subsegment_hop_residence_max_seconds{hop=%q}`, hop))
	}
	took := metricValue(body, "probe_duration_seconds")
	inside, outside := seg("be", "backend"), seg("a", "be")
	t.Logf("a -> be %vs, be -> backend %vs, probe took %vs", outside, inside, took)
	if !strings.Contains(body, "probe_success 1") || inside < 0 || outside < 0 || took <= 0 {
		t.Fatalf("probe through a proxy stamping 1s at 1 s resolution:\n%s", grepLines(body, "subsegment_segment_rtt")+grepLines(body, "probe_"))
	}
	if inside > took {
		t.Errorf("segment be -> backend %vs, longer than the whole probe (%vs): the entry was not held to the round trip", inside, took)
	}
	if sum := inside + outside + max(res("be"), 0) + max(res("backend"), 0); sum > took {
		t.Errorf("segments and residences add up to %vs, over the probe's %vs", sum, took)
	}
	if metricValue(body, `subsegment_segment_sla_exceeded{from="be",to="backend"}`) != 0 {
		t.Errorf("be -> backend over its 500 ms SLA in a probe of %vs:\n%s", took, grepLines(body, "sla"))
	}
}
