package reflector

import (
	"context"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

var testKeys = frame.Keys{[]byte("0123456789abcdef0123456789abcdef")}

// start runs a reflector on a loopback port until the test ends.
func start(t *testing.T, cfg Config) *Reflector {
	t.Helper()
	if cfg.Address == "" {
		cfg.Address = "127.0.0.1:0"
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return r
}

func probe(t *testing.T, o stamp.SessionOptions, n int) (*stamp.Result, stamp.Summary) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := stamp.Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := s.Probe(ctx, n, time.Millisecond, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return res, stamp.Summarize(res)
}

var allTLVs = stamp.TLVRequest{Location: true, TimestampInfo: true, ClassOfService: true, ReturnDSCP: 10, DirectMeasurement: true, FollowUp: true}

func TestSessionAgainstReflector(t *testing.T) {
	synced := clock.Sync{Synced: true, EstErrorMicros: 100, MaxErrorMicros: 2000}
	skew := clock.Skewed{Base: clock.NewSystem(), State: &synced}
	for _, tc := range []struct {
		name string
		cfg  Config
		o    stamp.SessionOptions
	}{
		{"unauthenticated", Config{Clock: skew}, stamp.SessionOptions{TLVs: allTLVs, DSCP: 46, Clock: skew}},
		{"authenticated", Config{Keys: testKeys, Clock: skew}, stamp.SessionOptions{Mode: stamp.Authenticated, Keys: testKeys, TLVs: allTLVs, DSCP: 46, Clock: skew, Size: 400}},
		{"plain ptp", Config{}, stamp.SessionOptions{Format: stamp.FormatPTP}},
		{"stateless", Config{Mode: ModeStateless}, stamp.SessionOptions{TLVs: allTLVs}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, tc.cfg)
			tc.o.Target = r.Addr().String()
			res, sum := probe(t, tc.o, 20)
			if sum.Sent != 20 || sum.Received != 20 || sum.Faults.Any() {
				t.Fatalf("summary %+v", sum)
			}
			for i, p := range res.Packets {
				if !p.T4Kernel || p.T1Kernel == 0 || p.T2 < p.T1 || p.T3 < p.T2 || p.T4 < p.T3 {
					t.Errorf("packet %d times: %+v", i, p)
				}
				wantSeq := p.Seq
				if tc.cfg.Mode == ModeStateless {
					if p.ReflectorSeq != wantSeq {
						t.Errorf("stateless reflector seq %d, want the sender's %d", p.ReflectorSeq, wantSeq)
					}
				} else if p.ReflectorSeq != uint32(i) {
					t.Errorf("stateful reflector seq %d, want %d", p.ReflectorSeq, i)
				}
			}
			if sum.RTT.Median <= 0 || sum.Residence.Median <= 0 || sum.RTT.Median > time.Second {
				t.Errorf("rtt %v residence %v", sum.RTT.Median, sum.Residence.Median)
			}
			t.Logf("%s: rtt p50 %v residence p50 %v jitter %v one-way %v fwd %v ret %v bound %v dscp %+v", tc.name, sum.RTT.Median, sum.Residence.Median, sum.Jitter,
				sum.OneWayValid, sum.Forward.Median, sum.Return.Median, sum.ErrorBound, []any{sum.DSCPSent, sum.DSCPAtReflector, sum.DSCPReturned, sum.ForwardRemarked, sum.ReturnRemarked})
			last := res.Packets[len(res.Packets)-1].TLVs
			t.Logf("tlvs %+v", last)
		})
	}
}
