package wirefuzz

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/subsegment/subsegment_exporter/collector"
	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/output/nagios"
	"github.com/subsegment/subsegment_exporter/internal/output/report"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// firstHop answers every request on conn with reply, its sequence number
// set to the request's so that the fuzzer's bytes reach the records.
func firstHop(conn net.Conn, reply []byte) {
	defer conn.Close()
	r := frame.NewReader(conn, frame.DefaultMaxFrameBytes)
	defer r.Release()
	for i := 0; i < 8; i++ {
		if err := r.Fill(); err != nil {
			return
		}
		req, err := r.Next()
		if err != nil || req == nil {
			return
		}
		out := bytes.Clone(reply)
		if len(out) >= frame.HeaderLen+8 && len(req) >= frame.HeaderLen+8 {
			copy(out[frame.HeaderLen:frame.HeaderLen+8], req[frame.HeaderLen:frame.HeaderLen+8])
		}
		if _, err := conn.Write(out); err != nil {
			return
		}
		// Anything but exactly one frame: close, so the source sees the
		// end at once instead of waiting out its timeout for the rest.
		if h, err := frame.ParseHeader(out, frame.DefaultMaxFrameBytes); err != nil || h.FrameLen() != len(out) {
			return
		}
	}
}

// probeWith runs a real probe run whose first hop answers with reply.
func probeWith(reply []byte) *prober.Result {
	o := prober.Options{Target: "hop.example:9000", Source: "a", Count: 2, Interval: 0, Timeout: 50 * time.Millisecond,
		Dial: func(ctx context.Context, _ string) (net.Conn, error) {
			client, server := net.Pipe()
			go firstHop(server, reply)
			return client, nil
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return prober.Run(ctx, o)
}

func validReply(names ...string) []byte {
	var recs []byte
	for i, name := range names {
		// Within what the source can measure through a pipe: a hop's
		// claim beyond the tolerance of the segment arithmetic is refused.
		r := frame.HopRecord{ID: uint64(i + 1), Name: name, Forward: 3 * time.Microsecond, Downstream: 10 * time.Microsecond, Return: 2 * time.Microsecond,
			WaitForward: time.Microsecond, Flags: frame.RecKernelIn | frame.RecKernelReply | frame.RecTCPInfo | frame.RecTCPInfoUp}
		if i == len(names)-1 {
			r.Flags, r.Downstream, r.Return = frame.RecEnd|frame.RecKernelIn, 0, 0
		}
		recs = frame.AppendHop(recs, &r)
	}
	return frame.AppendReply(nil, frame.KindProbeReply, frame.ProbeHeader{}, nil, recs, len(names), nil)
}

// claimingReply is a valid reply whose hop b claims to have spent claim
// inside itself, each way, and the end host z as long in all.
func claimingReply(claim time.Duration) []byte {
	b := frame.HopRecord{ID: 1, Name: "b", Forward: claim, Downstream: 40 * time.Microsecond, Return: claim, Flags: frame.RecKernelIn | frame.RecKernelReply}
	z := frame.HopRecord{ID: 2, Name: "z", Forward: 2 * claim, Flags: frame.RecEnd | frame.RecKernelIn}
	recs := frame.AppendHop(frame.AppendHop(nil, &b), &z)
	return frame.AppendReply(nil, frame.KindProbeReply, frame.ProbeHeader{}, nil, recs, 2, nil)
}

// skewedReply is a valid reply of b and c that both say their clocks
// are synchronised within 100 µs, while c's wall clock reads skew after
// b's.
func skewedReply(skew time.Duration) []byte {
	base := int64(1_800_000_000) * int64(time.Second)
	b := frame.HopRecord{ID: 1, Name: "b", Forward: 3 * time.Microsecond, Downstream: 10 * time.Microsecond, Return: 2 * time.Microsecond,
		WallIn: base, MaxErrorMicros: 100, Flags: frame.RecSynced}
	c := frame.HopRecord{ID: 2, Name: "c", Forward: 2 * time.Microsecond, WallIn: base + int64(skew), MaxErrorMicros: 100, Flags: frame.RecEnd | frame.RecSynced}
	recs := frame.AppendHop(frame.AppendHop(nil, &b), &c)
	return frame.AppendReply(nil, frame.KindProbeReply, frame.ProbeHeader{}, nil, recs, 2, nil)
}

func errorReply() []byte {
	h := frame.HopRecord{ID: 1, Name: "b", Forward: time.Millisecond}
	recs := frame.AppendHop(nil, &h)
	recs = frame.AppendError(recs, &frame.ErrorRecord{ID: 1, Name: "b", Peer: "10.0.0.3:9000", Reason: peer.ReasonRefused, Message: "b cannot reach 10.0.0.3:9000"})
	return frame.AppendReply(nil, frame.KindProbeReply, frame.ProbeHeader{}, nil, recs, 2, nil)
}

// readable says whether text is what a person may be shown: UTF-8, no
// control characters but newlines (and tabs where allowed).
func readable(s string, tabs bool) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 && r != '\n' && (!tabs || r != '\t') || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return false
		}
	}
	return true
}

