package nagios

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/snmp"
)

// Thresholds are the warning and critical ranges of the segments' rtt:
// defaults, and per-segment overrides; and the critical residence of
// hops (from the module's sla.hops).
type Thresholds struct {
	Warn, Crit Range
	Segments   map[[2]string][2]Range // from, to → warn, crit
	Hops       map[string]Range       // hop → crit
	// SLA, when set, makes the module's segment SLAs the critical ranges
	// of segments without an override (no -w or -c was given).
	SLA *config.SLA
	// Verbose adds detail to the long text (-v: hops, -vv: kernel view).
	Verbose int
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
		if err := peer.ValidateName(name); err != nil {
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
	if t.SLA != nil {
		if d := t.SLA.Threshold(from, to); d > 0 {
			crit = above(d)
		}
	}
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

// hopState is one hop's residence verdict.
type hopState struct {
	hop    *prober.HopResult
	res    time.Duration
	state  State
	reason string
	crit   Range
}

// Evaluate turns a probe run into the plugin's state and output. ctx is
// the SNMP context of what is out of its SLA (may be nil).
func Evaluate(r *prober.Result, t Thresholds, ctx *snmp.Context) (State, string) {
	if msg := unknownSegments(r, t); msg != "" {
		return Unknown, UnknownText("%s", msg)
	}
	segs := judgeSegments(r, t)
	hops := judgeHops(r, t)
	worst, first := summary(r, segs, hops)
	var b strings.Builder
	fmt.Fprintf(&b, "SUBSEGMENT %s - %s", worst, oneLine(first))
	if p := perfdata(r, segs); p != "" {
		fmt.Fprintf(&b, " | %s", p)
	}
	b.WriteString("\n")
	writeSegments(&b, segs, t.Verbose)
	writeHops(&b, hops, t.Verbose)
	writePaths(&b, r)
	writeContext(&b, ctx)
	return worst, b.String()
}

func judgeSegments(r *prober.Result, t Thresholds) []segmentState {
	var segs []segmentState
	for i := range r.Segments {
		s := &r.Segments[i]
		st := segmentState{seg: s, state: OK}
		st.warn, st.crit = t.For(s.From, s.To)
		if s.Samples > 0 {
			st.rtt = time.Duration(s.RTT.Median * float64(time.Second))
			st.state, st.reason = judge(float64(st.rtt)/1e6, st.warn, st.crit)
		}
		segs = append(segs, st)
	}
	return segs
}

func judgeHops(r *prober.Result, t Thresholds) []hopState {
	var hops []hopState
	for i := range r.Hops {
		h := &r.Hops[i]
		if h.Residence.Max == 0 {
			continue
		}
		st := hopState{hop: h, state: OK, crit: t.Hops[h.Name], res: time.Duration(h.Residence.Median * float64(time.Second))}
		st.state, st.reason = judge(float64(st.res)/1e6, Range{}, st.crit)
		hops = append(hops, st)
	}
	return hops
}

// judge places a value in ms against a warning and a critical range.
func judge(v float64, warn, crit Range) (State, string) {
	switch {
	case crit.Defined() && crit.Alert(v):
		return Critical, "critical: " + crit.Describe()
	case warn.Defined() && warn.Alert(v):
		return Warning, "warning: " + warn.Describe()
	}
	return OK, ""
}

// summary is the plugin's state and the text of its status line: the
// break, else the worst segment or hop, else the slowest segment.
func summary(r *prober.Result, segs []segmentState, hops []hopState) (State, string) {
	switch {
	case r.Failure != nil:
		return Critical, fmt.Sprintf("chain broken at %s -> %s (%s): %s", r.Failure.From, r.Failure.To, r.Failure.Reason, r.Failure.Message)
	case r.Probes == 0:
		return Critical, "no probe came back"
	}
	worst, text := OK, ""
	var worstRTT time.Duration
	for _, st := range segs {
		if st.state > worst || st.state == worst && st.state != OK && st.rtt > worstRTT {
			worst, worstRTT = st.state, st.rtt
			text = fmt.Sprintf("%s -> %s rtt %sms (%s)", st.seg.From, st.seg.To, msAt(st.rtt, st.seg.Resolution), st.reason)
		}
	}
	for _, st := range hops {
		if st.state > worst {
			worst = st.state
			text = fmt.Sprintf("hop %s residence %sms (%s)", st.hop.Name, ms(st.res), st.reason)
		}
	}
	if worst != OK {
		return worst, text
	}
	var slowest *segmentState
	for i := range segs {
		if segs[i].seg.Samples > 0 && (slowest == nil || segs[i].rtt > slowest.rtt) {
			slowest = &segs[i]
		}
	}
	if slowest == nil {
		return OK, "no segment measured"
	}
	return OK, fmt.Sprintf("slowest segment %s -> %s rtt %sms, %d %s", slowest.seg.From, slowest.seg.To, msAt(slowest.rtt, slowest.seg.Resolution), r.HopsReached, plural(r.HopsReached, "hop", "hops"))
}

func writeSegments(b *strings.Builder, segs []segmentState, verbose int) {
	for _, st := range segs {
		switch {
		case st.seg.Samples == 0:
			fmt.Fprintf(b, "%s -> %s: no probe crossed it\n", st.seg.From, st.seg.To)
		case st.state == OK:
			fmt.Fprintf(b, "%s -> %s rtt %sms OK\n", st.seg.From, st.seg.To, msAt(st.rtt, st.seg.Resolution))
		default:
			fmt.Fprintf(b, "%s -> %s rtt %sms %s (%s)\n", st.seg.From, st.seg.To, msAt(st.rtt, st.seg.Resolution), st.state, st.reason)
		}
		writeSTAMP(b, st.seg)
		if verbose >= 2 && st.seg.TCP != nil {
			fmt.Fprintf(b, "  kernel view: tcp rtt %sms min %sms, retransmits %d (both ends), pmtu %d\n",
				ms(secs(st.seg.TCP.RTT)), ms(secs(st.seg.TCP.MinRTT)), st.seg.Retransmits, st.seg.TCP.PMTU)
		}
	}
}

func writeHops(b *strings.Builder, hops []hopState, verbose int) {
	for _, st := range hops {
		switch {
		case st.state != OK && st.hop.STAMP:
			// A STAMP reflector reports no wait.
			fmt.Fprintf(b, "hop %s residence %sms %s (%s)\n", st.hop.Name, ms(st.res), st.state, st.reason)
		case st.state != OK:
			fmt.Fprintf(b, "hop %s residence %sms %s (%s), wait %sms\n", st.hop.Name, ms(st.res), st.state, st.reason, ms(secs(st.hop.Wait.Median)))
		case verbose >= 1 && st.hop.STAMP:
			fmt.Fprintf(b, "hop %s residence %sms OK\n", st.hop.Name, ms(st.res))
		case verbose >= 1:
			fmt.Fprintf(b, "hop %s residence %sms, wait %sms OK\n", st.hop.Name, ms(st.res), ms(secs(st.hop.Wait.Median)))
		}
	}
}

func writeContext(b *strings.Builder, ctx *snmp.Context) {
	if ctx == nil {
		return
	}
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
			fmt.Fprintf(b, "SLA context for %s: %s\n", strings.TrimPrefix(v.What(), "segment "), strings.Join(parts, "; "))
		}
	}
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// perfdata renders one rtt per measured segment and one residence per hop.
func perfdata(r *prober.Result, segs []segmentState) string {
	var items []perfItem
	for _, st := range segs {
		if st.seg.Samples > 0 {
			items = append(items, perfItem{label: st.seg.From + "_" + st.seg.To + "_rtt", value: msAt(st.rtt, st.seg.Resolution) + "ms", warn: st.warn.Perfdata(), crit: st.crit.Perfdata()})
		}
		items = append(items, stampPerfdata(st.seg)...)
	}
	for _, h := range r.Hops {
		if h.Residence.Max == 0 {
			continue
		}
		items = append(items, perfItem{label: h.Name + "_res", value: ms(time.Duration(h.Residence.Median*float64(time.Second))) + "ms"})
	}
	labels := make([]string, len(items))
	for i := range items {
		labels[i] = items[i].label
	}
	labels = uniqueLabels(labels)
	var parts []string
	for i, it := range items {
		parts = append(parts, fmt.Sprintf("'%s'=%s;%s;%s;0;%s", labels[i], it.value, it.warn, it.crit, it.max))
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

// UnknownText is an UNKNOWN answer (bad arguments, configuration).
func UnknownText(format string, args ...any) string {
	return "SUBSEGMENT UNKNOWN - " + oneLine(fmt.Sprintf(format, args...)) + "\n"
}

// oneLine keeps the status line a line: no newlines, no pipe (which
// starts performance data).
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", "/")
}
