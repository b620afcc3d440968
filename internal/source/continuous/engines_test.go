package continuous

import (
	"fmt"
	"log/slog"
	"maps"
	"net"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/relay"
)

// Plain-TCP entries run on the epoll loop, every other entry on a runner
// with a prober.Session. Both must record exactly the same things for
// the same chain: the tests below run every scenario on both engines at
// once and compare what each recorded — which series exist, which are
// counted, what the counts are relative to the probes, and the chain as
// the page draws it (the figures themselves are timings, different in
// every run).

// engine is one of the two ways an entry can run.
type engine struct {
	name    string
	runners bool
}

var engines = []engine{{"loop", false}, {"runner", true}}

// forEachEngine runs a test on both engines.
func forEachEngine(t *testing.T, f func(t *testing.T, e engine)) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) { f(t, e) })
	}
}

// startEngine runs cfg's entries on e, with a name cache of their own
// (the engines must not learn names from each other).
func startEngine(t *testing.T, e engine, cfg string) (*Manager, *prometheus.Registry) {
	t.Helper()
	names := &prober.NameCache{}
	reg := prometheus.NewPedanticRegistry()
	m := NewManager(NewMetrics(reg), func(target string, mod *config.Module) prober.Options {
		return prober.Options{Target: target, Source: "a", Timeout: time.Duration(mod.Timeout), Names: names}
	}, slog.New(slog.DiscardHandler))
	if e.runners {
		m.RunAllOnRunners()
	}
	t.Cleanup(m.Stop)
	m.Apply(parse(t, cfg))
	return m, reg
}

// shape is what an entry recorded, without run-to-run figures: each
// series by name and labels, as "counted" (histograms: their count;
// counters: their value) or its value (gauges but the timestamp).
type shape map[string]float64

func shapeOf(t *testing.T, reg *prometheus.Registry) shape {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := shape{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			var labels []string
			for _, lp := range m.Label {
				if lp.GetName() != "target" && lp.GetName() != "module" {
					labels = append(labels, lp.GetName()+"="+lp.GetValue())
				}
			}
			sort.Strings(labels)
			key := strings.TrimPrefix(mf.GetName(), namespace+"_") + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Histogram != nil:
				out[key] = float64(m.Histogram.GetSampleCount())
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil && strings.HasSuffix(mf.GetName(), "_timestamp_seconds"):
				out[key] = 1
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			}
		}
	}
	return out
}