// FuzzReplyToEveryOutput: whatever a first hop sends, the source neither
// panics nor lets it corrupt an output. The /probe text exposition parses,
// and the plugin output, probe table and JSON are readable text.
func FuzzReplyToEveryOutput(f *testing.F) {
	f.Add(validReply("b", "c", "z"))
	f.Add(validReply("same", "same", "same"))
	f.Add(validReply("z"))
	f.Add(errorReply())
	f.Add(bytes.ReplaceAll(validReply("b", "zzzz"), []byte("zzzz"), []byte("z\xff\"}")))
	f.Add(frame.AppendErrorFrame(nil, &frame.ErrorRecord{Name: "b", Peer: "a", Reason: peer.ReasonAuth, Message: "no"}, nil))
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
	f.Add(claimingReply(time.Second))    // negative segments
	f.Add(claimingReply(20 * time.Hour)) // a residence of 40 hours
	f.Add(skewedReply(48 * time.Hour))   // a one-way delay of two days
	f.Add(skewedReply(-time.Second))     // a negative one
	module := &config.Module{SLA: config.SLA{Default: config.Duration(time.Millisecond), Hops: map[string]config.Duration{"b": config.Duration(time.Microsecond)}}}
	f.Fuzz(func(t *testing.T, reply []byte) {
		r := probeWith(reply)
		everyOutput(t, r, module)
		plausible(t, r)
		if r.Success && binary.BigEndian.Uint32(reply[8:12]) == 0 {
			t.Fatalf("success from a reply with no body")
		}
	})
}

// day bounds every duration an output may show: no probe takes longer.
const day = 24 * time.Hour

// plausible fails the test when a duration a run reports, in the result
// every output is written from or in the /probe exposition itself, is
// negative or over a day: the decoder and the segment arithmetic must
// refuse whatever would make one (an overflow, a hop claiming more time
// than its neighbour measured around it).
func plausible(t *testing.T, r *prober.Result) {
	t.Helper()
	check := func(what string, v float64) {
		t.Helper()
		if v < 0 || v > day.Seconds() || math.IsNaN(v) {
			t.Fatalf("%s is %v s (failure %+v)", what, v, r.Failure)
		}
	}
	for _, s := range r.Segments {
		name := s.From + " -> " + s.To
		for _, v := range []float64{s.RTT.Min, s.RTT.Median, s.RTT.Max} {
			check("rtt of "+name, v)
		}
		check("jitter of "+name, s.Jitter)
		if s.Connect != nil {
			check("connect time of "+name, *s.Connect)
		}
		if ow := s.OneWay; ow != nil {
			check("one-way forward delay of "+name, ow.Forward)
			check("one-way return delay of "+name, ow.Return)
			check("one-way error bound of "+name, ow.ErrorBound)
		}
	}
	for _, h := range r.Hops {
		for _, v := range []float64{h.Residence.Min, h.Residence.Median, h.Residence.Max, h.Wait.Median, h.Wait.Max} {
			check("residence or wait of "+h.Name, v)
		}
		for name, v := range h.Vars {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("variable %s of %s is %v", name, h.Name, v)
			}
		}
	}
	var e collector.Exposition
	collector.WriteProbe(&e, r, nil)
	var text bytes.Buffer
	e.WriteTo(&text)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(text.Bytes()))
	if err != nil {
		t.Fatalf("the /probe answer does not parse: %v", err)
	}
	for name, mf := range mfs {
		if !strings.HasSuffix(name, "_seconds") {
			continue
		}
		for _, m := range mf.GetMetric() {
			check(name+" "+m.String(), m.GetGauge().GetValue())
		}
	}
}

