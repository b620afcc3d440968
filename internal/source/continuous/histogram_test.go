package continuous

import (
	"bytes"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"

	"github.com/subsegment/subsegment_exporter/internal/config"
)

// theirs is client_golang's own histogram with the options every
// continuous histogram had before it kept its own counts.
func theirs(buckets []float64) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "test_seconds", Help: "A test histogram.", ConstLabels: prometheus.Labels{"target": "t", "from": "a", "to": "b"}, Buckets: buckets,
		NativeHistogramBucketFactor:     nativeBucketFactor,
		NativeHistogramMaxBucketNumber:  nativeMaxBuckets,
		NativeHistogramMinResetDuration: nativeMinReset,
	})
}

// ours is the same series as a continuous histogram.
func ours(buckets []float64, now func() time.Time) *histogram {
	desc := prometheus.NewDesc("test_seconds", "A test histogram.", []string{"target", "from", "to"}, nil)
	return newHistogram(desc, prometheus.MakeLabelPairs(desc, []string{"t", "a", "b"}), buckets, &sync.Mutex{}, now)
}

// single is a collector of one metric.
type single struct{ m prometheus.Metric }

func (s single) Describe(ch chan<- *prometheus.Desc) { ch <- s.m.Desc() }
func (s single) Collect(ch chan<- prometheus.Metric) { ch <- s.m }

// exposition gathers m and encodes it in format, its created timestamp
// removed (each histogram has its own).
func exposition(t *testing.T, m prometheus.Metric, format expfmt.Format) []byte {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(single{m})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, format)
	for _, mf := range mfs {
		for _, x := range mf.Metric {
			x.Histogram.CreatedTimestamp = nil
		}
		if err := enc.Encode(mf); err != nil {
			t.Fatalf("encode: %v", err)
		}
	}
	return buf.Bytes()
}

// sameExposition checks that a histogram of ours and one of theirs give
// the same text and protobuf expositions, which parse.
func sameExposition(t *testing.T, o *histogram, c prometheus.Histogram) {
	t.Helper()
	for _, f := range []expfmt.Format{expfmt.NewFormat(expfmt.TypeTextPlain), expfmt.NewFormat(expfmt.TypeProtoDelim), expfmt.NewFormat(expfmt.TypeOpenMetrics)} {
		got, want := exposition(t, o, f), exposition(t, c, f)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s exposition differs:\nours:\n%.2000s\nclient_golang:\n%.2000s", f, got, want)
		}
		if f == expfmt.NewFormat(expfmt.TypeOpenMetrics) {
			continue // no decoder for it; the text one is parsed below
		}
		dec := expfmt.NewDecoder(bytes.NewReader(got), f)
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err != nil {
			t.Fatalf("%s exposition does not parse: %v", f, err)
		}
		if f == expfmt.NewFormat(expfmt.TypeProtoDelim) {
			var direct dto.Metric
			if err := c.Write(&direct); err != nil {
				t.Fatal(err)
			}
			direct.Histogram.CreatedTimestamp = nil
			if !proto.Equal(mf.Metric[0], &direct) {
				t.Fatalf("decoded %v, client_golang wrote %v", mf.Metric[0], &direct)
			}
		}
	}
}

func TestHistogramIsClientGolangs(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	logUniform := func(lo, hi float64) func() float64 {
		return func() float64 { return lo * math.Pow(hi/lo, rng.Float64()) }
	}
	defaults := config.DefaultBuckets()
	// values on the native buckets' boundaries, and next to them
	var edges []float64
	for s := 1; s <= 3; s++ {
		for _, b := range nativeBounds[s] {
			for _, e := range []int{-20, -10, -1, 0, 3} {
				v := math.Ldexp(b, e)
				edges = append(edges, v, math.Nextafter(v, 0), math.Nextafter(v, 1))
			}
		}
	}
	for _, tc := range []struct {
		name    string
		buckets []float64
		n       int
		value   func(i int) float64
	}{
		{"an rtt around 200 µs", defaults, 5000, func(int) float64 { return 200e-6 * (1 + 0.3*rng.NormFloat64()*0.3) }},
		{"spread over the default buckets", defaults, 5000, func(int) float64 { return logUniform(20e-6, 20)() }},
		{"native only", nil, 3000, func(int) float64 { return logUniform(1e-6, 1)() }},
		{"own buckets", []float64{0.001, 0.005, 0.01, 0.05}, 2000, func(int) float64 { return logUniform(1e-4, 1)() }},
		{"on the classic bounds", defaults, len(defaults) * 3, func(i int) float64 { return defaults[i%len(defaults)] }},
		{"on the native bounds", defaults, len(edges), func(i int) float64 { return edges[i] }},
		{"zeros", defaults, 50, func(i int) float64 { return float64(i%3) * 1e-3 }},
		// Over 160 native buckets within the first hour: the buckets
		// double in width (the schema goes down) until they fit.
		{"over the bucket limit", defaults, 20000, func(int) float64 { return logUniform(1e-9, 1e4)() }},
		{"far over the bucket limit", nil, 20000, func(int) float64 { return logUniform(1e-300, 1e300)() }},
		{"infinities", defaults, 10, func(i int) float64 { return []float64{math.Inf(1), math.MaxFloat64, 1}[i%3] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, c := ours(tc.buckets, time.Now), theirs(tc.buckets)
			for i := range tc.n {
				v := tc.value(i)
				o.mu.Lock()
				o.observe(v, time.Now())
				o.mu.Unlock()
				c.Observe(v)
				if i == tc.n/2 {
					sameExposition(t, o, c) // a scrape in between changes nothing
				}
			}
			sameExposition(t, o, c)
		})
	}
}

