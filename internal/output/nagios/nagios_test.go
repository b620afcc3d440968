package nagios

import (
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/snmp"
)

// The guidelines' examples: what alerts for each range.
func TestRangeGuidelineExamples(t *testing.T) {
	for _, tc := range []struct {
		spec   string
		alerts []float64
		quiet  []float64
		perf   string
	}{
		{"10", []float64{-1, 10.001, 11, 100}, []float64{0, 5, 10}, "10"},
		{"10:", []float64{-1, 0, 9.99}, []float64{10, 11, 1e9}, "10:"},
		{"~:10", []float64{10.001, 11}, []float64{-1e9, -1, 0, 10}, "~:10"},
		{"10:20", []float64{9.99, 20.001, 0}, []float64{10, 15, 20}, "10:20"},
		{"@10:20", []float64{10, 15, 20}, []float64{9.99, 20.001, 0}, "@10:20"},
		{"20ms", []float64{21}, []float64{20}, "20"},
		{"0.5s", []float64{501}, []float64{500}, "500"},
		{"250us", []float64{0.26}, []float64{0.25}, "0.25"},
		{"5:0.01s", []float64{4, 11}, []float64{5, 10}, "5:10"},
		{"@~:2", []float64{-5, 2}, []float64{2.1}, "@~:2"},
	} {
		r, err := ParseRange(tc.spec)
		if err != nil {
			t.Errorf("ParseRange(%q): %v", tc.spec, err)
			continue
		}
		for _, v := range tc.alerts {
			if !r.Alert(v) {
				t.Errorf("range %q: %v should alert", tc.spec, v)
			}
		}
		for _, v := range tc.quiet {
			if r.Alert(v) {
				t.Errorf("range %q: %v should not alert", tc.spec, v)
			}
		}
		if got := r.Perfdata(); got != tc.perf {
			t.Errorf("range %q perfdata %q, want %q", tc.spec, got, tc.perf)
		}
	}
}

func TestRangeMalformed(t *testing.T) {
	for _, spec := range []string{"", "abc", ":", "@", "10:5", "~", "10:abc", "1O", "10ns", "NaN", "Inf", "10:20:30", "@:"} {
		if r, err := ParseRange(spec); err == nil {
			t.Errorf("ParseRange(%q) = %+v, want an error", spec, r)
		}
	}
}

func TestParseSegment(t *testing.T) {
	from, to, w, c, err := ParseSegment("b:c=20,50ms")
	if err != nil || from != "b" || to != "c" || w.Perfdata() != "20" || c.Perfdata() != "50" {
		t.Errorf("ParseSegment: %q %q %v %v %v", from, to, w, c, err)
	}
	if _, _, w, c, err := ParseSegment("b:c=,50"); err != nil || w.Defined() || !c.Defined() {
		t.Errorf("empty warning: %v %v %v", w, c, err)
	}
	for _, bad := range []string{"b-c=20,50", "b:c", "b:c=20", ":c=1,2", "b:c=x,1", "b:c:d=1,2", "b:c d=1,2", "b:=1,2"} {
		if _, _, _, _, err := ParseSegment(bad); err == nil {
			t.Errorf("ParseSegment(%q) accepted", bad)
		}
	}
}

func result(rtts map[[2]string]float64, order ...[2]string) *prober.Result {
	r := &prober.Result{Source: "a", Success: true, Probes: 3, HopsReached: len(order)}
	for i, seg := range order {
		v := rtts[seg]
		r.Segments = append(r.Segments, prober.SegmentResult{From: seg[0], To: seg[1], Samples: 3, RTT: prober.Seconds{Min: v, Median: v, Max: v}, Slowest: false})
		if i == 0 {
			r.Hops = append(r.Hops, prober.HopResult{Name: seg[0], Residence: prober.Seconds{Median: 20e-6, Max: 30e-6}})
		}
		r.Hops = append(r.Hops, prober.HopResult{Name: seg[1], Residence: prober.Seconds{Median: 10e-6, Max: 15e-6}})
	}
	return r
}

