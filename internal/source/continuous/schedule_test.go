package continuous

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/relay"
)

// The loop's deadlines come out of its heap in order, however they are
// pushed, moved and taken out.
func TestTimerHeapKeepsDeadlinesInOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	var h timerHeap
	var live []*tcpEntry
	for range 5000 {
		switch op := rng.IntN(4); {
		case op == 0 || len(live) == 0:
			e := &tcpEntry{due: rng.Int64N(1000), heapIdx: -1}
			h.push(e)
			live = append(live, e)
		case op == 1:
			e := live[rng.IntN(len(live))]
			e.due = rng.Int64N(1000)
			h[e.heapIdx].due = e.due
			h.fix(e.heapIdx)
		case op == 2:
			i := rng.IntN(len(live))
			h.remove(live[i].heapIdx)
			live = slices.Delete(live, i, i+1)
		default:
			for i, x := range h {
				if x.e.heapIdx != i || x.due != x.e.due {
					t.Fatalf("entry at %d says %d, due %d beside %d", i, x.e.heapIdx, x.e.due, x.due)
				}
				if i > 0 && h[(i-1)/heapArity].due > x.due {
					t.Fatalf("heap order broken at %d", i)
				}
			}
		}
	}
	var out []int64
	for len(h) > 0 {
		out = append(out, h[0].due)
		h.remove(0)
	}
	if !slices.IsSorted(out) || len(out) != len(live) {
		t.Errorf("%d deadlines out of %d live, sorted %v", len(out), len(live), slices.IsSorted(out))
	}
}

// entries like the bench's: one target, a module per entry.
func benchEntries(n int, interval time.Duration) []config.Continuous {
	out := make([]config.Continuous, n)
	for i := range out {
		out[i] = config.Continuous{Target: "127.0.0.1:29410", Module: fmt.Sprintf("m%d", i), Interval: config.Duration(interval)}
	}
	return out
}

// spreadOf is the busiest bin's count over the mean, of the times given
// binned by width over [from, from+span).
func spreadOf(times []int64, from, span, width int64) float64 {
	bins := make([]int, span/width)
	for _, t := range times {
		if t >= from && t < from+span {
			bins[(t-from)/width]++
		}
	}
	top, sum := 0, 0
	for _, b := range bins {
		top, sum = max(top, b), sum+b
	}
	return float64(top) / (float64(sum) / float64(len(bins)))
}

// Entries' probes spread evenly over their interval (issue 23: no second
// with more than twice the mean; the busiest 100 ms and 10 ms are held to
// it too), and stay spread when every chain broke at once and all
// entries reconnect with backoff.
func TestProbesSpreadEvenly(t *testing.T) {
	const second = int64(time.Second)
	for _, n := range []int{100, 2000, 10000} {
		entries := benchEntries(n, time.Second)
		var probes, retries []int64
		for _, e := range entries {
			s := newSchedule(e, 0)
			slot := s.first(0)
			for range 5 { // five seconds of probes
				probes = append(probes, slot)
				s.take(slot)
				slot = s.next(slot + int64(300*time.Microsecond))
			}
			// Everything broke at 10 s: each entry fails at its next
			// slot and retries after its backoff, several times.
			slot = s.first(10 * second)
			for range 4 {
				slot = s.retry(slot)
				retries = append(retries, slot)
			}
		}
		for _, width := range []int64{second, second / 10, second / 100} {
			if width == second/100 && n < 2000 {
				continue // too few entries for ten per bin
			}
			if r := spreadOf(probes, 0, 5*second, width); r > 2 {
				t.Errorf("%d entries: the busiest %v holds %.2fx the mean", n, time.Duration(width), r)
			}
		}
		// The retries come 1, 2, 4 and 8 s after the failure, each entry
		// at its own place in the second: spread within the second.
		inSecond := make([]int64, len(retries))
		for i, r := range retries {
			inSecond[i] = r % second
		}
		if r := spreadOf(inSecond, 0, second, second/10); r > 2 {
			t.Errorf("%d entries: retries after a failure of all: the busiest 100 ms of the second holds %.2fx the mean", n, r)
		}
	}
}

