package wirefuzz

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
	"github.com/subsegment/subsegment_exporter/relay"
)

// stampReplier answers every STAMP packet on a loopback port with the
// fuzzer's bytes, its SSID and the sender's sequence number set to the
// request's (unauthenticated offsets 14 and 24) so that the bytes reach
// the decoding past the session's own checks.
type stampReplier struct {
	conn  *net.UDPConn
	reply atomic.Pointer[[]byte]
}

func startReplier(tb testing.TB) *stampReplier {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	r := &stampReplier{conn: c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			p := r.reply.Load()
			if p == nil {
				continue
			}
			out := append([]byte(nil), *p...)
			if len(out) >= stamp.UnauthBaseLen && n >= stamp.UnauthBaseLen {
				copy(out[14:16], buf[14:16])
				copy(out[24:28], buf[0:4])
			}
			_, _ = c.WriteToUDPAddrPort(out, from)
		}
	}()
	tb.Cleanup(func() { c.Close(); <-done })
	return r
}

func (r *stampReplier) addr() string { return r.conn.LocalAddr().String() }

// reflected is a reply our reflector's rules make of a request with the
// default TLVs, T3 − T2 = residence, the clock state sync.
func reflected(residence time.Duration, sync clock.Sync, edit func(pkt []byte)) []byte {
	tlvs := stamp.TLVRequest{DirectMeasurement: true, ClassOfService: true, ReturnDSCP: 46, TimestampInfo: true}
	tmpl, _ := stamp.NewTemplate(stamp.Unauthenticated, 0, tlvs)
	pkt := make([]byte, tmpl.Len)
	now := time.Now().UnixNano()
	_, _ = tmpl.Fill(pkt, stamp.Fields{Seq: 1, Timestamp: stamp.NewTimestamp(now, stamp.FormatNTP, 37), SSID: 7, SenderTx: 2}, nil)
	var rep stamp.Reply
	_ = stamp.Reflect(pkt, &stamp.Request{Mode: stamp.Unauthenticated, RxTime: now, RxKernel: true, TOS: 46 << 2, Sync: sync, TAIOffset: 37,
		Stateful: true, RxCount: 2, TxCount: 2}, &rep)
	stamp.Finish(pkt, &rep, now+int64(residence))
	if edit != nil {
		edit(pkt)
	}
	return pkt
}

// FuzzSTAMPReplyToEveryOutput: whatever a STAMP reflector sends back, to
// the source measuring to it (prober: stamp) or to the relay whose next
// hop it is (--forward-to stamp://), the source neither panics nor lets
// it corrupt an output: the /probe exposition parses, the plugin output,
// the probe table and the JSON are readable text, and no duration shown
// is negative or over a day.
func FuzzSTAMPReplyToEveryOutput(f *testing.F) {
	synced := clock.Sync{Synced: true, MaxErrorMicros: 100}
	f.Add(reflected(10*time.Microsecond, clock.Sync{}, nil))
	f.Add(reflected(10*time.Microsecond, synced, nil)) // synchronised clocks, T2 before the sender's T1
	f.Add(reflected(-time.Second, clock.Sync{}, nil))  // T3 before T2
	f.Add(reflected(30*time.Hour, clock.Sync{}, nil))  // a residence of 30 hours
	f.Add(reflected(time.Second, clock.Sync{}, nil))   // more than the sender measured around it
	f.Add(reflected(10*time.Microsecond, clock.Sync{}, func(pkt []byte) {
		pkt[stamp.UnauthBaseLen+2], pkt[stamp.UnauthBaseLen+3] = 0xff, 0xff // a TLV running past the packet
	}))
	f.Add(reflected(10*time.Microsecond, clock.Sync{}, func(pkt []byte) {
		for i := 4; i < 12; i++ {
			pkt[i] = 0xff // T3: no valid time
		}
	}))
	f.Add(reflected(10*time.Microsecond, clock.Sync{}, func(pkt []byte) { pkt[stamp.UnauthBaseLen] = 0xe0 })) // U, M and I flags
	f.Add([]byte("short"))
	replier := startReplier(f)
	b := chaintest.StartRelay(f, relay.Config{Name: "b", ForwardTo: "stamp://" + replier.addr() + "?name=r1", Timeout: 200 * time.Millisecond})
	module := &config.Module{SLA: config.SLA{Default: config.Duration(time.Millisecond), Hops: map[string]config.Duration{"r1": config.Duration(time.Microsecond)}}}
	tlvs := stamp.TLVRequest{DirectMeasurement: true, ClassOfService: true, ReturnDSCP: 46, TimestampInfo: true}
	f.Fuzz(func(t *testing.T, reply []byte) {
		replier.reply.Store(&reply)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		// Short waits: a reply that does not match is a lost packet, and
		// the fuzzer should not wait long for each.
		direct := prober.Run(ctx, prober.Options{Target: replier.addr(), Source: "a", Count: 2, Timeout: 50 * time.Millisecond,
			STAMP: &prober.STAMPOptions{Name: "r1", DSCP: 46, TLVs: tlvs, PacketTimeout: 5 * time.Millisecond}})
		chain := prober.Run(ctx, prober.Options{Target: b, Source: "a", Count: 2, Timeout: 20 * time.Millisecond})
		for _, r := range []*prober.Result{direct, chain} {
			everyOutput(t, r, module)
			plausible(t, r)
			if l := r.Segments[len(r.Segments)-1].Loss; l != nil && (l.Lost < 0 || l.Ratio < 0 || l.Ratio > 1 || l.Unknown < 0) {
				t.Fatalf("loss %+v", l)
			}
		}
	})
}
