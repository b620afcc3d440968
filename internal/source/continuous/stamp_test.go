package continuous

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// lossyReflector answers STAMP by the RFC's rules (stamp.Reflect,
// stateful), but loses the packets whose number (from 0) drop says, on
// the way in.
func lossyReflector(t *testing.T, drop func(n int) bool) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		var rx uint32
		for n := 0; ; n++ {
			k, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if drop(n) {
				continue
			}
			rx++
			req := stamp.Request{Mode: stamp.Unauthenticated, RxTime: time.Now().UnixNano(), Src: from, Dst: netip.MustParseAddrPort(c.LocalAddr().String()),
				Stateful: true, ReflectorSeq: rx - 1, RxCount: rx, TxCount: rx, TOS: 46 << 2}
			var rep stamp.Reply
			if stamp.Reflect(buf[:k], &req, &rep) != nil {
				continue
			}
			stamp.Finish(buf[:k], &rep, time.Now().UnixNano())
			_, _ = c.WriteToUDPAddrPort(buf[:k], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String()
}

// A continuous STAMP entry: every packet counted, a lost one counted lost
// at once and forward when the next reply names it, the session kept
// over the loss (no reconnect), and the page's segment with its loss.
func TestSTAMPEntry(t *testing.T) {
	target := lossyReflector(t, func(n int) bool { return n == 3 })
	reg := prometheus.NewPedanticRegistry()
	opts := func(target string, m *config.Module) prober.Options {
		o := sla.ProbeOptions(m, target)
		o.Source, o.Timeout = "a", time.Duration(m.Timeout)
		return o
	}
	m := NewManager(NewMetrics(reg), opts, slog.New(slog.DiscardHandler))
	t.Cleanup(m.Stop)
	m.Apply(parse(t, fmt.Sprintf(`modules:
  r: {prober: stamp, targets: ["127.0.0.1:*"], stamp: {name: r1, packet_timeout: 50ms, dscp: 46}}
continuous:
  - {target: "%s", module: r, interval: 20ms}
`, target)))
	seg := map[string]string{"target": target, "module": "r", "from": "a", "to": "r1"}
	waitFor(t, "ten packets and the loss named", func() bool {
		return value(t, reg, "subsegment_continuous_segment_packets_sent_total", seg) >= 10 &&
			value(t, reg, "subsegment_continuous_segment_one_way_lost_packets_total", map[string]string{"target": target, "direction": "forward"}) == 1
	})
	for name, want := range map[string]float64{
		"subsegment_continuous_segment_packets_lost_total":         1,
		"subsegment_continuous_segment_failures_total":             1,
		"subsegment_continuous_probes_total":                       -2, // checked below
		"subsegment_continuous_segment_rtt_seconds":                -2,
		"subsegment_continuous_hop_residence_seconds":              -2,
		"subsegment_continuous_segment_one_way_lost_packets_total": -2,
	} {
		got := value(t, reg, name, seg)
		if want != -2 && got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	if v := value(t, reg, "subsegment_continuous_segment_one_way_lost_packets_total", map[string]string{"target": target, "direction": "return"}); v != 0 {
		t.Errorf("return loss %v, want 0", v)
	}
	if v := value(t, reg, "subsegment_continuous_hop_residence_seconds", map[string]string{"target": target, "hop": "r1"}); v < 5 {
		t.Errorf("residence histogram of r1: %v samples", v)
	}
	// A reflector reports no wait: no wait series for it, no wait on the
	// page.
	if v := value(t, reg, "subsegment_continuous_hop_wait_seconds", map[string]string{"target": target, "hop": "r1"}); v != -1 {
		t.Errorf("a wait series for the reflector r1 (%v samples)", v)
	}
	snap := m.Snapshot()[0]
	for _, h := range snap.Hops {
		if h.Name == "r1" && (!h.STAMP || h.WaitSeconds != nil) {
			t.Errorf("page's reflector hop %+v", h)
		}
	}
	var s *SegmentState
	for i := range snap.Segments {
		if snap.Segments[i].To == "r1" {
			s = &snap.Segments[i]
		}
	}
	if s == nil || s.Loss == nil || s.Loss.Lost != 1 || s.Loss.Sent < 10 || s.Loss.ForwardLost == nil || *s.Loss.ForwardLost != 1 {
		t.Fatalf("page's segment %+v loss %+v", s, s.Loss)
	}
	// The fake reflector answers with DSCP 0 where 46 was asked for.
	if len(s.DSCPRemarked) != 1 || s.DSCPRemarked[0] != "return" {
		t.Errorf("re-marked %v, want [return]", s.DSCPRemarked)
	}
	// Removed, the entry leaves none of its series, packets and one-way
	// losses included.
	m.Apply(parse(t, "modules:\n  r: {prober: stamp, targets: [\"127.0.0.1:*\"]}\n"))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if n := len(mf.Metric); n > 0 {
			t.Errorf("%d series of %s left after the entry's removal", n, mf.GetName())
		}
	}
}