// keys are the series of a shape, sorted.
func (s shape) keys() []string {
	out := make([]string, 0, len(s))
	for k := range s {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// compareShapes checks that both engines recorded the same series, the
// same gauges, and the same counters and histograms as counted or not;
// exact, per probe, holds the keys whose counts must also be equal.
func compareShapes(t *testing.T, loop, runner shape, exact ...string) {
	t.Helper()
	if !slices.Equal(loop.keys(), runner.keys()) {
		t.Fatalf("series differ:\n loop   %v\n runner %v", loop.keys(), runner.keys())
	}
	for k, v := range loop {
		w := runner[k]
		switch {
		case strings.HasPrefix(k, "segment_sla") || strings.HasPrefix(k, "hop_sla"):
			if v != w {
				t.Errorf("%s: loop %v, runner %v", k, v, w)
			}
		case (v > 0) != (w > 0) || slices.Contains(exact, k) && v != w:
			t.Errorf("%s: loop counted %v, runner %v", k, v, w)
		}
	}
}

// pageShape is the chain as the page draws it, without figures.
func pageShape(m *Manager) string {
	var b strings.Builder
	for _, st := range m.Snapshot() {
		for _, h := range st.Hops {
			fmt.Fprintf(&b, "hop %s sla=%s stamp=%v wait=%v; ", h.Name, h.SLA, h.STAMP, h.WaitSeconds != nil)
		}
		for _, s := range st.Segments {
			fmt.Fprintf(&b, "segment %s>%s sla=%s broken=%s; ", s.From, s.To, s.SLA, s.Broken)
		}
		if f := st.Failure; f != nil {
			fmt.Fprintf(&b, "failure %s>%s %s", f.From, f.To, f.Reason)
		}
	}
	return b.String()
}

// both runs cfg on both engines until done says an engine's shape is
// far enough, and returns both shapes and pages.
func both(t *testing.T, cfg string, done func(shape) bool) (loop, runner shape, pages [2]string) {
	t.Helper()
	var ms [2]*Manager
	var regs [2]*prometheus.Registry
	for i, e := range engines {
		ms[i], regs[i] = startEngine(t, e, cfg)
	}
	var shapes [2]shape
	for i := range engines {
		waitFor(t, engines[i].name+" engine", func() bool { return done(shapeOf(t, regs[i])) })
		pages[i] = pageShape(ms[i])
		ms[i].Stop()
		shapes[i] = shapeOf(t, regs[i])
	}
	return shapes[0], shapes[1], pages
}

// perProbe checks that every histogram of s that a probe observes counts
// each probe of the entry once: its successes (rtt and hop series) and
// connections (connect).
func perProbe(t *testing.T, name string, s shape, probes, connects float64) {
	t.Helper()
	for k, v := range s {
		switch {
		case strings.HasPrefix(k, "segment_rtt") || strings.HasPrefix(k, "hop_residence") || strings.HasPrefix(k, "hop_wait"):
			if v != probes {
				t.Errorf("%s: %s counted %v, the entry measured %v probes", name, k, v, probes)
			}
		case strings.HasPrefix(k, "segment_connect"):
			if v != connects {
				t.Errorf("%s: %s counted %v, the entry opened %v connections", name, k, v, connects)
			}
		}
	}
}

func entry(target, module string) string {
	return fmt.Sprintf("  - {target: %q, module: %s, interval: 10ms}\n", target, module)
}

const slaModules = `modules:
  m: {targets: ["127.0.0.1:*"], sla: {default: 5s, segments: [{from: b, to: c, rtt: 1ns}], hops: {c: 1s}}}
continuous:
`

func TestEnginesRecordAHealthyChainAlike(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "c", "z")
	loop, runner, pages := both(t, slaModules+entry(target, "m"), func(s shape) bool { return s[`probes_total{result=success}`] >= 5 })
	compareShapes(t, loop, runner)
	for i, s := range []shape{loop, runner} {
		perProbe(t, engines[i].name, s, s[`probes_total{result=success}`], 1)
		for _, seg := range [][2]string{{"a", "b"}, {"b", "c"}, {"c", "z"}} {
			if s[fmt.Sprintf("segment_rtt_seconds{from=%s,to=%s}", seg[0], seg[1])] == 0 {
				t.Errorf("%s: no rtt of %s -> %s in %v", engines[i].name, seg[0], seg[1], s.keys())
			}
		}
		if s[`segment_sla_seconds{from=b,to=c}`] != 1e-9 || s[`hop_sla_seconds{hop=c}`] != 1 || s[`probes_total{result=failure}`] != 0 {
			t.Errorf("%s: SLA gauges or failures: %v", engines[i].name, s)
		}
	}
	if pages[0] != pages[1] || !strings.Contains(pages[0], "segment b>c sla=exceeded") {
		t.Errorf("pages differ or miss the exceeded segment:\n loop   %s\n runner %s", pages[0], pages[1])
	}
}

// A plain-TCP chain whose last relay forwards to a STAMP reflector
// (--forward-to stamp://): the reflector reports its residence and no
// wait, so neither engine makes a wait series or a page wait for it,
// while the relay before it has both.
func TestEnginesRecordAChainEndingAtAReflectorAlike(t *testing.T) {
	reflector := lossyReflector(t, func(int) bool { return false })
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: "stamp://" + reflector + "?name=r1"})
	loop, runner, pages := both(t, slaModules+entry(b, "m"), func(s shape) bool { return s[`probes_total{result=success}`] >= 5 })
	compareShapes(t, loop, runner)
	for i, s := range []shape{loop, runner} {
		// b -> r1 is UDP: no handshake for its connect histogram to count.
		tcp := maps.Clone(s)
		delete(tcp, `segment_connect_seconds{from=b,to=r1}`)
		perProbe(t, engines[i].name, tcp, s[`probes_total{result=success}`], 1)
		if _, ok := s[`hop_wait_seconds{hop=r1}`]; ok {
			t.Errorf("%s: a wait series for the reflector r1: %v", engines[i].name, s.keys())
		}
		if s[`hop_residence_seconds{hop=r1}`] == 0 || s[`hop_wait_seconds{hop=b}`] == 0 {
			t.Errorf("%s: no residence of r1 or no wait of b: %v", engines[i].name, s.keys())
		}
	}
	if pages[0] != pages[1] || !strings.Contains(pages[0], "hop r1 sla=none stamp=true wait=false") || !strings.Contains(pages[0], "hop b sla=none stamp=false wait=true") {
		t.Errorf("pages differ or draw a wait for the reflector:\n loop   %s\n runner %s", pages[0], pages[1])
	}
}

