package report

import (
	"bytes"
	"strings"
	"testing"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

func intp(v int) *int    { return &v }
func boolp(v bool) *bool { return &v }

// stampResult is what a STAMP run with loss on both ways and DSCP
// re-marked forward looks like in the model.
func stampResult(byDirection bool) *prober.Result {
	l := &prober.LossResult{Sent: 21, Received: 18, Lost: 3, Ratio: 3.0 / 21, Unknown: 3}
	if byDirection {
		l.ByDirection, l.Unknown = true, 1
		l.Forward = &prober.DirectionLoss{Lost: 1, Ratio: 0.05}
		l.Return = &prober.DirectionLoss{Lost: 1, Ratio: 1.0 / 19}
	}
	return &prober.Result{Target: "10.0.0.1:862", Source: "a", Success: true, Probes: 17, HopsReached: 1,
		Hops: []prober.HopResult{{Name: "a"}, {Name: "r1", STAMP: true, Residence: prober.Seconds{Min: 1e-5, Median: 2e-5, Max: 3e-5}, KernelTimestamps: true}},
		Segments: []prober.SegmentResult{{From: "a", To: "r1", Samples: 17, RTT: prober.Seconds{Min: 0.001, Median: 0.002, Max: 0.003}, Slowest: true, Loss: l,
			DSCP: &prober.DSCPResult{Sent: 46, AtReflector: intp(0), Returned: intp(46), ForwardRemarked: boolp(true), ReturnRemarked: boolp(false)}}}}
}

func TestTableOfSTAMP(t *testing.T) {
	for _, tc := range []struct {
		byDirection bool
		want        []string
	}{
		{true, []string{"a -> r1: 21 packets, 3 lost (14.3%): forward 1 (5.0%), return 1 (5.3%), 1 not named yet", "a -> r1: DSCP sent 46, at the reflector 0, returned 46: RE-MARKED forward"}},
		{false, []string{"a -> r1: 21 packets, 3 lost (14.3%), direction not known: the reflector sent no Direct Measurement counters"}},
	} {
		var b bytes.Buffer
		if err := Table(&b, stampResult(tc.byDirection)); err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("table lacks %q:\n%s", w, b.String())
			}
		}
		// The reflector reports no wait: its cell says so.
		if !strings.Contains(b.String(), "r1   0.010ms        0.020ms  0.030ms  -     kernel") {
			t.Errorf("reflector row:\n%s", b.String())
		}
	}
	d := &prober.DSCPResult{Sent: 10, Returned: intp(10)}
	if got := DSCPText(d); got != "DSCP sent 10, returned 10 (re-marking not known: no Class of Service TLV)" {
		t.Errorf("DSCP without the TLV: %q", got)
	}
}
