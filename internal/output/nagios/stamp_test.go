package nagios

import (
	"strings"
	"testing"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

func intp(v int) *int    { return &v }
func boolp(v bool) *bool { return &v }

// A STAMP segment's loss goes into the perfdata (percent, per direction
// with the reflector's counters) and, with its DSCP, into the long text.
func TestEvaluateSTAMP(t *testing.T) {
	r := result(map[[2]string]float64{{"a", "r1"}: 0.002}, [2]string{"a", "r1"})
	r.Hops[1].STAMP = true
	s := &r.Segments[0]
	s.Loss = &prober.LossResult{Sent: 21, Received: 18, Lost: 3, Ratio: 3.0 / 21, ByDirection: true, Unknown: 1,
		Forward: &prober.DirectionLoss{Lost: 1, Ratio: 0.05}, Return: &prober.DirectionLoss{Lost: 1, Ratio: 1.0 / 19}}
	s.DSCP = &prober.DSCPResult{Sent: 46, AtReflector: intp(0), Returned: intp(46), ForwardRemarked: boolp(true), ReturnRemarked: boolp(false)}
	state, out := Evaluate(r, Thresholds{Verbose: 1}, nil)
	first := strings.SplitN(out, "\n", 2)[0]
	if state != OK || !lineRE.MatchString(first) {
		t.Errorf("state %v, first line %q", state, first)
	}
	for _, w := range []string{"'a_r1_rtt'=2.000ms;;;0; 'a_r1_loss'=14.3%;;;0;100 'a_r1_loss_fwd'=5.0%;;;0;100 'a_r1_loss_ret'=5.3%;;;0;100",
		"\na -> r1: 21 packets, 3 lost (14.3%): forward 1 (5.0%), return 1 (5.3%)", "\na -> r1: DSCP sent 46, at the reflector 0, returned 46: RE-MARKED forward\n",
		"\nhop r1 residence 0.010ms OK\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	// Every packet lost: no rtt, the loss still in the perfdata.
	r.Segments[0].Samples = 0
	r.Success, r.Failure = false, &prober.FailureResult{From: "a", To: "r1", Reason: "timeout", Message: "no STAMP reply"}
	state, out = Evaluate(r, Thresholds{}, nil)
	if state != Critical || strings.Contains(out, "a_r1_rtt") || !strings.Contains(out, "'a_r1_loss'=") {
		t.Errorf("all lost: %v\n%s", state, out)
	}
}
