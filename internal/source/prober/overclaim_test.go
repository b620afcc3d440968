package prober

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/relay"
)

// fastClock runs rate times as fast as the system's monotonic clock: a
// hop whose clock is broken, not its software.
type fastClock struct {
	clock.Clock
	rate int64
}

func (c fastClock) Monotonic() int64 { return c.Clock.Monotonic() * c.rate }

// noNegativeSegments fails the test when any figure of r is negative.
func noNegativeSegments(t *testing.T, r *Result) {
	t.Helper()
	for _, s := range r.Segments {
		if s.RTT.Min < 0 || s.RTT.Median < 0 {
			t.Errorf("segment %s -> %s rtt %+v", s.From, s.To, s.RTT)
		}
	}
}

// A hop claiming more time than the hop before it measured around it
// would make that segment negative: the probe fails with bad_frame on
// the segment into the hop, naming it, through Run (/probe, check,
// probe) and a continuous Session alike.
func TestOverclaimingHopIsBadFrame(t *testing.T) { chaintest.ForEachEngine(t, testOverclaimingHop) }

func testOverclaimingHop(t *testing.T) {
	liar := chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		rec := chaintest.EndRecord("z")
		rec.Forward = time.Second
		return chaintest.Reply(v, req, frame.AppendHop(nil, &rec), 1)
	})
	check := func(t *testing.T, r *Result, from string) {
		t.Helper()
		f := r.Failure
		if r.Success || f == nil || f.Reason != "bad_frame" || f.From != from || f.To != "z" || !strings.Contains(f.Message, "z says it took 1s") {
			t.Fatalf("success %v, failure %+v; want bad_frame on %s -> z naming z", r.Success, f, from)
		}
		noNegativeSegments(t, r)
	}
	t.Run("first hop", func(t *testing.T) { check(t, run(t, opts(liar)), "a") })
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: liar})
	t.Run("behind a relay", func(t *testing.T) { check(t, run(t, opts(b)), "b") })
	t.Run("continuous session", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, warm := Open(ctx, opts(b))
		if s != nil {
			s.Close()
		}
		check(t, warm, "b")
	})

	// An honest relay with a clock running ten times too fast: behind
	// it, 5 ms each way to z, so its claim exceeds what b measured by far
	// more than any load on the machine could hide.
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	px := chaintest.DelayProxy(t, z, 5*time.Millisecond, 5*time.Millisecond)
	c := chaintest.StartRelay(t, relay.Config{Name: "c", ForwardTo: px.Addr(), Clock: fastClock{Clock: clock.NewSystem(), rate: 10}})
	b2 := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: c})
	t.Run("a relay with a fast clock", func(t *testing.T) {
		r := run(t, opts(b2))
		f := r.Failure
		if r.Success || f == nil || f.Reason != "bad_frame" || f.From != "b" || f.To != "c" || !strings.Contains(f.Message, "hop 2 (c)") {
			t.Fatalf("success %v, failure %+v; want bad_frame on b -> c naming c", r.Success, f)
		}
		if s := r.Segment("a", "b"); s == nil || s.Samples == 0 {
			t.Errorf("a -> b, before the refused record, has no rtt: %+v", r.Segments)
		}
		if r.Segment("c", "z") != nil || r.Hop("z") != nil {
			t.Errorf("what lies behind the refused record is reported: %+v", r.Segments)
		}
		noNegativeSegments(t, r)
	})
}

// Subsegment-Timing entries are held to what encloses them: the source's
// round trip, and with the module's hops the outer proxy's time, give or
// take both resolutions; an overflowing value is refused when parsed.
func TestHTTPEntriesWithinWhatEnclosesThem(t *testing.T) {
	for _, c := range []struct {
		name     string
		spend    bool
		entries  []string
		h        HTTPOptions
		from, to string
		msg      string
	}{
		{"overflow", true, []string{"be;dur=10000000000s"}, HTTPOptions{}, "a", "be", `"be;dur=10000000000s": dur over 24h0m0s`},
		{"overflow of the outermost proxy", true, []string{"n1;dur=300us", "be;dur=10000000000s"}, HTTPOptions{Hops: []string{"be", "n1"}}, "a", "be", `"be;dur=10000000000s": dur over 24h0m0s`},
		{"overflow of an inner proxy", true, []string{"be;dur=10000000000s", "h1;dur=300us"}, HTTPOptions{Hops: []string{"h1", "be"}}, "h1", "be", `"be;dur=10000000000s": dur over 24h0m0s`},
		{"longer than the source's round trip", false, []string{"be;dur=2s"}, HTTPOptions{}, "a", "be", "be says it took 2s"},
		{"longer than the outer proxy's time", true, []string{"n1;dur=0.030s", "h1;dur=1000us"}, HTTPOptions{Hops: []string{"h1", "n1"}},
			"h1", "n1", "n1 says it took 30ms from request in to reply out, but h1 measured only 1ms around it"},
		{"a millisecond stamp of a millisecond too many", false, []string{"n1;dur=0.002s"}, HTTPOptions{}, "a", "n1", "n1 says it took 2ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := serveHTTPSpending(t, c.spend, func(int) string { return response(200, c.entries...) })
			r := run(t, httpOpts(srv.url(), c.h))
			f := r.Failure
			if r.Success || f == nil || f.Reason != "bad_header" || f.From != c.from || c.to != "" && f.To != c.to || !strings.Contains(f.Message, c.msg) {
				t.Fatalf("success %v, failure %+v\nwant bad_header on %s -> %s containing %q", r.Success, f, c.from, c.to, c.msg)
			}
			noNegativeSegments(t, r)
		})
	}
	// nginx writes the milliseconds it saw begin and end: a request of
	// 0.1 ms may read 0.001s. Within its resolution, the segment is 0.
	srv := serveHTTPSpending(t, false, func(int) string { return response(200, "n1;dur=0.001s") })
	r := run(t, httpOpts(srv.url(), HTTPOptions{}))
	if !r.Success {
		t.Fatalf("a stamp within its resolution refused: %+v", r.Failure)
	}
	noNegativeSegments(t, r)
}
