package collector

import (
	"bytes"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// normalize parses a text exposition and renders it again with the
// samples of each family in label order, so that two expositions of the
// same series compare equal whatever order they were written in.
func normalize(t *testing.T, text string) string {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, text)
	}
	names := make([]string, 0, len(mfs))
	for n := range mfs {
		names = append(names, n)
	}
	slices.Sort(names)
	var b bytes.Buffer
	for _, n := range names {
		mf := mfs[n]
		for _, m := range mf.Metric {
			slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
		}
		slices.SortFunc(mf.Metric, func(a, b *dto.Metric) int { return strings.Compare(a.String(), b.String()) })
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func render(t *testing.T, e *Exposition) string {
	t.Helper()
	var b bytes.Buffer
	e.WriteTo(&b)
	return b.String()
}

var (
	testPlain  = mustFamily("test_plain", "A gauge without labels.")
	testLabels = mustFamily("test_labels", `Help with a backslash \ and a
newline.`, "b", "a")
)

func TestExpositionMatchesRegistry(t *testing.T) {
	values := []float64{0, 1, -1, 0.25, 1e-7, 123456789.123, math.Inf(1), math.Inf(-1), math.NaN()}
	labels := [][2]string{{"z", "a"}, {`quo"te`, `back\slash`}, {"new\nline", "ünïcödé"}, {"", "empty"}}

	var e Exposition
	reg := prometheus.NewPedanticRegistry()
	plain := prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_plain", Help: testPlain.help})
	vec := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "test_labels", Help: testLabels.help}, []string{"b", "a"})
	reg.MustRegister(plain, vec)
	plain.Set(42)
	e.Gauge(testPlain, 42)
	for i, l := range labels {
		v := values[i%len(values)]
		if i == len(labels)-1 {
			v = values[len(values)-1]
		}
		vec.WithLabelValues(l[0], l[1]).Set(v)
		e.Gauge(testLabels, v, l[0], l[1])
	}
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&want, mf); err != nil {
			t.Fatal(err)
		}
	}
	got := render(t, &e)
	if normalize(t, got) != normalize(t, want.String()) {
		t.Errorf("exposition differs from client_golang's\ngot:\n%s\nwant:\n%s", got, want.String())
	}
	// Families in name order, samples of one family in the order added.
	if strings.Index(got, "test_labels") > strings.Index(got, "test_plain") {
		t.Errorf("families not in name order:\n%s", got)
	}
	if strings.Index(got, `b="z"`) > strings.Index(got, `b="quo\"te"`) {
		t.Errorf("samples not in the order added:\n%s", got)
	}
	// Label pairs by name, as client_golang writes them.
	if !strings.Contains(got, `test_labels{a="a",b="z"} 0`) {
		t.Errorf("label pairs not in name order:\n%s", got)
	}
	for _, v := range values {
		var one Exposition
		one.Gauge(testPlain, v)
		var reference bytes.Buffer
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_plain", Help: testPlain.help})
		g.Set(v)
		r := prometheus.NewRegistry()
		r.MustRegister(g)
		mf, _ := r.Gather()
		if _, err := expfmt.MetricFamilyToText(&reference, mf[0]); err != nil {
			t.Fatal(err)
		}
		if got := render(t, &one); got != reference.String() {
			t.Errorf("value %v: got %q, client_golang writes %q", v, got, reference.String())
		}
	}
}

func TestExpositionRefusesWhatARegistryRefuses(t *testing.T) {
	cases := []struct {
		name   string
		add    func(e *Exposition)
		errors int
		want   string
		keeps  int
	}{
		{"invalid UTF-8", func(e *Exposition) { e.Gauge(testLabels, 1, "z\xff\"}", "a"); e.Gauge(testPlain, 1) }, 1, `value "z\xff\"}" of label b is not valid UTF-8`, 1},
		{"too few label values", func(e *Exposition) { e.Gauge(testLabels, 1, "only one") }, 1, "1 label values for 2 labels", 0},
		{"too many label values", func(e *Exposition) { e.Gauge(testPlain, 1, "x") }, 1, "1 label values for 0 labels", 0},
		{"a series twice", func(e *Exposition) {
			e.Gauge(testLabels, 1, "x", "y")
			e.Gauge(testLabels, 2, "x", "y")
			e.Gauge(testLabels, 3, "x", "y2")
			e.Gauge(testLabels, 4, "x", "y")
		}, 2, `test_labels{a="y",b="x"} appears twice`, 2},
		{"same values, other family", func(e *Exposition) { e.Gauge(testPlain, 1); e.Gauge(mustFamily("test_other", "x"), 1) }, 0, "", 2},
		{"a failure from outside", func(e *Exposition) { e.Fail(errString("no family")) }, 1, "no family", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			counted := 0
			e := Exposition{OnError: func() { counted++ }}
			c.add(&e)
			err := e.Err()
			if (err != nil) != (c.errors > 0) || err != nil && !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
			if counted != c.errors {
				t.Errorf("%d errors counted, want %d", counted, c.errors)
			}
			out := render(t, &e)
			normalize(t, out)
			if n := strings.Count(out, "\n") - 2*strings.Count(out, "# TYPE"); n != c.keeps {
				t.Errorf("%d samples written, want %d:\n%s", n, c.keeps, out)
			}
		})
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func TestNewFamilyRefusesBadNames(t *testing.T) {
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"", nil}, {"1abc", nil}, {"a-b", nil}, {"ok", []string{"__reserved"}}, {"ok", []string{"a:b"}},
		{"ok", []string{"x", "x"}}, {"ok", []string{""}}, {"ok", []string{"ü"}},
	} {
		if _, err := NewFamily(c.name, "h", c.labels...); err == nil {
			t.Errorf("NewFamily(%q, %q) accepted", c.name, c.labels)
		}
	}
	if _, err := NewFamily("a:b_c1", "h", "_x", "y1"); err != nil {
		t.Errorf("valid family refused: %v", err)
	}
}

func BenchmarkExposition(b *testing.B) {
	seg := mustFamily("bench_segment_rtt_seconds", "h", "from", "to")
	var buf bytes.Buffer
	hops := []string{"source-host.example", "b", "c", "d", "e", "f", "g", "h", "z"}
	b.ReportAllocs()
	for b.Loop() {
		var e Exposition
		for i := range 24 {
			e.Gauge(seg, float64(i)*1e-4, hops[i%len(hops)], hops[(i+1)%len(hops)]+hops[i/len(hops)])
		}
		if e.Err() == nil {
			buf.Reset()
			e.WriteTo(&buf)
		}
	}
}
