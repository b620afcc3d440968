package chainpage

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/continuous"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// A segment over its SLA with a trace is unfolded into its routers, the
// one where the delay appears marked; the hops below move down to make
// room.
func TestRenderUnfoldsAViolatingSegment(t *testing.T) {
	now := time.Now()
	ok := now.Add(-time.Second)
	st := continuous.EntryState{Target: "b:9000", Module: "default", LastSuccess: &ok,
		Hops: []continuous.HopState{{Name: "a", SLA: continuous.SLANone}, {Name: "b", SLA: continuous.SLANone}, {Name: "c", SLA: continuous.SLANone}},
		Segments: []continuous.SegmentState{
			{From: "a", To: "b", MedianSeconds: 0.00005, Samples: 60, SLA: continuous.SLANone},
			{From: "b", To: "c", MedianSeconds: 0.0202, Samples: 60, SLASeconds: 0.01, SLA: continuous.SLAExceeded, PathFlow: "tcp reached",
				Path:      []continuous.PathHopState{{TTL: 1, Address: "10.91.1.2", RTT: 0.00001}, {TTL: 2, Loss: 1}, {TTL: 3, Address: "10.91.3.2", RTT: 0.0201}},
				PathDelay: &prober.PathDelayResult{TTL: 3, Address: "10.91.3.2", Delay: 0.0201}},
		}}
	plain := st
	plain.Segments = []continuous.SegmentState{st.Segments[0], {From: "b", To: "c", MedianSeconds: 0.0202, Samples: 60, SLA: continuous.SLAExceeded}}
	render := func(s continuous.EntryState) string {
		var b bytes.Buffer
		if err := Render(&b, []continuous.EntryState{s}, now); err != nil {
			t.Fatal(err)
		}
		dec := xml.NewDecoder(strings.NewReader(b.String()))
		dec.Strict = true
		for {
			if _, err := dec.Token(); err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("not well-formed: %v\n%s", err, b.String())
				}
				break
			}
		}
		return b.String()
	}
	out := render(st)
	for _, want := range []string{`data-ttl="1" data-address="10.91.1.2">1  10.91.1.2  0.010 ms</text>`,
		`data-ttl="2" data-address="">2  *  (no answer)</text>`,
		`data-ttl="3" data-address="10.91.3.2" data-delay="true"`, `3  10.91.3.2  20.100 ms  ← delay appears: &#43;20.1 ms at 10.91.3.2 (TTL 3)`,
		"traced: tcp reached"} {
		if !strings.Contains(out, want) {
			t.Errorf("unfolded page lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(render(plain), `class="router`) {
		t.Error("a segment without a trace unfolded")
	}
	if a, b := view(st, now).Height, view(plain, now).Height; a != b+4*routerH {
		t.Errorf("height %d unfolded, %d folded: want room for 3 routers and the flow", a, b)
	}
}
