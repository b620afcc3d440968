package nagios

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/subsegment/subsegment_exporter/internal/output/report"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// perfItem is one performance data item: label=value;warn;crit;0;max.
type perfItem struct{ label, value, warn, crit, max string }

// stampPerfdata is a STAMP segment's loss in percent, both directions
// together and, with the reflector's counters, each direction.
func stampPerfdata(s *prober.SegmentResult) []perfItem {
	l := s.Loss
	if l == nil {
		return nil
	}
	base := s.From + "_" + s.To + "_loss"
	items := []perfItem{{label: base, value: pct(l.Ratio), max: "100"}}
	if l.Forward != nil && l.Return != nil {
		items = append(items, perfItem{label: base + "_fwd", value: pct(l.Forward.Ratio), max: "100"}, perfItem{label: base + "_ret", value: pct(l.Return.Ratio), max: "100"})
	}
	return items
}

func pct(r float64) string { return strconv.FormatFloat(r*100, 'f', 1, 64) + "%" }

// writeSTAMP adds a STAMP segment's loss and DSCP lines to the long text,
// in the words of the probe table.
func writeSTAMP(b *strings.Builder, s *prober.SegmentResult) {
	if s.Loss != nil {
		fmt.Fprintf(b, "%s -> %s: %s\n", s.From, s.To, report.LossText(s.Loss))
	}
	if s.DSCP != nil {
		fmt.Fprintf(b, "%s -> %s: %s\n", s.From, s.To, report.DSCPText(s.DSCP))
	}
	if f := s.BadReplies; f != nil && f.Any() {
		fmt.Fprintf(b, "%s -> %s: %s\n", s.From, s.To, report.BadRepliesText(f))
	}
}
