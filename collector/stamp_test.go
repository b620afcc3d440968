package collector

import (
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

func intp(v int) *int    { return &v }
func boolp(v bool) *bool { return &v }

// A STAMP segment's loss and DSCP in the /probe answer: bounded labels
// (direction forward|return, where sent|at_reflector|returned), absent
// where not known, and no wait for a reflector that reports none.
func TestWriteProbeSTAMP(t *testing.T) {
	r := &prober.Result{Source: "a", Success: true, Probes: 5, HopsReached: 1,
		Hops: []prober.HopResult{{Name: "a"}, {Name: "r1", STAMP: true, Residence: prober.Seconds{Median: 2e-5, Max: 3e-5}}},
		Segments: []prober.SegmentResult{{From: "a", To: "r1", Samples: 5, RTT: prober.Seconds{Median: 0.001, Max: 0.001},
			Loss: &prober.LossResult{Sent: 6, Received: 5, Lost: 1, Ratio: 1.0 / 6, ByDirection: true,
				Forward: &prober.DirectionLoss{Lost: 0}, Return: &prober.DirectionLoss{Lost: 1, Ratio: 1.0 / 6}},
			DSCP: &prober.DSCPResult{Sent: 46, AtReflector: intp(46), Returned: intp(0), ForwardRemarked: boolp(false), ReturnRemarked: boolp(true)}}}}
	var e Exposition
	WriteProbe(&e, r, nil)
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	text := render(t, &e)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	for _, series := range []string{
		`subsegment_segment_packets_sent{from="a",to="r1"} 6`,
		`subsegment_segment_packets_lost{from="a",to="r1"} 1`,
		`subsegment_segment_one_way_lost_packets{direction="return",from="a",to="r1"} 1`,
		`subsegment_segment_one_way_lost_packets{direction="forward",from="a",to="r1"} 0`,
		`subsegment_segment_dscp_remarked{direction="return",from="a",to="r1"} 1`,
		`subsegment_segment_dscp_remarked{direction="forward",from="a",to="r1"} 0`,
		`subsegment_segment_dscp{from="a",to="r1",where="returned"} 0`,
		`subsegment_segment_dscp{from="a",to="r1",where="at_reflector"} 46`,
		`subsegment_segment_unknown_direction_lost_packets{from="a",to="r1"} 0`,
	} {
		if !strings.Contains(text, series+"\n") {
			t.Errorf("answer lacks %s:\n%s", series, text)
		}
	}
	if mfs["subsegment_hop_wait_seconds"] != nil {
		t.Errorf("a STAMP reflector got a wait:\n%s", text)
	}
	// Without counters and without the Class of Service TLV: only what is known.
	r.Segments[0].Loss = &prober.LossResult{Sent: 6, Received: 5, Lost: 1, Ratio: 1.0 / 6, Unknown: 1}
	r.Segments[0].DSCP = &prober.DSCPResult{Sent: 46, Returned: intp(46)}
	e = Exposition{}
	WriteProbe(&e, r, nil)
	text = render(t, &e)
	for _, absent := range []string{"subsegment_segment_one_way_lost_packets", "subsegment_segment_dscp_remarked", `where="at_reflector"`} {
		if strings.Contains(text, absent) {
			t.Errorf("%s without what it needs:\n%s", absent, text)
		}
	}
}