func TestEnginesRecordFailuresAlike(t *testing.T) {
	overclaim := chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		rec := chaintest.EndRecord("z")
		rec.Forward = time.Second
		return chaintest.Reply(v, req, frame.AppendHop(nil, &rec), 1)
	})
	garbage := chaintest.Scripted(t, func([]byte, frame.View) []byte { return []byte("not a frame header, garbage") })
	free := chaintest.FreeAddr(t)
	relayB := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: overclaim})
	for _, tc := range []struct {
		name, target, failure string
	}{
		{"nothing listens", free, "segment_failures_total{from=a,reason=refused,to=" + free + "}"},
		{"an end host answering garbage", garbage, "segment_failures_total{from=a,reason=bad_frame,to=" + garbage + "}"},
		// A hop claiming more than the hop before it measured around it:
		// bad_frame on the segment into it — but every warm-up fails so,
		// and a failed warm-up names no series after a peer (the refused
		// record's name is the hop's to choose): its failures go to the
		// entry's first segment as configured.
		{"an overclaiming hop behind a relay", relayB, "segment_failures_total{from=a,reason=bad_frame,to=" + relayB + "}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loop, runner, pages := both(t, slaModules+entry(tc.target, "m"), func(s shape) bool {
				return s[`probes_total{result=failure}`] >= 3
			})
			compareShapes(t, loop, runner)
			for i, s := range []shape{loop, runner} {
				if s[tc.failure] < 3 || s[`probes_total{result=success}`] != 0 {
					t.Errorf("%s: want %s only: %v", engines[i].name, tc.failure, s)
				}
			}
			if pages[0] != pages[1] || !strings.Contains(pages[0], "failure") {
				t.Errorf("pages differ:\n loop   %s\n runner %s", pages[0], pages[1])
			}
		})
	}
}

// A first hop that answers one probe per connection, then closes it: the
// warm-up passes, the probe after it fails, the entry reconnects — every
// connect observed, every failure counted, on both engines.
func TestEnginesRecordReconnectsAlike(t *testing.T) {
	target := onePerConnection(t)
	loop, runner, _ := both(t, slaModules+entry(target, "m"), func(s shape) bool { return s[`probes_total{result=failure}`] >= 4 })
	compareShapes(t, loop, runner)
	for i, s := range []shape{loop, runner} {
		if s[`segment_connect_seconds{from=a,to=z}`] < s[`probes_total{result=failure}`] {
			t.Errorf("%s: %v connects for %v failed probes, each after its own connect", engines[i].name, s[`segment_connect_seconds{from=a,to=z}`], s[`probes_total{result=failure}`])
		}
	}
}

