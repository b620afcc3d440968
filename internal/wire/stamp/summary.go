package stamp

import (
	"slices"
	"time"
)

// Stats summarise durations.
type Stats struct {
	Count                  int
	Min, Median, Mean, Max time.Duration
	// Values in sending order, for histograms.
	Values []time.Duration
}

func statsOf(v []time.Duration) Stats {
	s := Stats{Count: len(v), Values: v}
	if len(v) == 0 {
		return s
	}
	sorted := slices.Clone(v)
	slices.Sort(sorted)
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	s.Median = sorted[len(sorted)/2]
	if len(sorted)%2 == 0 {
		s.Median = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	var sum time.Duration
	for _, d := range v {
		sum += d
	}
	s.Mean = sum / time.Duration(len(v))
	return s
}

// Summary is what a Probe measured, in the terms a segment is reported in.
type Summary struct {
	Sent, Received int
	// RTT is (T4 − T1) − (T3 − T2) per packet.
	RTT Stats
	// Jitter is the mean absolute difference between the round trips of
	// consecutive received packets (RFC 3393's IPDV, averaged).
	Jitter time.Duration
	// Residence is T3 − T2, the reflector's time with each packet.
	Residence Stats

	// Lost = Sent − Received. With the reflector's Direct Measurement
	// counters (LossByDirection) it splits into ForwardLost (sent, never
	// received by the reflector), ReturnLost (reflected, never received
	// here) and UnknownLost (sent after the last reply that carried the
	// counters: their direction is not known yet).
	Lost                                 int
	LossByDirection                      bool
	ForwardLost, ReturnLost, UnknownLost int

	// OneWay holds forward (T2 − T1) and return (T4 − T3) delays, only
	// when both ends set S in their Error Estimates; ErrorBound is the
	// sum of both ends' stated errors (the largest over the packets).
	OneWayValid     bool
	Forward, Return Stats
	ErrorBound      time.Duration
	ReflectorSynced bool

	// DSCP is what the packets showed of their DSCP per direction.
	DSCP

	// Unrecognized, Malformed and Integrity are the TLV types the
	// reflector flagged, each once.
	Unrecognized, Malformed, Integrity []TLVType
	// Faults: what came that was no usable reply (see Result).
	Faults ReplyFaults
}

// Summarize computes a Probe's summary.
func Summarize(r *Result) Summary {
	s := Summary{DSCP: DSCP{DSCPSent: r.DSCP, DSCPRequested: r.TLVs.ReturnDSCP}, Faults: r.Faults}
	var rtts, res, fwd, ret []time.Duration
	var lastDM *PacketResult
	oneWay := true
	for i := range r.Packets {
		p := &r.Packets[i]
		if p.Sent {
			s.Sent++
		}
		if !p.Received {
			continue
		}
		s.Received++
		if d, ok := p.RTT(); ok {
			rtts = append(rtts, d)
		}
		if d, ok := p.Residence(); ok {
			res = append(res, d)
		}
		oneWay = oneWayOf(&s, p, oneWay, &fwd, &ret)
		if p.TLVs.HasDirectMeasurement && (lastDM == nil || p.Seq > lastDM.Seq) {
			lastDM = p
		}
		s.Add(p)
		s.Unrecognized = addTypes(s.Unrecognized, p.TLVs.Unrecognized)
		s.Malformed = addTypes(s.Malformed, p.TLVs.Malformed)
		s.Integrity = addTypes(s.Integrity, p.TLVs.Integrity)
	}
	s.RTT, s.Residence = statsOf(rtts), statsOf(res)
	s.Jitter = jitter(rtts)
	if s.OneWayValid = oneWay && len(fwd) > 0; s.OneWayValid {
		s.Forward, s.Return = statsOf(fwd), statsOf(ret)
	}
	s.Lost = s.Sent - s.Received
	if lastDM != nil {
		lossByDirection(&s, r, lastDM)
	}
	return s
}

func oneWayOf(s *Summary, p *PacketResult, valid bool, fwd, ret *[]time.Duration) bool {
	s.ReflectorSynced = p.ReflectorError.Synced()
	if !valid || !p.SenderError.Synced() || !p.ReflectorError.Synced() || p.TimestampError {
		return false
	}
	se, ok1 := p.SenderError.Bound()
	re, ok2 := p.ReflectorError.Bound()
	if !ok1 || !ok2 {
		return false
	}
	s.ErrorBound = max(s.ErrorBound, se+re)
	*fwd = append(*fwd, time.Duration(p.T2-p.BestT1()))
	*ret = append(*ret, time.Duration(p.T4-p.T3))
	return true
}

// DSCP is what a session's replies showed of the DS field per direction:
// as sent, as the reflector received it (Class of Service TLV), as asked
// for the return (DSCP1), and as received here.
type DSCP struct {
	DSCPSent                            uint8
	DSCPAtReflector, DSCPReturned       uint8
	DSCPRequested                       uint8
	HasDSCPAtReflector, HasDSCPReturned bool
	// ForwardRemarked: the reflector received another DSCP than sent;
	// ReturnRemarked: the reply arrived with another DSCP than the
	// reflector said it used (DSCP1, RP 0). Known only with the flags
	// beside them.
	ForwardRemarked, ReturnRemarked bool
	ForwardKnown, ReturnKnown       bool
}

// Add takes what one received reply says: the one rule on re-marking,
// for Summarize and for senders that exchange one packet at a time.
func (s *DSCP) Add(p *PacketResult) {
	if !p.Received {
		return
	}
	sent := p.SentTOS >> 2
	if p.TLVs.HasClassOfService {
		c := p.TLVs.ClassOfService
		s.DSCPAtReflector, s.HasDSCPAtReflector, s.ForwardKnown = c.DSCP2, true, true
		if c.DSCP2 != sent {
			s.ForwardRemarked = true
		}
		if p.HasReturnTOS && c.RP == 0 {
			s.ReturnKnown = true
			if p.ReturnTOS>>2 != c.DSCP1 {
				s.ReturnRemarked = true
			}
		}
	}
	if p.HasReturnTOS {
		s.DSCPReturned, s.HasDSCPReturned = p.ReturnTOS>>2, true
	}
}

func addTypes(set, add []TLVType) []TLVType {
	for _, t := range add {
		if !slices.Contains(set, t) {
			set = append(set, t)
		}
	}
	return set
}

func jitter(rtts []time.Duration) time.Duration {
	if len(rtts) < 2 {
		return 0
	}
	var sum time.Duration
	for i := 1; i < len(rtts); i++ {
		d := rtts[i] - rtts[i-1]
		if d < 0 {
			d = -d
		}
		sum += d
	}
	return sum / time.Duration(len(rtts)-1)
}

// lossByDirection splits the run's loss with the counters of the last
// reply that carried them (DirectMeasurement.Loss: they count the whole
// session); what earlier runs of the session already named is taken off.
func lossByDirection(s *Summary, r *Result, last *PacketResult) {
	dm := last.TLVs.DirectMeasurement
	upTo := int(last.Seq-r.Packets[0].Seq) + 1
	received := 0
	for i := 0; i < upTo && i < len(r.Packets); i++ {
		if r.Packets[i].Received {
			received++
		}
	}
	fwd, ret, ok := dm.Loss(r.RepliesBefore + uint32(received))
	fwd -= r.PrevForwardLost
	ret -= r.PrevReturnLost
	if !ok || fwd < 0 || ret < 0 || fwd+ret > int64(s.Lost) {
		return
	}
	s.LossByDirection = true
	s.ForwardLost, s.ReturnLost = int(fwd), int(ret)
	s.UnknownLost = s.Lost - s.ForwardLost - s.ReturnLost
}
