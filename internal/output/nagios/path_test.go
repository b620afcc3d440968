package nagios

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// The long text lists the routers under every traced segment, with where
// the delay appears; a path's text never breaks the plugin output.
func TestLongTextListsThePath(t *testing.T) {
	tr, err := trace.NewTracer(trace.Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := chaintest.SlowPath()
	p.Reason = "tcp: CAP_NET_RAW | a pipe"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := prober.Run(ctx, prober.Options{Target: chaintest.TracedHop(t, p, 20*time.Millisecond), Source: "a", Count: 3, Timeout: 5 * time.Second,
		Trace: &prober.TraceOptions{Tracer: tr}})
	crit, _ := ParseRange("10")
	state, out := Evaluate(r, Thresholds{Crit: crit}, nil)
	if state != Critical {
		t.Errorf("state %v, want CRITICAL for b -> c over 10 ms", state)
	}
	want := "b -> c path (tcp, reached): 1 10.61.1.2 0.100ms, 2 10.61.2.2 20.100ms, 3 10.61.3.2 20.200ms; delay appears +20.0 ms at 10.61.2.2 (TTL 2)\n"
	if !strings.Contains(out, want) || !strings.Contains(out, "a -> b path (") {
		t.Errorf("long text lacks the paths:\n%s", out)
	}
	if strings.Count(out, "|") != 1 {
		t.Errorf("a pipe outside the performance data:\n%s", out)
	}
	// A segment whose trace could not run says why.
	p2 := frame.NoPath(frame.PathDisabled, "b does not trace | ever")
	r = prober.Run(ctx, prober.Options{Target: chaintest.TracedHop(t, p2, 0), Source: "a", Count: 1, Timeout: 5 * time.Second,
		Trace: &prober.TraceOptions{Tracer: tr}})
	_, out = Evaluate(r, Thresholds{}, nil)
	if !strings.Contains(out, "b -> c path: no path (disabled): b does not trace / ever\n") {
		t.Errorf("a disabled trace:\n%s", out)
	}
}