// A probe sent early (with another entry's turn) still takes its slot:
// the next one is a whole interval later, not the same slot again.
func TestEarlyProbeTakesItsSlot(t *testing.T) {
	e := benchEntries(1, time.Second)[0]
	s := newSchedule(e, 0)
	slot := s.first(0)
	s.take(slot)
	// replied 1 ms before the slot it was sent for
	if next := s.next(slot - int64(time.Millisecond)); next != slot+int64(time.Second) {
		t.Errorf("next slot %v after %v, want one interval later", time.Duration(next), time.Duration(slot))
	}
}

// The early margin lets about batchProbes probes of the loop go out
// together, within 2 ms and a twentieth of the interval.
func TestEarlyMargin(t *testing.T) {
	for _, c := range []struct {
		interval time.Duration
		entries  int
		want     time.Duration
	}{
		{time.Second, 0, 50 * time.Millisecond},
		{time.Second, 1, 50 * time.Millisecond},
		{time.Second, 100, 50 * time.Millisecond},
		{time.Second, 400, 20 * time.Millisecond},
		{time.Second, 2000, 4 * time.Millisecond},
		{time.Second, 10000, 2 * time.Millisecond},
		{10 * time.Second, 10000, 8 * time.Millisecond},
		{10 * time.Millisecond, 1, 500 * time.Microsecond},
	} {
		if got := time.Duration(earlyMargin(c.interval, c.entries)); got != c.want {
			t.Errorf("%d entries at %v: early margin %v, want %v", c.entries, c.interval, got, c.want)
		}
	}
}

// Runners' probes go out at the start of their batch: slots within one
// early margin of each other fire at the same instant (one wake-up of the
// process), never after their slot and never more than the margin before.
// A connection opens at its slot.
func TestRunnersFireOnABatchGrid(t *testing.T) {
	origin := time.Now()
	moment := monotonicSince(origin)
	var running atomic.Int64
	running.Store(2000)
	entries := benchEntries(2000, time.Second)
	margin := earlyMargin(time.Second, 2000)
	fires := map[int64]int{}
	now := origin
	for _, e := range entries {
		r := newRunner(&recorder{}, prober.Options{}, newSchedule(e, 0), moment, &running)
		slot := r.sched.first(0)
		fire := moment(now) + int64(r.until(now, slot, true))
		if fire > slot || slot-fire >= margin {
			t.Fatalf("slot %v fires at %v: want within %v before it", time.Duration(slot), time.Duration(fire), time.Duration(margin))
		}
		if open := moment(now) + int64(r.until(now, slot, false)); open != slot {
			t.Fatalf("a connection of slot %v opens at %v: want at its slot", time.Duration(slot), time.Duration(open))
		}
		fires[fire]++
	}
	// 2000 slots over a second on a 4 ms grid: 250 instants
	if len(fires) > int(time.Second)/int(margin) {
		t.Errorf("%d distinct firing instants for 2000 slots, want at most %d", len(fires), int(time.Second)/int(margin))
	}
}

// A runner whose timer fires before its slot takes that slot: its next
// probe is a whole interval later, not the same slot again. Counted over
// a window: never more probes than slots (a busy machine gives fewer).
func TestRunnersProbeOncePerSlot(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	const n, interval = 20, 100 * time.Millisecond
	cfg := "modules:\n"
	for i := range n {
		cfg += fmt.Sprintf("  m%d: {targets: [\"127.0.0.1:*\"], timeout: 2s}\n", i)
	}
	cfg += "continuous:\n"
	for i := range n {
		cfg += fmt.Sprintf("  - {target: %q, module: m%d, interval: %v}\n", z, i, interval)
	}
	m, reg := newTestManagerOn(t, engines[1])
	m.Apply(parse(t, cfg))
	probes := func() float64 {
		return sumOf(t, reg, "subsegment_continuous_probes_total", map[string]string{"result": "success"})
	}
	waitFor(t, "every entry's first probes", func() bool { return probes() >= 2*n })
	t0, p0 := time.Now(), probes()
	waitFor(t, "five rounds of probes", func() bool { return probes() >= p0+5*n })
	p1, elapsed := probes(), time.Since(t0)
	if most := float64(n) * (float64(elapsed/interval) + 2); p1-p0 > most {
		t.Errorf("%v probes in %v by %d entries at %v: more than one per slot (at most %v)", p1-p0, elapsed, n, interval, most)
	}
}
