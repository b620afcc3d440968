package integration

import (
	"testing"
	"time"
)

// A real chain across network namespaces, a 20 ms delay on a -> b (a
// delaying proxy in A) and hop c loaded by busy processes on its CPU: the
// delayed segment keeps its figure, c's neighbours keep theirs, and c's
// residence carries the load. Idle and loaded are measured in this test.
func TestNamespaceChainLoadedHopAndDelay(t *testing.T) {
	needTwoCPUs(t)
	stress := requireTool(t, "stress-ng")
	requireTool(t, "taskset")
	l := newLab(t)
	l.relay("Z", "0", "")
	l.relay("C", "1", l.addr("Z")+":9000")
	l.relay("B", "0", l.addr("C")+":9000")
	l.delayProxy("A", "0", "127.0.0.1:9100", l.addr("B")+":9000", 10*time.Millisecond)
	source := l.exec("A", "0")
	args := []string{"--count", "30", "--interval", "20ms"}

	idle := probeJSONOf(t, source, "127.0.0.1:9100", args...)
	load := start(t, "stress-ng", "taskset", "-c", "1", stress, "--cpu", "4", "--timeout", "120s")
	time.Sleep(500 * time.Millisecond)
	loaded := probeJSONOf(t, source, "127.0.0.1:9100", args...)
	load.stop(t)

	if was, is := idle.segment(t, "a", "b"), loaded.segment(t, "a", "b"); was < 0.019 || is < 0.019 || is > was+max(0.001, was/10) {
		t.Errorf("a -> b: %.3fms idle, %.3fms loaded: the 20ms delay should keep its figure", was*1e3, is*1e3)
	}
	for _, seg := range [][2]string{{"b", "c"}, {"c", "z"}} {
		was, is := idle.segment(t, seg[0], seg[1]), loaded.segment(t, seg[0], seg[1])
		if is > was+max(0.0005, was/2) {
			t.Errorf("%s -> %s: %.3fms loaded, %.3fms idle: c's wait leaked into its neighbour's segment", seg[0], seg[1], is*1e3, was*1e3)
		}
	}
	if res := loaded.residence(t, "c"); res < 0.001 {
		t.Errorf("c's residence %.3fms under load, want at least 1ms", res*1e3)
	}
	t.Logf("idle: a->b %.3fms b->c %.3fms c->z %.3fms c %.3fms; loaded: a->b %.3fms b->c %.3fms c->z %.3fms c %.3fms",
		idle.segment(t, "a", "b")*1e3, idle.segment(t, "b", "c")*1e3, idle.segment(t, "c", "z")*1e3, idle.residence(t, "c")*1e3,
		loaded.segment(t, "a", "b")*1e3, loaded.segment(t, "b", "c")*1e3, loaded.segment(t, "c", "z")*1e3, loaded.residence(t, "c")*1e3)
}

// Loss only on the return direction of c -> z (packets from z dropped as
// they enter C): the retransmissions show on c -> z, counted by z (the
// far end) and c, and nowhere else.
func TestReturnLossShowsOnItsSegment(t *testing.T) {
	requireTool(t, "iptables")
	l := newLab(t)
	l.relay("Z", "", "")
	l.relay("C", "", l.addr("Z")+":9000")
	l.relay("B", "", l.addr("C")+":9000")
	l.run("C", "iptables", "-I", "INPUT", "-i", l.dev("C", "Z"), "-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP")
	r := probeJSONOf(t, l.exec("A", ""), l.addr("B")+":9000", "--count", "40", "--interval", "20ms", "--payload-bytes", "4000")
	for _, s := range r.Segments {
		switch {
		case s.From == "c" && s.To == "z" && (s.TCPFar == nil || s.TCPFar.Retransmits == 0):
			// z resends the replies C dropped: the far end's count.
			t.Errorf("c -> z: z counted no retransmissions with 10%% loss on the return direction (tcp_far %+v)", s.TCPFar)
		case (s.From != "c" || s.To != "z") && s.Retransmits != 0:
			t.Errorf("%s -> %s: %d retransmissions, none expected", s.From, s.To, s.Retransmits)
		}
		t.Logf("%s -> %s: %d retransmissions, rtt %.3fms", s.From, s.To, s.Retransmits, s.RTT.Median*1e3)
	}
}