// everyOutput checks what a user reads of a run: the /probe exposition
// parses, the plugin output, the table and the JSON are readable text.
func everyOutput(t *testing.T, r *prober.Result, module *config.Module) {
	t.Helper()
	verdicts := sla.Evaluate(r, module.SLA)

	var e collector.Exposition
	collector.WriteProbe(&e, r, verdicts)
	if err := e.Err(); err != nil {
		t.Fatalf("building the /probe answer: %v", err)
	}
	var text bytes.Buffer
	e.WriteTo(&text)
	p := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := p.TextToMetricFamilies(bytes.NewReader(text.Bytes())); err != nil {
		t.Fatalf("the /probe answer does not parse: %v\n%s", err, text.String())
	}

	_, out := nagios.Evaluate(r, nagios.Thresholds{}, nil)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if !readable(out, false) || strings.Count(lines[0], "|") > 1 {
		t.Fatalf("plugin output not one clean status line and long text:\n%q", out)
	}

	var table, js bytes.Buffer
	if err := report.Table(&table, r); err != nil {
		t.Fatal(err)
	}
	if !readable(table.String(), false) {
		t.Fatalf("probe table not readable:\n%q", table.String())
	}
	if err := report.JSON(&js, r); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil || !utf8.Valid(js.Bytes()) {
		t.Fatalf("probe JSON: %v\n%s", err, js.String())
	}
}

// firstProxy answers one HTTP request on conn with response, then
// closes: a response without a length then ends at once instead of when
// the probe times out (every probe dials again), which keeps the fuzzer
// fast.
func firstProxy(conn net.Conn, response []byte) {
	defer conn.Close()
	if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
		return
	}
	_, _ = conn.Write(response)
}

// probeHTTPWith runs a real HTTP probe run whose first proxy answers with
// response.
func probeHTTPWith(response []byte, h prober.HTTPOptions) *prober.Result {
	o := prober.Options{Target: "http://edge.example:8080/health", Source: "a", Count: 2, Interval: 0, Timeout: 50 * time.Millisecond, HTTP: &h,
		Dial: func(ctx context.Context, _ string) (net.Conn, error) {
			client, server := net.Pipe()
			go firstProxy(server, response)
			return client, nil
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return prober.Run(ctx, o)
}

// FuzzHTTPResponseToEveryOutput: whatever the first HTTP proxy answers
// (status line, Subsegment-Timing entries, body), the source neither
// panics nor lets it corrupt an output, and never reports a negative
// segment.
func FuzzHTTPResponseToEveryOutput(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSubsegment-Timing: n1;dur=0.020s\r\nSubsegment-Timing: h1;dur=20400us\r\n\r\nok"))
	f.Add([]byte("HTTP/1.1 503 Service Unavailable\r\nSubsegment-Timing: h1;dur=300us\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nSubsegment-Timing: a1;dur=D=20400us, n1;dur=0.020s\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nSubsegment-Timing: z\xff\"};dur=1ms\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nSubsegment-Timing: same;dur=1ms, same;dur=2ms\r\nConnection: close\r\n\r\n"))
	f.Add([]byte("SSEG\x02\x02\x00\x00\x00\x00\x00\x00"))
	// The same within what the source measures through a pipe.
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSubsegment-Timing: n1;dur=0.000s\r\nSubsegment-Timing: h1;dur=4us\r\n\r\nok"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nSubsegment-Timing: a1;dur=D=3us, n1;dur=0.000s\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nSubsegment-Timing: same;dur=1us, same;dur=2us\r\nConnection: close\r\n\r\n"))
	// An overflowing value: a segment of 292 years with two proxies.
	f.Add([]byte("HTTP/1.1 200 OK\r\nSubsegment-Timing: n1;dur=10000000000s, h1;dur=20400us\r\nContent-Length: 0\r\n\r\n"))
	// A proxy claiming 23 hours of a round trip of microseconds.
	f.Add([]byte("HTTP/1.1 200 OK\r\nSubsegment-Timing: n1;dur=82800s\r\nContent-Length: 0\r\n\r\n"))
	module := &config.Module{SLA: config.SLA{Default: config.Duration(time.Millisecond)}}
	f.Fuzz(func(t *testing.T, response []byte) {
		for _, h := range []prober.HTTPOptions{{}, {Hops: []string{"h1", "n1"}, Backend: "app"}} {
			r := probeHTTPWith(response, h)
			everyOutput(t, r, module)
			plausible(t, r)
		}
	})
}
