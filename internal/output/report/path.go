package report

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// writePaths prints the routers under every traced segment: one row per
// TTL, the row where the delay first appears marked.
func writePaths(w io.Writer, r *prober.Result) error {
	for i := range r.Segments {
		s := &r.Segments[i]
		if s.PathFlow == nil {
			continue
		}
		if _, err := fmt.Fprintf(w, "\nPATH %s -> %s: %s\n", s.From, s.To, s.PathFlow.String()); err != nil {
			return err
		}
		if len(s.Path) == 0 {
			continue
		}
		rows := [][]string{{"TTL", "ADDRESS", "RTT MIN", "MEDIAN", "MAX", "LOSS", ""}}
		for _, h := range s.Path {
			row := []string{strconv.Itoa(h.TTL), "*", "-", "-", "-", fmt.Sprintf("%.0f%%", h.LossRatio*100), ""}
			if h.Address != nil && h.RTT != nil {
				row[1], row[2], row[3], row[4] = *h.Address, ms(h.RTT.Min), ms(h.RTT.Median), ms(h.RTT.Max)
			}
			if d := s.PathDelay; d != nil && d.TTL == h.TTL {
				row[6] = "<- delay appears: " + d.String()
			}
			rows = append(rows, row)
		}
		if err := writeAligned(w, rows); err != nil {
			return err
		}
	}
	return nil
}

// pathNote adds where the delay appears to the slowest segment's note.
func pathNote(s *prober.SegmentResult) string {
	var parts []string
	if s.PathDelay != nil {
		parts = append(parts, "delay appears "+s.PathDelay.String())
	}
	if s.PathFlow != nil && len(s.Path) > 0 {
		parts = append(parts, fmt.Sprintf("%d TTLs traced (%s)", len(s.Path), s.PathFlow.Protocol))
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, ", ")
}
