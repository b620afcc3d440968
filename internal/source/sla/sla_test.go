package sla

import (
	"math"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

func chain(rtts ...float64) *prober.Result {
	names := []string{"a", "b", "c", "z"}
	r := &prober.Result{}
	for i, rtt := range rtts {
		seg := prober.SegmentResult{From: names[i], To: names[i+1], RTT: prober.Seconds{Median: rtt}}
		if rtt >= 0 {
			seg.Samples = 3
		}
		r.Segments = append(r.Segments, seg)
	}
	return r
}

var twentyOnBC = config.SLA{Default: config.Duration(100 * time.Millisecond),
	Segments: []config.SegmentSLA{{From: "b", To: "c", RTT: config.Duration(20 * time.Millisecond)}}}

func TestEvaluate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		r        *prober.Result
		sla      config.SLA
		exceeded []bool
		broken   []bool
	}{
		{"within", chain(0.001, 0.010, 0.001), twentyOnBC, []bool{false, false, false}, []bool{false, false, false}},
		{"own threshold", chain(0.001, 0.030, 0.001), twentyOnBC, []bool{false, true, false}, []bool{false, false, false}},
		{"default threshold", chain(0.150, 0.001, 0.001), twentyOnBC, []bool{true, false, false}, []bool{false, false, false}},
		{"broken segment", chain(0.001, -1, -1), twentyOnBC, []bool{false, true, true}, []bool{false, true, true}},
		{"no SLA", chain(5, 5, 5), config.SLA{}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs := Evaluate(tc.r, tc.sla)
			if len(vs) != len(tc.exceeded) {
				t.Fatalf("%d verdicts, want %d", len(vs), len(tc.exceeded))
			}
			for i, v := range vs {
				if v.Exceeded != tc.exceeded[i] || v.Broken != tc.broken[i] {
					t.Errorf("%s -> %s: exceeded %v broken %v, want %v %v", v.From, v.To, v.Exceeded, v.Broken, tc.exceeded[i], tc.broken[i])
				}
				if v.Broken && !math.IsInf(v.Ratio, 1) {
					t.Errorf("%s -> %s: broken with ratio %v", v.From, v.To, v.Ratio)
				}
			}
		})
	}
}

func TestAnnotation(t *testing.T) {
	for _, tc := range []struct {
		mode      config.InbandMode
		r         *prober.Result
		warmup    bool
		annotates bool
	}{
		{config.InbandNever, chain(0.001, 0.030, 0.001), false, false},
		{"", chain(0.001, 0.030, 0.001), false, false},
		{config.InbandAlways, chain(0.001, 0.030, 0.001), true, false},
		{config.InbandOnViolation, chain(0.001, 0.010, 0.001), false, false},
		{config.InbandOnViolation, chain(0.001, 0.030, 0.001), false, true},
		// Beyond a break no hop can answer: no extra probe.
		{config.InbandOnViolation, chain(0.001, -1, -1), false, false},
	} {
		warmup, after := Annotation(&config.Module{Inband: tc.mode, SLA: twentyOnBC})
		if warmup != tc.warmup || (after != nil && after(tc.r)) != tc.annotates {
			t.Errorf("inband %q: warmup %v, annotates %v; want %v, %v", tc.mode, warmup, after != nil && after(tc.r), tc.warmup, tc.annotates)
		}
	}
}

// Violated is "any verdict of Evaluate is exceeded", and costs no list.
func TestViolatedIsEvaluatesVerdict(t *testing.T) {
	for _, r := range []*prober.Result{chain(0.001, 0.010, 0.001), chain(0.001, 0.030, 0.001), chain(0.150, 0.001, 0.001), chain(0.001, -1, -1), chain()} {
		for _, s := range []config.SLA{twentyOnBC, {}} {
			want := false
			for _, v := range Evaluate(r, s) {
				want = want || v.Exceeded
			}
			if got := Violated(r, s); got != want {
				t.Errorf("Violated(%+v) = %v, Evaluate says %v", r.Segments, got, want)
			}
		}
	}
	r := chain(0.001, 0.010, 0.001)
	if n := testing.AllocsPerRun(100, func() { Violated(r, twentyOnBC) }); n != 0 {
		t.Errorf("Violated allocates %v times", n)
	}
}

func TestTracing(t *testing.T) {
	m := &config.Module{SLA: twentyOnBC, Trace: config.TraceOnViolation}
	tr := Tracing(m)
	if tr == nil || tr.When == nil {
		t.Fatal("on_violation: no predicate")
	}
	if tr.When(chain(0.001, 0.010, 0.001)) {
		t.Error("traced a chain within its SLAs")
	}
	if !tr.When(chain(0.001, 0.030, 0.001)) {
		t.Error("did not trace a segment over its SLA")
	}
	if tr.When(chain(0.001, -1, -1)) {
		t.Error("traced a broken chain: its segments have no rtt to explain")
	}
	if tr := Tracing(&config.Module{Trace: config.TraceAlways}); tr == nil || tr.When != nil {
		t.Errorf("always: %+v", tr)
	}
	if Tracing(&config.Module{Trace: config.TraceNever}) != nil {
		t.Error("never traced")
	}
}
