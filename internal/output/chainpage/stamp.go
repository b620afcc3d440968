package chainpage

import (
	"strconv"
	"strings"

	"github.com/subsegment/subsegment_exporter/internal/source/continuous"
)

// stampView adds a STAMP segment's loss over the window to its detail
// line, and the directions a router re-marks its DSCP on as its mark.
func stampView(sv *segView, s continuous.SegmentState, detail []string) []string {
	if l := s.Loss; l != nil && l.Sent > 0 {
		text := "loss " + pct(l.Ratio)
		if l.ForwardLost != nil && l.ReturnLost != nil {
			text += " (" + strconv.Itoa(*l.ForwardLost) + " fwd, " + strconv.Itoa(*l.ReturnLost) + " ret)"
		}
		detail = append(detail, text)
		sv.LossRatio = strconv.FormatFloat(l.Ratio, 'g', -1, 64)
	}
	if len(s.DSCPRemarked) > 0 {
		sv.Remarked = "DSCP RE-MARKED " + strings.Join(s.DSCPRemarked, " and ")
		sv.RemarkedDirs = strings.Join(s.DSCPRemarked, " ")
	}
	return detail
}

func pct(r float64) string { return strconv.FormatFloat(r*100, 'f', 1, 64) + "%" }
