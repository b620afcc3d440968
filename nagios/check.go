package nagios

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/prober"
	"github.com/subsegment/subsegment_exporter/relay"
	"github.com/subsegment/subsegment_exporter/snmp"
)

// Thresholds are the warning and critical ranges of the segments' rtt:
// defaults, and per-segment overrides.
type Thresholds struct {
	Warn, Crit Range
	Segments   map[[2]string][2]Range // from, to → warn, crit
}

// ParseSegment parses "from:to=WARN,CRIT" (either may be empty to keep
// the default).
func ParseSegment(spec string) (from, to string, warn, crit Range, err error) {
	seg, ranges, ok := strings.Cut(spec, "=")
	from, to, ok2 := strings.Cut(seg, ":")
	if !ok || !ok2 || from == "" || to == "" {
		return "", "", Range{}, Range{}, fmt.Errorf("--segment %q: want from:to=WARN,CRIT, e.g. b:c=20,50", spec)
	}
	for _, name := range []string{from, to} {
		if err := relay.ValidateName(name); err != nil {
			return "", "", Range{}, Range{}, fmt.Errorf("--segment %q: %w (segments are named after --relay.name of their hops)", spec, err)
		}
	}
	w, c, ok := strings.Cut(ranges, ",")
	if !ok {
		return "", "", Range{}, Range{}, fmt.Errorf("--segment %q: want WARN,CRIT after =, e.g. b:c=20,50 (leave one empty to keep the default)", spec)
	}
	if w != "" {
		if warn, err = ParseRange(w); err != nil {
			return "", "", Range{}, Range{}, fmt.Errorf("--segment %q: warning %w", spec, err)
		}
	}
	if c != "" {
		if crit, err = ParseRange(c); err != nil {
			return "", "", Range{}, Range{}, fmt.Errorf("--segment %q: critical %w", spec, err)
		}
	}
	return from, to, warn, crit, nil
}

// For returns the ranges of a segment.
func (t Thresholds) For(from, to string) (warn, crit Range) {
	warn, crit = t.Warn, t.Crit
	if r, ok := t.Segments[[2]string{from, to}]; ok {
		if r[0].Defined() {
			warn = r[0]
		}
		if r[1].Defined() {
			crit = r[1]
		}
	}
	return warn, crit
}

// unknownSegments names the --segment overrides a complete chain does not
// have: a misspelt or renamed hop would otherwise leave its segment
// silently on the default thresholds. A broken chain is judged on its
// failure instead (the missing segments are beyond it).
func unknownSegments(r *prober.Result, t Thresholds) string {
	if r.Failure != nil || r.Probes == 0 || len(t.Segments) == 0 {
		return ""
	}
	have := make(map[[2]string]bool, len(r.Segments))
	var names []string
	for _, s := range r.Segments {
		have[[2]string{s.From, s.To}] = true
		names = append(names, s.From+" -> "+s.To)
	}
	var missing []string
	for k := range t.Segments {
		if !have[k] {
			missing = append(missing, k[0]+":"+k[1])
		}
	}
	if len(missing) == 0 {
		return ""
	}
	slices.Sort(missing)
	return fmt.Sprintf("--segment %s: no such segment in the chain (its segments: %s); fix the hop names or drop the override",
		strings.Join(missing, ", "), strings.Join(names, ", "))
}

// segmentState is one segment's verdict.
type segmentState struct {
	seg    *prober.SegmentResult
	rtt    time.Duration
	state  State
	reason string
	warn   Range
	crit   Range
}

