package stamp

import "testing"

func TestDirectMeasurementLoss(t *testing.T) {
	for _, tc := range []struct {
		name     string
		dm       DirectMeasurement
		received uint32
		fwd, ret int64
		ok       bool
	}{
		{"none lost", DirectMeasurement{SenderTx: 10, ReflectorRx: 10, ReflectorTx: 10}, 10, 0, 0, true},
		{"forward", DirectMeasurement{SenderTx: 10, ReflectorRx: 7, ReflectorTx: 7}, 7, 3, 0, true},
		{"return", DirectMeasurement{SenderTx: 10, ReflectorRx: 10, ReflectorTx: 10}, 8, 0, 2, true},
		{"both", DirectMeasurement{SenderTx: 10, ReflectorRx: 9, ReflectorTx: 9}, 7, 1, 2, true},
		{"stateless zeros", DirectMeasurement{SenderTx: 10}, 10, 0, 0, false},
		{"more received than reflected", DirectMeasurement{SenderTx: 10, ReflectorRx: 5, ReflectorTx: 5}, 8, 0, 0, false},
		{"reflector counts more than sent", DirectMeasurement{SenderTx: 5, ReflectorRx: 9, ReflectorTx: 9}, 5, 0, 0, false},
	} {
		fwd, ret, ok := tc.dm.Loss(tc.received)
		if fwd != tc.fwd || ret != tc.ret || ok != tc.ok {
			t.Errorf("%s: %d %d %v, want %d %d %v", tc.name, fwd, ret, ok, tc.fwd, tc.ret, tc.ok)
		}
	}
}

// The ledger names each loss once, by the first reply after it, and
// leaves the tail unnamed.
func TestLossLedger(t *testing.T) {
	var l LossLedger
	reflected := uint32(0)
	reply := func(reached, back bool) (int64, int64) {
		p := PacketResult{Sent: true}
		if reached {
			reflected++
		}
		if reached && back {
			p.Received = true
			p.TLVs.HasDirectMeasurement = true
			p.TLVs.DirectMeasurement = DirectMeasurement{SenderTx: 999, ReflectorRx: reflected, ReflectorTx: reflected}
		}
		return l.Add(&p)
	}
	steps := []struct {
		reached, back bool
		fwd, ret      int64
	}{
		{true, true, 0, 0},
		{false, false, 0, 0}, // lost forward: not known yet
		{true, false, 0, 0},  // lost on return: not known yet
		{true, true, 1, 1},   // this reply names both
		{true, true, 0, 0},
		{false, false, 0, 0}, // the tail: never named
	}
	for i, s := range steps {
		fwd, ret := reply(s.reached, s.back)
		if fwd != s.fwd || ret != s.ret {
			t.Errorf("step %d: named %d forward %d return, want %d %d", i, fwd, ret, s.fwd, s.ret)
		}
	}
	if l.Sent != 6 || l.Received != 3 || l.ForwardLost != 1 || l.ReturnLost != 1 || l.Unnamed() != 1 || !l.Named {
		t.Errorf("ledger %+v unnamed %d", l, l.Unnamed())
	}
	// A packet that was never sent counts nothing.
	l.Add(&PacketResult{})
	if l.Sent != 6 {
		t.Errorf("an unsent packet was counted: %+v", l)
	}
}