var (
	ab, bc, cz = [2]string{"a", "b"}, [2]string{"b", "c"}, [2]string{"c", "z"}
	lineRE     = regexp.MustCompile(`^SUBSEGMENT (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+( \| ('[^']+'=[0-9.]+(ms;[^;]*;[^;]*;0;|%;;;0;100) ?)+)?$`)
)

func TestEvaluate(t *testing.T) {
	w, _ := ParseRange("20")
	c, _ := ParseRange("50")
	bcw, _ := ParseRange("5")
	seg := map[[2]string][2]Range{bc: {bcw, {}}}
	typo := map[[2]string][2]Range{{"b", "x"}: {bcw, {}}, bc: {bcw, {}}}
	fine := result(map[[2]string]float64{ab: 0.001, bc: 0.010, cz: 0.002}, ab, bc, cz)
	broken := result(map[[2]string]float64{ab: 0.001}, ab)
	broken.Success, broken.Failure = false, &prober.FailureResult{From: "b", To: "c", Reason: "refused", Message: "connection refused"}
	for _, tc := range []struct {
		name  string
		r     *prober.Result
		t     Thresholds
		state State
		first string
		perf  bool // the output carries the whole chain's perfdata
	}{
		{"all fine", fine, Thresholds{Warn: w, Crit: c}, OK, "SUBSEGMENT OK - ", true},
		{"warning", result(map[[2]string]float64{ab: 0.001, bc: 0.030, cz: 0.002}, ab, bc, cz), Thresholds{Warn: w, Crit: c}, Warning, "SUBSEGMENT WARNING - b -> c rtt 30.000ms (warning: over 20ms)", true},
		{"critical beats warning", result(map[[2]string]float64{ab: 0.025, bc: 0.060, cz: 0.002}, ab, bc, cz), Thresholds{Warn: w, Crit: c}, Critical, "SUBSEGMENT CRITICAL - b -> c rtt 60.000ms (critical: over 50ms)", true},
		{"per-segment override", fine, Thresholds{Warn: w, Crit: c, Segments: seg}, Warning, "SUBSEGMENT WARNING - b -> c rtt 10.000ms (warning: over 5ms)", true},
		{"no thresholds", result(map[[2]string]float64{ab: 0.5, bc: 1, cz: 2}, ab, bc, cz), Thresholds{}, OK, "SUBSEGMENT OK - ", true},
		{"misspelt segment", fine, Thresholds{Segments: typo}, Unknown,
			"SUBSEGMENT UNKNOWN - --segment b:x: no such segment in the chain (its segments: a -> b, b -> c, c -> z); fix the hop names or drop the override", false},
		{"broken chain is judged on its failure", broken, Thresholds{Segments: typo}, Critical, "SUBSEGMENT CRITICAL - chain broken at b -> c (refused)", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state, out := Evaluate(tc.r, tc.t, nil)
			first := strings.SplitN(out, "\n", 2)[0]
			if state != tc.state || !strings.HasPrefix(first, tc.first) {
				t.Errorf("state %v, first line %q; want %v, %q", state, first, tc.state, tc.first)
			}
			if !lineRE.MatchString(first) {
				t.Errorf("first line does not follow the guidelines: %q", first)
			}
			if tc.perf && (!strings.Contains(out, "'b_c_rtt'=") || !strings.Contains(out, "'b_res'=") || strings.Count(out, "\n") != 4) {
				t.Errorf("output:\n%s", out)
			}
		})
	}
}