// Evaluate turns a probe run into the plugin's state and output. ctx is
// the SNMP context of segments out of their SLA (may be nil).
func Evaluate(r *prober.Result, t Thresholds, ctx *snmp.Context) (State, string) {
	if msg := unknownSegments(r, t); msg != "" {
		var b strings.Builder
		return WriteUnknown(&b, "%s", msg), b.String()
	}
	var segs []segmentState
	worst := OK
	var worstSeg *segmentState
	for i := range r.Segments {
		s := &r.Segments[i]
		st := segmentState{seg: s, state: OK}
		st.warn, st.crit = t.For(s.From, s.To)
		if s.Samples > 0 {
			st.rtt = time.Duration(s.RTT.Median * float64(time.Second))
			v := float64(st.rtt) / 1e6
			switch {
			case st.crit.Defined() && st.crit.Alert(v):
				st.state, st.reason = Critical, "critical: "+st.crit.Describe()
			case st.warn.Defined() && st.warn.Alert(v):
				st.state, st.reason = Warning, "warning: "+st.warn.Describe()
			}
		}
		segs = append(segs, st)
	}
	for i := range segs {
		if segs[i].state > worst || segs[i].state == worst && worstSeg != nil && segs[i].state != OK && segs[i].rtt > worstSeg.rtt {
			worst, worstSeg = segs[i].state, &segs[i]
		}
	}
	var first string
	switch {
	case r.Failure != nil:
		worst = Critical
		first = fmt.Sprintf("chain broken at %s -> %s (%s): %s", r.Failure.From, r.Failure.To, r.Failure.Reason, oneLine(r.Failure.Message))
	case r.Probes == 0:
		worst = Critical
		first = "no probe came back"
	case worstSeg != nil:
		first = fmt.Sprintf("%s -> %s rtt %sms (%s)", worstSeg.seg.From, worstSeg.seg.To, ms(worstSeg.rtt), worstSeg.reason)
	default:
		var slowest *segmentState
		for i := range segs {
			if segs[i].seg.Samples > 0 && (slowest == nil || segs[i].rtt > slowest.rtt) {
				slowest = &segs[i]
			}
		}
		if slowest != nil {
			first = fmt.Sprintf("slowest segment %s -> %s rtt %sms, %d hops", slowest.seg.From, slowest.seg.To, ms(slowest.rtt), r.HopsReached)
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "SUBSEGMENT %s - %s", worst, first)
	if p := perfdata(r, segs); p != "" {
		fmt.Fprintf(&b, " | %s", p)
	}
	b.WriteString("\n")
	for _, st := range segs {
		switch {
		case st.seg.Samples == 0:
			fmt.Fprintf(&b, "%s -> %s: no probe crossed it\n", st.seg.From, st.seg.To)
		case st.state == OK:
			fmt.Fprintf(&b, "%s -> %s rtt %sms OK\n", st.seg.From, st.seg.To, ms(st.rtt))
		default:
			fmt.Fprintf(&b, "%s -> %s rtt %sms %s (%s)\n", st.seg.From, st.seg.To, ms(st.rtt), st.state, st.reason)
		}
	}
	if ctx != nil {
		for _, v := range ctx.Violations {
			var parts []string
			for _, hop := range v.Hops {
				for _, h := range ctx.Hops {
					if h.Hop != hop {
						continue
					}
					var vals []string
					for _, val := range h.Values {
						vals = append(vals, val.Name+"="+snmp.FormatValue(val.Value))
					}
					for _, e := range h.Errors {
						vals = append(vals, "error "+e.Reason)
					}
					if len(vals) > 0 {
						parts = append(parts, fmt.Sprintf("%s (%s) %s", hop, h.Source, strings.Join(vals, " ")))
					}
				}
			}
			if len(parts) > 0 {
				fmt.Fprintf(&b, "SLA context for %s -> %s: %s\n", v.From, v.To, strings.Join(parts, "; "))
			}
		}
	}
	return worst, b.String()
}

// perfdata renders one rtt per measured segment and one residence per hop.
func perfdata(r *prober.Result, segs []segmentState) string {
	type item struct{ label, value, warn, crit string }
	var items []item
	for _, st := range segs {
		if st.seg.Samples == 0 {
			continue
		}
		items = append(items, item{label: st.seg.From + "_" + st.seg.To + "_rtt", value: ms(st.rtt) + "ms", warn: st.warn.Perfdata(), crit: st.crit.Perfdata()})
	}
	for _, h := range r.Hops {
		if h.Residence.Max == 0 {
			continue
		}
		items = append(items, item{label: h.Name + "_res", value: ms(time.Duration(h.Residence.Median*float64(time.Second))) + "ms"})
	}
	labels := make([]string, len(items))
	for i := range items {
		labels[i] = items[i].label
	}
	labels = uniqueLabels(labels)
	var parts []string
	for i, it := range items {
		parts = append(parts, fmt.Sprintf("'%s'=%s;%s;%s;0;", labels[i], it.value, it.warn, it.crit))
	}
	return strings.Join(parts, " ")
}

// perfLabelUnique is how many leading characters of a label must differ
// (RRD-based graphers cut labels there).
const perfLabelUnique = 19

// uniqueLabels makes labels unique in their first 19 characters: when
// any two clash there, every label gets its position as a zero-padded
// prefix (01_, 02_ …), which differs within the first characters.
func uniqueLabels(labels []string) []string {
	seen := map[string]bool{}
	clash := false
	for _, l := range labels {
		k := l[:min(len(l), perfLabelUnique)]
		clash = clash || seen[k]
		seen[k] = true
	}
	if !clash {
		return labels
	}
	width := len(fmt.Sprint(len(labels)))
	out := make([]string, len(labels))
	for i, l := range labels {
		out[i] = fmt.Sprintf("%0*d_%s", width, i+1, l)
	}
	return out
}

// WriteUnknown writes an UNKNOWN answer (bad arguments, configuration).
func WriteUnknown(w io.Writer, format string, args ...any) State {
	fmt.Fprintf(w, "SUBSEGMENT UNKNOWN - %s\n", oneLine(fmt.Sprintf(format, args...)))
	return Unknown
}

// oneLine keeps the status line a line: no newlines, no pipe (which
// starts performance data).
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", "/")
}
