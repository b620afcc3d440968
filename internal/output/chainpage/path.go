package chainpage

import (
	"fmt"

	"github.com/subsegment/subsegment_exporter/internal/source/continuous"
)

// routerH is the height of one router's line under an unfolded segment.
const routerH = 15

// routerView is one TTL of an unfolded segment: the router, its round
// trip from the segment's near end, and whether the delay appears there.
type routerView struct {
	Y       int
	TTL     int
	Address string
	Text    string
	Delay   bool
}

// unfolded is the extra height of every segment (by its near end) that
// the page unfolds into its routers: a segment over its SLA with a trace.
func unfolded(st continuous.EntryState) map[string]int {
	out := map[string]int{}
	for _, s := range st.Segments {
		if len(s.Path) > 0 {
			out[s.From] = routerH * (len(s.Path) + 1)
		}
	}
	return out
}

// routers are the lines of an unfolded segment, from y down.
func routers(s continuous.SegmentState, y int) []routerView {
	var out []routerView
	for i, h := range s.Path {
		r := routerView{Y: y + routerH*i, TTL: h.TTL, Address: h.Address}
		r.Text = fmt.Sprintf("%d  %s  %s", h.TTL, h.Address, ms(h.RTT))
		if h.Address == "" {
			r.Text = fmt.Sprintf("%d  *  (no answer)", h.TTL)
		}
		if d := s.PathDelay; d != nil && d.TTL == h.TTL {
			r.Delay = true
			r.Text += "  ← delay appears: " + d.String()
		}
		out = append(out, r)
	}
	if len(out) > 0 && s.PathFlow != "" {
		out = append(out, routerView{Y: y + routerH*len(s.Path), Text: "traced: " + s.PathFlow})
	}
	return out
}