// A first hop that closes idle connections (a relay's --timeout) under an
// entry probed less often: each probe opens the connection again, with
// its warm-up's connect times, and succeeds. The interval leaves the relay
// over 1.4 s to close the idle connection, so that a relay starved of CPU
// does not close it under a request that just arrived (a race no prober
// can win, not what this test is about).
func TestEnginesReopenIdleConnectionsAlike(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for idle timeouts")
	}
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: z, Timeout: 150 * time.Millisecond})
	cfg := slaModules + fmt.Sprintf("  - {target: %q, module: m, interval: 1600ms}\n", b)
	loop, runner, _ := both(t, cfg, func(s shape) bool { return s[`probes_total{result=success}`] >= 2 })
	compareShapes(t, loop, runner)
	for i, s := range []shape{loop, runner} {
		perProbe(t, engines[i].name, s, s[`probes_total{result=success}`], s[`probes_total{result=success}`]+1)
		if s[`probes_total{result=failure}`] != 0 {
			t.Errorf("%s: failures on idle connections: %v", engines[i].name, s)
		}
	}
}

// onePerConnection is an end host that answers the first probe of each
// connection and closes it.
func onePerConnection(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
				defer r.Release()
				if r.Fill() != nil {
					return
				}
				fr, err := r.Next()
				if err != nil || fr == nil {
					return
				}
				v, err := frame.Parse(fr, frame.DefaultMaxFrameBytes, frame.MaxHopsLimit)
				if err != nil {
					return
				}
				rec := chaintest.EndRecord("z")
				_, _ = c.Write(chaintest.Reply(v, fr, frame.AppendHop(nil, &rec), 1))
				served.Add(1)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// The loop probes, decodes, summarises and records without allocating:
// over a second of 20 entries probing every 10 ms (and the in-process
// relay answering them, itself allocation-free), next to no allocation
// per probe.
func TestLoopAllocatesNothingPerProbe(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "z")
	cfg := slaModules
	for i := range 20 {
		cfg += fmt.Sprintf("  - {target: %q, module: m%d, interval: 10ms}\n", target, i)
		cfg = strings.Replace(cfg, "continuous:\n", fmt.Sprintf("  m%d: {targets: [\"127.0.0.1:*\"], sla: {default: 5s}}\ncontinuous:\n", i), 1)
	}
	m, reg := startEngine(t, engines[0], cfg)
	successes := func() float64 {
		var sum float64
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, r := range m.entries {
			sum += testutil.ToFloat64(r.rec.succeeded)
		}
		return sum
	}
	waitFor(t, "probes on every entry", func() bool {
		return value(t, reg, "subsegment_continuous_probes_total", map[string]string{"module": "m19", "result": "success"}) >= 10
	})
	var before, after runtime.MemStats
	p0 := successes()
	runtime.ReadMemStats(&before)
	time.Sleep(time.Second)
	runtime.ReadMemStats(&after)
	p1 := successes()
	perProbe := float64(after.Mallocs-before.Mallocs) / (p1 - p0)
	t.Logf("%.0f probes, %.2f allocations per probe", p1-p0, perProbe)
	if p1-p0 < 200 || perProbe > 0.5 {
		t.Errorf("%.0f probes, %.2f allocations per probe", p1-p0, perProbe)
	}
}

// A chain that cannot be opened is retried after its interval, doubling
// up to maxBackoff, on both engines: the runner reset its backoff before
// every retry, and retried a broken chain at every interval (some 30
// failures where the loop had 6).
func TestEnginesBackOffAlike(t *testing.T) {
	cfg := slaModules + entry(chaintest.FreeAddr(t), "m")
	var ms [2]*Manager
	var regs [2]*prometheus.Registry
	for i, e := range engines {
		ms[i], regs[i] = startEngine(t, e, cfg)
	}
	failures := func(i int) float64 {
		return value(t, regs[i], "subsegment_continuous_probes_total", map[string]string{"result": "failure"})
	}
	// 6 attempts with the doubling backoff: 10+20+40+80+160 ms.
	waitFor(t, "failed opens on both engines", func() bool { return failures(0) >= 6 && failures(1) >= 6 })
	for _, m := range ms {
		m.Stop()
	}
	loop, runner := failures(0), failures(1)
	if runner > 2*loop+2 || loop > 2*runner+2 {
		t.Errorf("failed opens in the same time: loop %v, runner %v; want both backing off alike", loop, runner)
	}
}