func TestEvaluateBrokenChainAndContext(t *testing.T) {
	r := result(map[[2]string]float64{ab: 0.001, bc: 0.010}, ab, bc)
	r.Success = false
	r.Segments = append(r.Segments, prober.SegmentResult{From: "c", To: "z"})
	r.Failure = &prober.FailureResult{From: "c", To: "z", Reason: "refused", Message: "c cannot reach z:9000:\nconnection refused | x"}
	ctx := &snmp.Context{
		Violations: []snmp.Violation{{From: "c", To: "z", Hops: []string{"z"}}},
		Hops:       []snmp.HopResult{{Hop: "z", Source: snmp.SourceSNMP, Values: []snmp.Value{{Name: "load1", Value: 7.2000001}}}},
	}
	state, out := Evaluate(r, Thresholds{}, ctx)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if state != Critical || !strings.HasPrefix(lines[0], "SUBSEGMENT CRITICAL - chain broken at c -> z (refused): c cannot reach z:9000: connection refused / x | ") {
		t.Errorf("state %v, first line %q", state, lines[0])
	}
	if strings.Count(lines[0], "|") != 1 {
		t.Errorf("the message's pipe leaked into the status line: %q", lines[0])
	}
	if !strings.Contains(out, "c -> z: no probe crossed it") || !strings.Contains(out, "SLA context for c -> z: z (snmp) load1=7.2") {
		t.Errorf("long text:\n%s", out)
	}
}

func TestPerfdataLabelsUniqueIn19Chars(t *testing.T) {
	long := func(s string) string { return "frankfurt-relay-" + s }
	r := result(map[[2]string]float64{}, [2]string{long("01"), long("02")}, [2]string{long("02"), long("03")})
	_, out := Evaluate(r, Thresholds{}, nil)
	perf := strings.SplitN(strings.SplitN(out, "\n", 2)[0], " | ", 2)[1]
	seen := map[string]bool{}
	for _, item := range strings.Split(perf, " ") {
		label := strings.Trim(strings.SplitN(item, "=", 2)[0], "'")
		k := label[:min(19, len(label))]
		if seen[k] {
			t.Errorf("labels clash in their first 19 characters: %q in %s", k, perf)
		}
		seen[k] = true
	}
	if got := uniqueLabels([]string{"a_b_rtt", "b_c_rtt"}); got[0] != "a_b_rtt" {
		t.Errorf("short labels changed without a clash: %v", got)
	}
}

func TestDescribe(t *testing.T) {
	for spec, want := range map[string]string{"50": "over 50ms", "10:": "under 10ms", "10:20": "outside 10:20ms", "@10:20": "inside 10:20ms", "~:5": "over 5ms"} {
		r, _ := ParseRange(spec)
		if got := r.Describe(); got != want {
			t.Errorf("%q: %q, want %q", spec, got, want)
		}
	}
	_ = math.Inf
	_ = time.Second
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"10", "10:", "~:10", "10:20", "@10:20", "0.5s", "250us", "@~:2ms", ":", "abc"} {
		f.Add(s, 15.0)
	}
	f.Fuzz(func(t *testing.T, spec string, v float64) {
		r, err := ParseRange(spec)
		if err != nil {
			return
		}
		// What perfdata says must be the same range.
		r2, err := ParseRange(r.Perfdata())
		if err != nil {
			t.Fatalf("perfdata %q of %q does not parse: %v", r.Perfdata(), spec, err)
		}
		if !math.IsNaN(v) && r.Alert(v) != r2.Alert(v) {
			t.Fatalf("%q and its perfdata %q disagree on %v", spec, r.Perfdata(), v)
		}
		_ = r.Describe()
	})
}

func FuzzParseSegment(f *testing.F) {
	for _, s := range []string{"b:c=20,50", "b:c=,50ms", "b:c=@1:2,~:3", "b:c:d=1,2", ":=,", "b:c=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		from, to, w, c, err := ParseSegment(spec)
		if err != nil {
			return
		}
		// An accepted override names two real hop names and ranges that
		// survive their perfdata form.
		if peer.ValidateName(from) != nil || peer.ValidateName(to) != nil {
			t.Fatalf("%q accepted with hop names %q, %q", spec, from, to)
		}
		for _, r := range []Range{w, c} {
			if r.Defined() {
				if _, err := ParseRange(r.Perfdata()); err != nil {
					t.Fatalf("%q: perfdata %q does not parse: %v", spec, r.Perfdata(), err)
				}
			}
		}
	})
}
