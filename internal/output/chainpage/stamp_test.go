package chainpage

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/continuous"
)

// A STAMP segment shows its loss over the window, per direction when
// named, and a mark when a router re-marks its DSCP.
func TestRenderSTAMPSegment(t *testing.T) {
	now := time.Now()
	fwd, ret := 2, 1
	st := continuous.EntryState{Target: "10.0.0.1:862", Module: "r", LastSuccess: &now,
		Hops: []continuous.HopState{{Name: "a", SLA: continuous.SLANone}, {Name: "r1", ResidenceSeconds: 0.00002, SLA: continuous.SLANone}},
		Segments: []continuous.SegmentState{{From: "a", To: "r1", MedianSeconds: 0.001, P99Seconds: 0.002, Samples: 57, SLA: continuous.SLANone,
			Loss:         &continuous.SegmentLoss{Sent: 60, Lost: 3, Ratio: 0.05, ForwardLost: &fwd, ReturnLost: &ret},
			DSCPRemarked: []string{"forward"}}}}
	var b bytes.Buffer
	if err := Render(&b, []continuous.EntryState{st}, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	dec := xml.NewDecoder(strings.NewReader(out))
	dec.Strict = true
	for {
		if _, err := dec.Token(); err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("not well-formed: %v\n%s", err, out)
			}
			break
		}
	}
	for _, want := range []string{`data-sla="none" data-loss-ratio="0.05"`, `p99 2.000 ms · loss 5.0% (2 fwd, 1 ret)`,
		`class="remarked" data-dscp-remarked="forward">DSCP RE-MARKED forward</text>`} {
		if !strings.Contains(out, want) {
			t.Errorf("drawing lacks %q:\n%s", want, out)
		}
	}
}
