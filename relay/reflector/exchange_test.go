package reflector

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

func openSession(t *testing.T, o stamp.SessionOptions) *stamp.Session {
	t.Helper()
	s, err := stamp.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Exchange, one packet at a time against a real reflector: every reply
// matched, its times in order, the kernel's stamps both ends, the echo
// and the counters right.
func TestExchange(t *testing.T) {
	r := start(t, Config{})
	s := openSession(t, stamp.SessionOptions{Target: r.Addr().String(), TLVs: stamp.TLVRequest{DirectMeasurement: true, ClassOfService: true, ReturnDSCP: 10}, DSCP: 10})
	var l stamp.LossLedger
	for i := range 10 {
		p, err := s.Exchange(context.Background(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		l.Add(&p)
		if f := s.Faults(); !p.Received || p.Seq != uint32(i) || f.Any() {
			t.Fatalf("packet %d: %+v %+v", i, p, f)
		}
		if p.T1Kernel == 0 || !p.T4Kernel || p.T2 < p.T1 || p.T3 < p.T2 || p.T4 < p.T3 {
			t.Errorf("packet %d times: T1 %d (kernel %d) T2 %d T3 %d T4 %d (kernel %v)", i, p.T1, p.T1Kernel, p.T2, p.T3, p.T4, p.T4Kernel)
		}
		if !p.TLVs.HasClassOfService || p.TLVs.ClassOfService.DSCP2 != 10 || !p.HasReturnTOS || p.ReturnTOS>>2 != 10 {
			t.Errorf("packet %d DSCP: %+v TOS %d", i, p.TLVs.ClassOfService, p.ReturnTOS)
		}
	}
	if l.Sent != 10 || l.Received != 10 || !l.Named || l.ForwardLost+l.ReturnLost != 0 {
		t.Errorf("ledger %+v", l)
	}
}

// A reply that comes after its wait is late for the next exchange, never
// taken as that one's reply.
func TestExchangeLateReply(t *testing.T) {
	r := start(t, Config{})
	s := openSession(t, stamp.SessionOptions{Target: r.Addr().String()})
	p, err := s.Exchange(context.Background(), time.Nanosecond)
	if err != nil || p.Received || !p.Sent {
		t.Fatalf("first exchange: %+v %v", p, err)
	}
	time.Sleep(50 * time.Millisecond)
	p, err = s.Exchange(context.Background(), 2*time.Second)
	if f := s.Faults(); err != nil || !p.Received || p.Seq != 1 || f.Late != 1 {
		t.Fatalf("second exchange: %+v %+v %v", p, f, err)
	}
}

// Nothing listens on the port: the kernel's ICMP error comes back as
// ECONNREFUSED, at the latest on the next exchange.
func TestExchangeRefused(t *testing.T) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	s := openSession(t, stamp.SessionOptions{Target: addr})
	for range 2 {
		_, err = s.Exchange(context.Background(), 200*time.Millisecond)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("exchange to a closed port: %v, want ECONNREFUSED", err)
	}
}

// An authenticated sender facing a reflector that answers without its key
// (an unauthenticated one): the replies do not verify and are counted so.
func TestExchangeAuthFailed(t *testing.T) {
	r := start(t, Config{Auth: AuthOff})
	s := openSession(t, stamp.SessionOptions{Target: r.Addr().String(), Mode: stamp.Authenticated, Keys: testKeys})
	p, err := s.Exchange(context.Background(), 500*time.Millisecond)
	if f := s.Faults(); err != nil || p.Received || f.Auth != 1 {
		t.Fatalf("exchange: %+v %+v %v", p, f, err)
	}
}

// A context that ends stops the wait at once.
func TestExchangeContext(t *testing.T) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := openSession(t, stamp.SessionOptions{Target: c.LocalAddr().String()})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	p, err := s.Exchange(ctx, time.Minute)
	if err != nil || p.Received || time.Since(start) > 30*time.Second {
		t.Fatalf("exchange: %+v %v after %v", p, err, time.Since(start))
	}
}
