package report

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// writeSTAMP adds the lines of the STAMP segments: their packet loss,
// per direction when the reflector's counters name it, and their DSCP
// per direction with any re-marking.
func writeSTAMP(b *strings.Builder, r *prober.Result) {
	for i := range r.Segments {
		s := &r.Segments[i]
		if l := s.Loss; l != nil {
			fmt.Fprintf(b, "\n%s -> %s: %s\n", s.From, s.To, LossText(l))
		}
		if d := s.DSCP; d != nil {
			fmt.Fprintf(b, "%s -> %s: %s\n", s.From, s.To, DSCPText(d))
		}
		if f := s.BadReplies; f != nil && f.Any() {
			fmt.Fprintf(b, "%s -> %s: %s\n", s.From, s.To, BadRepliesText(f))
		}
	}
}

// BadRepliesText says in one line what came back that was no usable
// reply (the table, the Nagios long text).
func BadRepliesText(f *stamp.ReplyFaults) string {
	return "BAD REPLIES: " + f.Text()
}

// LossText says a STAMP segment's loss in one line (the table, the
// Nagios long text).
func LossText(l *prober.LossResult) string {
	text := fmt.Sprintf("%d packets, %d lost (%s)", l.Sent, l.Lost, percent(l.Ratio))
	switch {
	case !l.ByDirection && l.Lost > 0:
		return text + ", direction not known: the reflector sent no Direct Measurement counters"
	case !l.ByDirection:
		return text
	}
	text += fmt.Sprintf(": forward %d (%s), return %d (%s)", l.Forward.Lost, percent(l.Forward.Ratio), l.Return.Lost, percent(l.Return.Ratio))
	if l.Unknown > 0 {
		text += fmt.Sprintf(", %d not named yet (no reply after them carried the counters)", l.Unknown)
	}
	return text
}

// DSCPText says a STAMP segment's DSCP per direction in one line.
func DSCPText(d *prober.DSCPResult) string {
	text := "DSCP sent " + strconv.Itoa(d.Sent)
	if d.AtReflector != nil {
		text += ", at the reflector " + strconv.Itoa(*d.AtReflector)
	}
	if d.Returned != nil {
		text += ", returned " + strconv.Itoa(*d.Returned)
	}
	var marks []string
	if d.ForwardRemarked != nil && *d.ForwardRemarked {
		marks = append(marks, "forward")
	}
	if d.ReturnRemarked != nil && *d.ReturnRemarked {
		marks = append(marks, "return")
	}
	switch {
	case len(marks) > 0:
		text += ": RE-MARKED " + strings.Join(marks, " and ")
	case d.ForwardRemarked == nil && d.ReturnRemarked == nil:
		text += " (re-marking not known: no Class of Service TLV)"
	}
	return text
}

func percent(r float64) string { return strconv.FormatFloat(r*100, 'f', 1, 64) + "%" }
