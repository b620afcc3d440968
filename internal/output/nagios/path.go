package nagios

import (
	"fmt"
	"strings"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// writePaths lists the routers under every traced segment in the long
// text, one line each, with where the delay first appears.
func writePaths(b *strings.Builder, r *prober.Result) {
	for i := range r.Segments {
		s := &r.Segments[i]
		f := s.PathFlow
		if f == nil {
			continue
		}
		var line string
		if len(s.Path) == 0 {
			line = fmt.Sprintf("%s -> %s path: %s", s.From, s.To, f)
		} else {
			line = fmt.Sprintf("%s -> %s path (%s, %s): %s", s.From, s.To, f.Protocol, f.Status, s.PathText())
			if s.PathDelay != nil {
				line += fmt.Sprintf("; delay appears %s", s.PathDelay)
			}
		}
		// A peer's text is printable but may hold a pipe, which starts
		// performance data.
		b.WriteString(oneLine(line) + "\n")
	}
}
