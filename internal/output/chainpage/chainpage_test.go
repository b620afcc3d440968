package chainpage

import (
	"bytes"
	"encoding/xml"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/continuous"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

func TestRender(t *testing.T) {
	now := time.Now()
	ok := now.Add(-time.Second)
	states := []continuous.EntryState{
		{
			Target: "b:9000", Module: "default", LastSuccess: &ok,
			Hops: []continuous.HopState{
				{Name: "a", ResidenceSeconds: 0.00004, WaitSeconds: ptr(0.00002), SLA: continuous.SLANone},
				{Name: "b", ResidenceSeconds: 0.0001, SLA: continuous.SLANone},
				{Name: "c", ResidenceSeconds: 0.0031, WaitSeconds: ptr(0), SLASeconds: 0.002, SLA: continuous.SLAExceeded, Context: map[string]float64{"load1": 7.2}},
				{Name: "r1", ResidenceSeconds: 0.00005, STAMP: true, SLA: continuous.SLANone}, // a STAMP reflector: no wait
			},
			Segments: []continuous.SegmentState{
				{From: "a", To: "b", MedianSeconds: 0.00005, P99Seconds: 0.0001, Samples: 60, SLASeconds: 0.005, SLA: continuous.SLAOk},
				{From: "b", To: "c", MedianSeconds: 0.0202, P99Seconds: 0.0231, Samples: 60, SLASeconds: 0.01, SLA: continuous.SLAExceeded},
			},
		},
		{
			Target: `http://edge/<script>alert(1)</script>`, Module: "web",
			Failure:  &prober.FailureResult{From: "h1", To: "n1", Reason: "http_status", Message: "503"},
			Hops:     []continuous.HopState{{Name: "a", SLA: continuous.SLANone}, {Name: "h1", HTTPHeader: true, ResolutionSeconds: 1e-6, SLA: continuous.SLANone}},
			Segments: []continuous.SegmentState{{From: "a", To: "h1", MedianSeconds: 0.0001, Samples: 3, SLA: continuous.SLANone}, {From: "h1", To: "n1", SLA: continuous.SLANone, Broken: "http_status", ResolutionSeconds: 0.001}},
		},
		{
			// Probed every 5 minutes, none in the window: no data, grey.
			Target: "x:9000", Module: "rare", LastSuccess: &ok, IntervalSeconds: 300, WindowSeconds: 600,
			Hops:     []continuous.HopState{{Name: "a", SLA: continuous.SLANone}, {Name: "x", SLASeconds: 0.001, SLA: continuous.SLANoData}},
			Segments: []continuous.SegmentState{{From: "a", To: "x", SLASeconds: 0.01, SLA: continuous.SLANoData}},
		},
	}
	var b bytes.Buffer
	if err := Render(&b, states, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	// Well-formed markup (SVG is XML): every element closed, every value escaped.
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
	for _, want := range []string{
		`data-from="b" data-to="c" data-rtt-seconds="0.0202" data-p99-seconds="0.0231" data-sla="exceeded"`,
		`stroke="#c62828" stroke-width="4"`,
		`data-from="a" data-to="b" data-rtt-seconds="5e-05" data-p99-seconds="0.0001" data-sla="ok"`,
		`median 20.200 ms`, `p99 23.100 ms · over SLA 10.000 ms`,
		`data-hop="c" data-sla="exceeded"`, `load1 7.2`,
		`residence 3.100 ms · wait 0.000 ms`,
		`residence 0.050 ms<`,
		`broken at h1 → n1 (http_status)`, `BROKEN: http_status`, `stroke-dasharray="6 4"`,
		`HTTP proxy, stamps of 0.001 ms`,
		`data-hop="n1"`, // the far end of a broken segment is drawn too
		`working, last probe 1s ago`,
		`no probe crossed it in the last 10m0s`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("drawing lacks %q", want)
		}
	}
	if !regexp.MustCompile(`data-to="x" [^>]*data-sla="no_data">\n<line [^>]*stroke="#616161"`).MatchString(out) {
		t.Errorf("a segment without data is not drawn grey as no_data:\n%s", out)
	}
	if strings.Contains(out, "<script>alert") {
		t.Errorf("a target was not escaped:\n%s", out)
	}
}

func TestRenderWithoutChains(t *testing.T) {
	var b bytes.Buffer
	if err := Render(&b, nil, time.Now()); err != nil || !strings.Contains(b.String(), "No chain is probed continuously") {
		t.Errorf("%v\n%s", err, b.String())
	}
}

func ptr(v float64) *float64 { return &v }
