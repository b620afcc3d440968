package udpmsg

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// A datagram sent with a DS field and a transmit stamp request arrives
// with its kernel receive stamp, DS field, TTL and destination address;
// the sender's error queue returns the transmit stamp with key 0, then 1.
func TestMetadataBothWays(t *testing.T) {
	for _, tc := range []struct{ listen, peer string }{{"127.0.0.1:0", "127.0.0.1"}, {"[::1]:0", "::1"}, {":0", "127.0.0.1"}} {
		t.Run(tc.listen, func(t *testing.T) {
			srv, err := Listen(tc.listen, Config{})
			if err != nil {
				t.Skipf("listen %s: %v", tc.listen, err)
			}
			defer srv.Close()
			peer := netip.MustParseAddr(tc.peer)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			cl, err := Dial(ctx, netip.AddrPortFrom(peer, srv.LocalAddr().Port()).String(), Config{TxTimestamps: true})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			before := time.Now().UnixNano()
			sendMarked(t, cl, 2)
			in := receiveMarked(t, srv, 2, before, peer)
			checkTxStampKeys(t, cl, before, 2)
			// A reply from the listening socket carries the received
			// destination as its source.
			r := &in.Msgs[0]
			r.Send = true
			if n, err := srv.Send(in, 1); n != 1 || err != nil {
				t.Fatalf("reply: %d %v", n, err)
			}
			_ = cl.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := cl.Recv(in)
			if err != nil || n != 1 || string(in.Msgs[0].Buf[:in.Msgs[0].N]) != "hello" {
				t.Fatalf("reply received: %d %v", n, err)
			}
		})
	}
}

// sendMarked sends count "hello" datagrams with DS field 46 (EF) and a
// transmit stamp request.
func sendMarked(t *testing.T, cl *Conn, count int) {
	t.Helper()
	out := NewBatch(count, 64)
	for i := range count {
		m := &out.Msgs[i]
		m.N = copy(m.Buf[:cap(m.Buf)], "hello")
		m.Send, m.SetTOS, m.SendTOS, m.TxStamp = true, true, 46<<2, true
	}
	if n, err := cl.Send(out, count); n != count || err != nil {
		t.Fatalf("send: %d %v", n, err)
	}
}

// receiveMarked receives count datagrams sent by sendMarked and checks
// each one's metadata: DS field, TTL, a receive stamp after before, and
// the destination address local.
func receiveMarked(t *testing.T, srv *Conn, count int, before int64, local netip.Addr) *Batch {
	t.Helper()
	in := NewBatch(4, 64)
	_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got := 0; got < count; {
		n, err := srv.Recv(in)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if m := &in.Msgs[i]; !marked(m, before, local) {
				t.Errorf("received %+v", *m)
			}
		}
		got += n
	}
	return in
}

func marked(m *Message, before int64, local netip.Addr) bool {
	return string(m.Buf[:m.N]) == "hello" && m.HasTOS && m.TOS == 46<<2 && m.HasTTL && m.TTL != 0 &&
		m.RxTime >= before && m.RxTime <= time.Now().UnixNano() && m.Local == local
}

// checkTxStampKeys reads the sender's error queue until count transmit
// stamps came back (2 s at most): keys 0, 1, … and none before the send.
func checkTxStampKeys(t *testing.T, cl *Conn, before int64, count int) {
	t.Helper()
	var keys []uint32
	deadline := time.Now().Add(2 * time.Second)
	for len(keys) < count && time.Now().Before(deadline) {
		_, err := cl.ReadTxStamps(NewBatch(4, 16), func(k uint32, ns int64) {
			if ns < before {
				t.Errorf("tx stamp %d before the send", ns)
			}
			keys = append(keys, k)
		})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if len(keys) != count {
		t.Fatalf("tx stamp keys %v, want %d", keys, count)
	}
	for i, k := range keys {
		if k != uint32(i) {
			t.Errorf("tx stamp keys %v, want 0, 1, …", keys)
			break
		}
	}
}

func TestRecvAllocatesNothing(t *testing.T) {
	srv, err := Listen("127.0.0.1:0", Config{TxTimestamps: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cl, err := Dial(context.Background(), srv.LocalAddr().String(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	out := NewBatch(8, 64)
	in := NewBatch(8, 64)
	stamps := NewBatch(8, 16)
	fn := func(uint32, int64) {}
	for i := range out.Msgs {
		out.Msgs[i].N, out.Msgs[i].Send = 44, true
	}
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := cl.Send(out, 8); err != nil {
			t.Fatal(err)
		}
		n, err := srv.Recv(in)
		if err != nil || n == 0 {
			t.Fatal(n, err)
		}
		for i := range n {
			in.Msgs[i].Send, in.Msgs[i].SetTOS, in.Msgs[i].TxStamp = true, true, true
		}
		if _, err := srv.Send(in, n); err != nil {
			t.Fatal(err)
		}
		_, _ = srv.ReadTxStamps(stamps, fn)
		for {
			if k, _ := cl.TryRecv(in); k == 0 {
				break
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per batch, want 0", allocs)
	}
}
