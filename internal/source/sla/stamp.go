package sla

import (
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// stampOptions is how a stamp module measures: its packets, their
// interval, and the STAMP options of its stamp: section. The DSCP is also
// asked for the replies (Class of Service TLV), so that a re-marking on
// the way back shows.
func stampOptions(m *config.Module, o *prober.Options) {
	s := m.STAMP
	if s == nil {
		s = &config.STAMPProbe{TLVs: config.DefaultSTAMPTLVs}
	}
	o.Count, o.Interval = m.PacketCount(), m.PacketInterval()
	o.STAMP = &prober.STAMPOptions{Name: s.Name, PacketBytes: s.PacketBytes, DSCP: uint8(s.DSCP), Authenticated: s.Authenticated,
		PacketTimeout: time.Duration(s.PacketTimeout), TLVs: s.TLVRequest()}
}
