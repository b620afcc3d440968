package collector

import "github.com/subsegment/subsegment_exporter/internal/source/prober"

// The families of a STAMP segment (prober: stamp, a chain ending at a
// STAMP reflector): its packet loss and its DSCP, per direction. Every
// label value is one of a fixed few.
var (
	segSent      = mustFamily(namespace+"_segment_packets_sent", "STAMP test packets sent over the segment in this scrape, the warm-up included.", segLabels...)
	segLost      = mustFamily(namespace+"_segment_packets_lost", "STAMP test packets of this scrape whose reply did not come back in time, both directions together.", segLabels...)
	segLossRatio = mustFamily(namespace+"_segment_loss_ratio", "STAMP packets lost over those sent in this scrape, both directions together.", segLabels...)
	segDirLost   = mustFamily(namespace+"_segment_one_way_lost_packets", "STAMP packets lost per direction, as the reflector's Direct Measurement counters name them: forward (never reached the reflector), return (reflected, never came back). Absent without the counters.", "from", "to", "direction")
	segDirRatio  = mustFamily(namespace+"_segment_one_way_loss_ratio", "STAMP loss ratio per direction: forward over the packets sent, return over those that reached the reflector (packets whose direction is not known yet left out). Absent without Direct Measurement counters.", "from", "to", "direction")
	segUnknown   = mustFamily(namespace+"_segment_unknown_direction_lost_packets", "STAMP packets lost whose direction no reply has named: the last of a run, or all without Direct Measurement counters.", segLabels...)
	segDSCP      = mustFamily(namespace+"_segment_dscp", "DSCP of the segment's STAMP packets: as sent (where=sent), as the reflector received them (at_reflector, Class of Service TLV), as the replies arrived (returned).", "from", "to", "where")
	segBad       = mustFamily(namespace+"_segment_bad_replies", "What came back over the STAMP segment in this scrape that was no usable reply, by reason: late (after its packet's wait), undecodable (short, or of another session), wrong_size (not the request's size), auth (its HMAC does not verify), echo (echoes other sender fields than were sent), duplicate; and tlv_unverified, replies whose times were used but not their TLVs (the HMAC TLV missing or wrong).", "from", "to", "reason")
	segRemarked  = mustFamily(namespace+"_segment_dscp_remarked", "1 when a router re-marked the DSCP: forward (the reflector received another DSCP than was sent), return (the replies arrived with another DSCP than the reflector sent them with). Absent when not known (no Class of Service TLV).", "from", "to", "direction")
)

// writeSTAMP adds a STAMP segment's loss, DSCP and bad replies; nothing
// for other segments.
func writeSTAMP(e *Exposition, s *prober.SegmentResult) {
	if f := s.BadReplies; f != nil {
		f.Each(func(reason string, n int) { e.Gauge(segBad, float64(n), s.From, s.To, reason) })
	}
	if l := s.Loss; l != nil {
		e.Gauge(segSent, float64(l.Sent), s.From, s.To)
		e.Gauge(segLost, float64(l.Lost), s.From, s.To)
		e.Gauge(segLossRatio, l.Ratio, s.From, s.To)
		e.Gauge(segUnknown, float64(l.Unknown), s.From, s.To)
		for _, d := range []struct {
			dir  string
			loss *prober.DirectionLoss
		}{{"forward", l.Forward}, {"return", l.Return}} {
			if d.loss != nil {
				e.Gauge(segDirLost, float64(d.loss.Lost), s.From, s.To, d.dir)
				e.Gauge(segDirRatio, d.loss.Ratio, s.From, s.To, d.dir)
			}
		}
	}
	d := s.DSCP
	if d == nil {
		return
	}
	e.Gauge(segDSCP, float64(d.Sent), s.From, s.To, "sent")
	if d.AtReflector != nil {
		e.Gauge(segDSCP, float64(*d.AtReflector), s.From, s.To, "at_reflector")
	}
	if d.Returned != nil {
		e.Gauge(segDSCP, float64(*d.Returned), s.From, s.To, "returned")
	}
	if d.ForwardRemarked != nil {
		e.Gauge(segRemarked, boolValue(*d.ForwardRemarked), s.From, s.To, "forward")
	}
	if d.ReturnRemarked != nil {
		e.Gauge(segRemarked, boolValue(*d.ReturnRemarked), s.From, s.To, "return")
	}
}
