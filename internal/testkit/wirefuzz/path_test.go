package wirefuzz

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// tracedHop answers measured probes with a valid reply of b and z, and a
// trace request with b's record carrying section as its path section.
func tracedHop(conn net.Conn, section []byte) {
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
		v, err := frame.Parse(req, frame.DefaultMaxFrameBytes, frame.MaxHopsLimit)
		if err != nil {
			return
		}
		b := frame.HopRecord{ID: 1, Name: "b", Forward: 3 * time.Microsecond, Downstream: 10 * time.Microsecond, Return: 2 * time.Microsecond}
		rec := frame.AppendHop(nil, &b)
		if v.Probe.Flags&frame.ProbePath != 0 {
			rec = append(rec, section...)
			rec[0], rec[1] = byte(len(rec)>>8), byte(len(rec))
			binary.BigEndian.PutUint16(rec[3:], binary.BigEndian.Uint16(rec[3:])|frame.RecPath)
		}
		z := frame.HopRecord{ID: 2, Name: "z", Forward: 2 * time.Microsecond, Flags: frame.RecEnd}
		recs := frame.AppendHop(rec, &z)
		out := frame.AppendReply(nil, frame.KindProbeReply, frame.ProbeHeader{Seq: v.Probe.Seq, Flags: v.Probe.Flags}, nil, recs, 2, nil)
		if _, err := conn.Write(out); err != nil {
			return
		}
	}
}

// FuzzPathToEveryOutput: whatever path section a relay sends in answer
// to a trace request, the source neither panics nor lets it corrupt an
// output: the /probe exposition (with its per-TTL series) parses, no
// duration in it is negative or over a day, and the plugin output, probe
// table and JSON are readable.
func FuzzPathToEveryOutput(f *testing.F) {
	section := func(p *frame.Path) []byte {
		b := frame.HopRecord{ID: 1, Name: "b"}
		plain := frame.AppendHop(nil, &b)
		b.Path = p
		return frame.AppendHop(nil, &b)[len(plain):]
	}
	f.Add(section(chaintest.SlowPath()))
	f.Add(section(frame.NoPath(frame.PathDisabled, "b does not trace")))
	long := chaintest.SlowPath()
	long.Reason, long.Route = "udp: no CAP_NET_RAW (raw socket: operation not permitted) | \"}", "dev eth0\\"
	f.Add(section(long))
	f.Add([]byte{})
	tr, err := trace.NewTracer(trace.Config{Rate: 1e6, Burst: 1000})
	if err != nil {
		f.Fatal(err)
	}
	module := &config.Module{SLA: config.SLA{Default: config.Duration(time.Millisecond)}}
	f.Fuzz(func(t *testing.T, sec []byte) {
		if len(sec) > 8000 {
			return
		}
		o := prober.Options{Target: "hop.example:9000", Source: "a", Count: 2, Timeout: 50 * time.Millisecond,
			Trace: &prober.TraceOptions{Tracer: tr},
			Dial: func(ctx context.Context, _ string) (net.Conn, error) {
				client, server := net.Pipe()
				go tracedHop(server, bytes.Clone(sec))
				return client, nil
			}}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r := prober.Run(ctx, o)
		everyOutput(t, r, module)
		plausible(t, r)
		bz := r.Segment("b", "z")
		if bz == nil || bz.PathFlow == nil {
			t.Fatalf("b -> z has no path flow: %+v", bz)
		}
		for _, h := range bz.Path {
			if h.LossRatio < 0 || h.LossRatio > 1 || h.RTT != nil && (h.RTT.Min < 0 || h.RTT.Max > day.Seconds()) {
				t.Fatalf("TTL %+v", h)
			}
		}
		if d := bz.PathDelay; d != nil && (d.Delay < 0 || d.Delay > day.Seconds()) {
			t.Fatalf("delay step %+v", d)
		}
	})
}
