package stamp

import "sync"

// Loss is the rule that names a session's lost packets by direction from a
// reply's Direct Measurement counters (RFC 8972 §4.5), which count the
// whole session up to and including that packet: S_TxC − R_RxC packets
// never reached the reflector (forward), R_TxC − received never came back
// (return), where received is the replies the sender took, that one
// included. Counters that contradict the replies (a stateless reflector's
// zeros, a reflector that restarted, more loss than packets missing) name
// nothing: ok is false.
func (d DirectMeasurement) Loss(received uint32) (forward, ret int64, ok bool) {
	forward = int64(d.SenderTx) - int64(d.ReflectorRx)
	ret = int64(d.ReflectorTx) - int64(received)
	missing := int64(d.SenderTx) - int64(received)
	if d.ReflectorRx == 0 || forward < 0 || ret < 0 || forward+ret > missing {
		return 0, 0, false
	}
	return forward, ret, true
}

// LossLedger keeps a session's loss one packet at a time (Exchange): the
// packets sent and replies taken, and the loss named per direction so
// far. Each reply with Direct Measurement counters names what was lost
// before it; a loss is named once, by the first reply after it.
type LossLedger struct {
	Sent, Received uint32
	// ForwardLost and ReturnLost are the session's named losses.
	ForwardLost, ReturnLost int64
	// Named: at least one reply carried usable counters.
	Named bool
}

// Add records one exchanged packet and returns the losses it named, in
// the session's whole history (they may be of earlier packets).
func (l *LossLedger) Add(p *PacketResult) (forward, ret int64) {
	if !p.Sent {
		return 0, 0
	}
	l.Sent++
	if !p.Received {
		return 0, 0
	}
	l.Received++
	if !p.TLVs.HasDirectMeasurement {
		return 0, 0
	}
	dm := p.TLVs.DirectMeasurement
	dm.SenderTx = l.Sent // ours, not what came back
	fwd, rt, ok := dm.Loss(l.Received)
	if !ok || fwd < l.ForwardLost || rt < l.ReturnLost {
		return 0, 0
	}
	forward, ret = fwd-l.ForwardLost, rt-l.ReturnLost
	l.ForwardLost, l.ReturnLost, l.Named = fwd, rt, true
	return forward, ret
}

// Unnamed is the loss no reply has named yet: packets sent after the
// last reply with counters, whose direction is not known.
func (l *LossLedger) Unnamed() int64 {
	return max(int64(l.Sent)-int64(l.Received)-l.ForwardLost-l.ReturnLost, 0)
}

// OrderedLedger is a LossLedger fed by exchanges that run at once (a
// relay's connections sharing one session): a reply's counters count the
// packets before it, so each packet is added in sequence order, once
// every earlier packet's wait has ended. Safe for concurrent use; it
// holds at most the packets in flight.
type OrderedLedger struct {
	mu      sync.Mutex
	l       LossLedger
	next    uint32
	pending map[uint32]PacketResult
}

// Add records one exchanged packet (a zero Length: none was built, there
// is nothing to add) and returns the losses named by the packets it could
// add in order, this one's and earlier ones'.
func (o *OrderedLedger) Add(p *PacketResult) (forward, ret int64) {
	if p.Length == 0 {
		return 0, 0
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.pending == nil {
		o.pending = map[uint32]PacketResult{}
	}
	o.pending[p.Seq] = PacketResult{Seq: p.Seq, Sent: p.Sent, Received: p.Received, TLVs: ReplyTLVs{
		HasDirectMeasurement: p.TLVs.HasDirectMeasurement, DirectMeasurement: p.TLVs.DirectMeasurement}}
	for {
		q, ok := o.pending[o.next]
		if !ok {
			return forward, ret
		}
		delete(o.pending, o.next)
		o.next++
		f, r := o.l.Add(&q)
		forward += f
		ret += r
	}
}

// Ledger is the loss added so far.
func (o *OrderedLedger) Ledger() LossLedger {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.l
}
