package wirefuzz

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
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
		r := frame.HopRecord{ID: uint64(i + 1), Name: name, Forward: 3 * time.Microsecond, Downstream: 40 * time.Microsecond, Return: 2 * time.Microsecond,
			WaitForward: time.Microsecond, Flags: frame.RecKernelIn | frame.RecKernelReply | frame.RecTCPInfo | frame.RecTCPInfoUp}
		if i == len(names)-1 {
			r.Flags, r.Downstream, r.Return = frame.RecEnd|frame.RecKernelIn, 0, 0
		}
		recs = frame.AppendHop(recs, &r)
	}
	return frame.AppendReply(nil, frame.KindProbeReply, frame.ProbeHeader{}, nil, recs, len(names), nil)
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
	module := &config.Module{SLA: config.SLA{Default: config.Duration(time.Millisecond), Hops: map[string]config.Duration{"b": config.Duration(time.Microsecond)}}}
	f.Fuzz(func(t *testing.T, reply []byte) {
		r := probeWith(reply)
		everyOutput(t, r, module)
		if r.Success && binary.BigEndian.Uint32(reply[8:12]) == 0 {
			t.Fatalf("success from a reply with no body")
		}
	})
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
	module := &config.Module{SLA: config.SLA{Default: config.Duration(time.Millisecond)}}
	f.Fuzz(func(t *testing.T, response []byte) {
		for _, h := range []prober.HTTPOptions{{}, {Hops: []string{"h1", "n1"}, Backend: "app"}} {
			r := probeHTTPWith(response, h)
			everyOutput(t, r, module)
			for _, s := range r.Segments {
				if s.RTT.Min < 0 || s.Jitter < 0 {
					t.Fatalf("negative segment %s -> %s: %+v", s.From, s.To, s.RTT)
				}
			}
		}
	})
}
