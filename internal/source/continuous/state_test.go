package continuous

import (
	"testing"
	"time"
	"unsafe"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// pageState is an entry of chain a -> b probed every interval, with SLAs
// on the segment and the hop, and the chain as a good probe saw it.
func pageState(interval time.Duration) *entryState {
	e := config.Continuous{Target: "127.0.0.1:9000", Module: "m", Interval: config.Duration(interval)}
	m := &config.Module{SLA: config.SLA{Default: config.Duration(10 * time.Millisecond), Hops: map[string]config.Duration{"b": config.Duration(time.Millisecond)}}}
	s := newEntryState(e, m)
	s.chain(&prober.Result{Hops: []prober.HopResult{{Name: "a"}, {Name: "b"}}, Segments: []prober.SegmentResult{{From: "a", To: "b"}}})
	return s
}

// sample records one good probe at now: a -> b 2 ms, b 0.1 ms.
func sample(s *entryState, now time.Time) {
	s.succeed(now)
	s.segment(now, "a", "b", 0.002)
	s.hop(now, "b", 0.0001, 0.00001, true, nil)
}

func states(snap EntryState) (segment, hop string, samples int) {
	return snap.Segments[0].SLA, snap.Hops[1].SLA, snap.Segments[0].Samples
}

// With an interval over the page's minute, a healthy chain's segment and
// hop had no sample in the window between two probes and counted as
// exceeded. The window covers two intervals; no sample is no data, never
// a violation.
func TestLongIntervalIsNeverAFalseViolation(t *testing.T) {
	s := pageState(5 * time.Minute)
	t0 := time.Now()
	sample(s, t0)
	for _, after := range []time.Duration{0, 90 * time.Second, 4 * time.Minute, 9 * time.Minute} {
		seg, hop, n := states(s.snapshot(t0.Add(after)))
		if seg != SLAOk || hop != SLAOk || n != 1 {
			t.Errorf("%v after the only probe of a 5m interval: segment %s, hop %s, %d samples; want ok, ok, 1", after, seg, hop, n)
		}
	}
	// Two intervals without a probe (the runner is stuck, or the chain
	// broke and says so in its failure): no data, not a violation.
	snap := s.snapshot(t0.Add(11 * time.Minute))
	if seg, hop, n := states(snap); seg != SLANoData || hop != SLANoData || n != 0 {
		t.Errorf("11m after the only probe: segment %s, hop %s, %d samples; want no_data, no_data, 0", seg, hop, n)
	}
	if snap.WindowSeconds != 600 {
		t.Errorf("window %vs, want two intervals (600s)", snap.WindowSeconds)
	}
	// A short interval keeps the minute.
	if w := pageState(time.Second).snapshot(t0).WindowSeconds; w != 60 {
		t.Errorf("window of a 1s interval %vs, want 60s", w)
	}
	// Over its SLA is still exceeded.
	slow := pageState(5 * time.Minute)
	slow.segment(t0, "a", "b", 0.5)
	if seg, _, _ := states(slow.snapshot(t0.Add(time.Minute))); seg != SLAExceeded {
		t.Errorf("a 500 ms segment over a 10 ms SLA: %s", seg)
	}
}

// steadyClock is a monotonic clock the test moves, whatever wall time the
// state is given: the wall clock can step, this one does not.
type steadyClock struct{ mono time.Duration }

func (c *steadyClock) at(time.Time) int64 { return int64(c.mono) }

// A wall-clock step must neither keep old samples (a backward step kept
// them for as long as it stepped: an hour of a stale median) nor drop new
// ones (a forward step emptied the window at once): the windows age by
// the monotonic clock.
func TestWindowAgesByTheMonotonicClock(t *testing.T) {
	wall := time.Date(2026, 3, 29, 1, 59, 30, 0, time.UTC)
	run := func(moment moments, step time.Duration) (at30s, at90s int) {
		s := pageState(time.Second)
		clk := &steadyClock{}
		if moment == nil {
			moment = clk.at
		}
		s.moment = moment
		sample(s, wall)
		// The wall clock steps by step right after the sample.
		clk.mono = 30 * time.Second
		_, _, at30s = states(s.snapshot(wall.Add(step + 30*time.Second)))
		clk.mono = 90 * time.Second
		_, _, at90s = states(s.snapshot(wall.Add(step + 90*time.Second)))
		return at30s, at90s
	}
	for _, step := range []time.Duration{-time.Hour, -time.Minute, time.Hour} {
		if at30s, at90s := run(nil, step); at30s != 1 || at90s != 0 {
			t.Errorf("wall clock stepped %v: %d samples 30s after the probe (want 1), %d at 90s (want 0)", step, at30s, at90s)
		}
	}
	// The scenario tells the two clocks apart: aged by the wall clock (as
	// the page did), the sample is gone at once after a forward step.
	if at30s, _ := run(func(t time.Time) int64 { return t.UnixNano() }, time.Hour); at30s != 0 {
		t.Fatalf("the wall clock's ageing is not what this test catches")
	}
	// The page's own moments, from times that carry a monotonic reading.
	s := pageState(time.Second)
	now := time.Now()
	sample(s, now)
	if _, _, n := states(s.snapshot(now.Add(30 * time.Second))); n != 1 {
		t.Errorf("30s later: %d samples, want 1", n)
	}
	if _, _, n := states(s.snapshot(now.Add(90 * time.Second))); n != 0 {
		t.Errorf("90s later: %d samples, want 0", n)
	}
}

// A window keeps its values as float32 and gives them back as the page
// shows them: the shortest decimal of the float32, not its float64 noise.
func TestWindowGivesBackDecimals(t *testing.T) {
	var w window
	for i, v := range []float64{0.001, 0.0015, 0.002} {
		w.add(int64(i+1), v)
	}
	q := w.since(3, time.Second, nil)
	if q.Median != 0.0015 || q.P99 != 0.002 || q.Samples != 3 {
		t.Errorf("quantiles %+v, want median 0.0015 and p99 0.002 exactly", q)
	}
}

// A window fits the allocator's 1536-byte class and a hop's two windows
// its 3072-byte one (127 samples, not 128): the windows are most of the
// page's memory at 10 000 entries.
func TestWindowsFitTheirSizeClasses(t *testing.T) {
	if w, h := unsafe.Sizeof(window{}), unsafe.Sizeof(hopWindows{}); w > 1536 || h > 3072 {
		t.Errorf("a window is %d bytes (want at most 1536), a hop's windows %d (want at most 3072)", w, h)
	}
}
