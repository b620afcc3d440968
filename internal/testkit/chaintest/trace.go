package chaintest

import (
	"net/netip"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// SlowPath is a trace of b -> c through two routers with 20 ms added
// after the first: what b reports when asked, for tests of what the
// outputs make of a path.
func SlowPath() *frame.Path {
	hop := func(ttl uint8, addr string, median time.Duration, flags uint8) frame.PathHop {
		return frame.PathHop{TTL: ttl, Flags: flags, Sent: 3, Answered: 3, Address: netip.MustParseAddr(addr),
			Min: median - 50*time.Microsecond, Median: median, Max: median + 80*time.Microsecond}
	}
	return &frame.Path{Method: frame.PathTCP, Status: frame.PathReached, Probes: 3, MaxTTL: 30, Packets: 11, Duration: 1250 * time.Millisecond,
		Local: netip.MustParseAddrPort("10.61.1.1:41000"), Remote: netip.MustParseAddrPort("10.61.3.2:9000"),
		Reason: "tcp: CAP_NET_RAW", Route: "via 10.61.1.2 dev eth1",
		Hops: []frame.PathHop{hop(1, "10.61.1.2", 100*time.Microsecond, 0), hop(2, "10.61.2.2", 20100*time.Microsecond, 0),
			hop(3, "10.61.3.2", 20200*time.Microsecond, frame.PathHopFarEnd)}}
}

// TracedHop is a relay b in front of an end host c, the segment between
// them taking slow (it answers after that long), that reports path when a
// request asks for it. It returns b's address.
func TracedHop(t testing.TB, path *frame.Path, slow time.Duration) string {
	t.Helper()
	return Scripted(t, func(req []byte, v frame.View) []byte {
		time.Sleep(slow)
		b := frame.HopRecord{ID: 0xb, Name: "b", Forward: time.Microsecond, Downstream: slow + 3*time.Microsecond, Return: time.Microsecond}
		if v.Probe.Flags&frame.ProbePath != 0 {
			b.Path = path
		}
		c := EndRecord("c")
		c.Forward = time.Microsecond
		return Reply(v, req, frame.AppendHop(frame.AppendHop(nil, &b), &c), 2)
	})
}
