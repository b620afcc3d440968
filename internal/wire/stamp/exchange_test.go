package stamp

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// reflectorAt answers STAMP on a loopback port with Reflect, holding the
// reply to the n-th request for hold(n).
func reflectorAt(t *testing.T, hold func(n int) time.Duration) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; ; n++ {
			buf := make([]byte, 2048)
			k, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			req := Request{Mode: Unauthenticated, RxTime: time.Now().UnixNano(), Stateful: true, ReflectorSeq: uint32(n), RxCount: uint32(n + 1), TxCount: uint32(n + 1)}
			var rep Reply
			if Reflect(buf[:k], &req, &rep) != nil {
				continue
			}
			wg.Add(1)
			go func(d time.Duration) {
				defer wg.Done()
				time.Sleep(d)
				Finish(buf[:k], &rep, time.Now().UnixNano())
				_, _ = c.WriteToUDPAddrPort(buf[:k], from)
			}(hold(n))
		}
	}()
	t.Cleanup(func() { c.Close(); <-done; wg.Wait() })
	return c.LocalAddr().String()
}

// Several exchanges in flight on one session: each reply is matched to
// its own packet by sequence number, whatever order they come back in,
// and a slow one holds no other.
func TestConcurrentExchanges(t *testing.T) {
	target := reflectorAt(t, func(n int) time.Duration {
		if n == 0 {
			return time.Second
		}
		return 0
	})
	s, err := Open(context.Background(), SessionOptions{Target: target, TLVs: TLVRequest{DirectMeasurement: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ledger OrderedLedger
	first := make(chan struct{})
	results := make(chan PacketResult, 8)
	var took [8]time.Duration
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i > 0 {
				<-first
			}
			start := time.Now()
			p, err := s.Exchange(context.Background(), 5*time.Second)
			took[i] = time.Since(start)
			if err != nil {
				t.Error(err)
			}
			ledger.Add(&p)
			results <- p
		}()
		if i == 0 {
			time.Sleep(20 * time.Millisecond) // packet 0 out first
			close(first)
		}
	}
	wg.Wait()
	close(results)
	seen := map[uint32]bool{}
	for p := range results {
		if !p.Received || seen[p.Seq] || p.T2 < p.T1 || p.T4 < p.T3 {
			t.Errorf("packet %+v", p)
		}
		seen[p.Seq] = true
	}
	for i := 1; i < 8; i++ {
		if took[i] >= took[0] {
			t.Errorf("exchange %d took %v, not less than the held one's %v", i, took[i], took[0])
		}
	}
	if l := ledger.Ledger(); l.Sent != 8 || l.Received != 8 || !l.Named || l.ForwardLost+l.ReturnLost != 0 {
		t.Errorf("ledger %+v", l)
	}
	if f := s.Faults(); f.Any() {
		t.Errorf("faults %+v", f)
	}
}

// OrderedLedger names losses as the in-order LossLedger does, whatever
// order the packets' waits end in.
func TestOrderedLedger(t *testing.T) {
	// packets 0..5; 2 lost forward (the reflector never saw it), 4 lost
	// on the way back; each reply's counters include itself.
	dm := func(seq, rx, tx uint32) PacketResult {
		return PacketResult{Seq: seq, Sent: true, Received: true, Length: 44,
			TLVs: ReplyTLVs{HasDirectMeasurement: true, DirectMeasurement: DirectMeasurement{SenderTx: seq + 1, ReflectorRx: rx, ReflectorTx: tx}}}
	}
	lost := func(seq uint32) PacketResult { return PacketResult{Seq: seq, Sent: true, Length: 44} }
	packets := []PacketResult{dm(0, 1, 1), dm(1, 2, 2), lost(2), dm(3, 3, 3), lost(4), dm(5, 5, 5)}
	var want LossLedger
	for i := range packets {
		want.Add(&packets[i])
	}
	var o OrderedLedger
	var fwd, ret int64
	for _, i := range []int{5, 3, 4, 1, 0, 2} {
		f, r := o.Add(&packets[i])
		fwd, ret = fwd+f, ret+r
	}
	if got := o.Ledger(); got != want || fwd != want.ForwardLost || ret != want.ReturnLost || want.ForwardLost != 1 || want.ReturnLost != 1 {
		t.Errorf("ordered %+v (named %d %d), in order %+v", got, fwd, ret, want)
	}
}