// An hour after the buckets last doubled in width, the counts start
// again (client_golang does it with a timer); and the limit reached an
// hour or more after they last started makes them start again with the
// observation that reached it.
func TestHistogramResetsAnHourAfterItsWidthDoubled(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	h := ours(nil, clock)
	observe := func(v float64) {
		h.mu.Lock()
		h.observe(v, now)
		h.mu.Unlock()
	}
	spread := func(n int) {
		for i := range n {
			observe(math.Pow(10, -9+13*float64(i)/float64(n)))
		}
	}
	spread(400)
	if h.schema >= nativeSchema || h.count != 400 || h.resetAt.IsZero() {
		t.Fatalf("after 400 spread observations: schema %d, count %d, reset at %v", h.schema, h.count, h.resetAt)
	}
	now = now.Add(59 * time.Minute)
	observe(1)
	if h.count != 401 {
		t.Fatalf("reset before the hour: count %d", h.count)
	}
	now = now.Add(time.Minute)
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Histogram.GetSampleCount() != 0 || h.schema != nativeSchema || !m.Histogram.GetCreatedTimestamp().AsTime().Equal(now) {
		t.Fatalf("an hour after the width doubled: %v, schema %d", m.Histogram, h.schema)
	}
	// Past the limit again two hours later: the counts start again with
	// the observation that reached it (161 buckets: the 161st value).
	now = now.Add(2 * time.Hour)
	for i := range 161 {
		observe(math.Ldexp(1, i/8-80) * nativeBounds[3][i%8] * 1.01)
	}
	if h.count != 1 || h.populated != 1 || !h.created.Equal(now) {
		t.Errorf("past the limit two hours after the last reset: count %d (a reset keeps the observation that reached it), %d buckets, created %v", h.count, h.populated, h.created)
	}
}

// A scrape writes while the entry's probe observes: both hold the entry's
// lock (go test -race).
func TestHistogramWritesWhileObserving(t *testing.T) {
	h := ours(config.DefaultBuckets(), time.Now)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20000 {
			h.mu.Lock()
			h.observe(float64(i%1000)*1e-5, time.Now())
			h.mu.Unlock()
		}
	}()
	for range 200 {
		var m dto.Metric
		if err := h.Write(&m); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	var m dto.Metric
	_ = h.Write(&m)
	if m.Histogram.GetSampleCount() != 20000 {
		t.Errorf("count %d", m.Histogram.GetSampleCount())
	}
}

func TestFrexpIsMathFrexp(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, x := range []float64{1, 0.5, 2, math.MaxFloat64, math.SmallestNonzeroFloat64, 2.2250738585072014e-308, 1e-310, 3e-9, 0.1} {
		f, e := frexp(x)
		wf, we := math.Frexp(x)
		if f != wf || e != we {
			t.Errorf("frexp(%v) = %v, %d; math.Frexp %v, %d", x, f, e, wf, we)
		}
	}
	for range 100000 {
		x := math.Float64frombits(rng.Uint64() &^ (1 << 63))
		if math.IsNaN(x) || math.IsInf(x, 0) {
			continue
		}
		f, e := frexp(x)
		if wf, we := math.Frexp(x); f != wf || e != we {
			t.Fatalf("frexp(%v) = %v, %d; math.Frexp %v, %d", x, f, e, wf, we)
		}
	}
}
