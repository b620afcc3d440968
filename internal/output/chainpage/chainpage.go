// Package chainpage draws the continuously probed chains for the landing
// page: one SVG per chain, hops as boxes (name, residence, wait) from the
// source down to the end, segments as arrows between them with the last
// minute's median and p99 rtt, coloured by SLA, a broken segment marked
// with its reason and a violating hop's context beside it. The drawing is
// made here only, in Go; the page's script replaces it with a fresh one
// every few seconds, so there is one rule for what is drawn.
//
// Every segment element carries data-from, data-to, data-rtt-seconds (the
// median) and data-sla (ok, exceeded, none or no_data), for tests and
// scripts; a STAMP segment also data-loss-ratio (over the window) and, when
// a router re-marks its DSCP, a text with data-dscp-remarked.
//
// Layering (internal/architecture_test.go): floor 5; it reads continuous
// probing's snapshots and takes number formats from timing (not from the
// prober), and never imports relay, internal/exporter or cmd.
package chainpage

import (
	"fmt"
	"html/template"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/timing"

	"github.com/subsegment/subsegment_exporter/internal/source/continuous"
)

// Geometry of a drawing (SVG user units; the page scales it to its width).
const (
	width  = 480
	hopH   = 54
	segH   = 58
	margin = 8
	boxW   = 250
)

// Colours of SLA states, readable on white and told apart without colour
// too (the label says "over SLA").
var colours = map[string]string{
	continuous.SLAOk:       "#2e7d32",
	continuous.SLAExceeded: "#c62828",
	continuous.SLANone:     "#616161",
	continuous.SLANoData:   "#616161",
}

type hopView struct {
	Y                      int
	Name, Residence        string
	Stroke                 string
	Over                   bool
	Context                []string
	ContextY, ContextLineH int
}

type segView struct {
	Y1, Y2, LabelY, ArrowY int
	From, To, SLA, Colour  string
	RTTSeconds, P99Seconds string
	Median, Detail         string
	Broken                 string
	Dash                   string
	// STAMP segments: the window's loss ratio, and the directions a
	// router re-marks the DSCP on (stamp.go).
	LossRatio              string
	Remarked, RemarkedDirs string
	// Routers unfold a segment over its SLA into its path (path.go).
	Routers []routerView
}

type chainView struct {
	Target, Module, Status, StatusClass string
	Height                              int
	Hops                                []hopView
	Segments                            []segView
	Label                               string
}

// ms writes seconds as milliseconds with 3 decimals (microseconds), or
// fewer for coarse figures: never more digits than they carry.
func ms(s float64) string { return msAt(s, 0) }

func msAt(s, resolution float64) string {
	return strconv.FormatFloat(s*1000, 'f', timing.MillisDecimals(resolution), 64) + " ms"
}

func view(st continuous.EntryState, now time.Time) chainView {
	v := chainView{Target: st.Target, Module: st.Module}
	switch {
	case st.Failure != nil:
		v.Status, v.StatusClass = fmt.Sprintf("broken at %s → %s (%s)", st.Failure.From, st.Failure.To, st.Failure.Reason), "broken"
	case st.LastSuccess == nil:
		v.Status, v.StatusClass = "no probe has come back yet", "waiting"
	default:
		v.Status, v.StatusClass = fmt.Sprintf("working, last probe %s ago", now.Sub(*st.LastSuccess).Round(time.Second)), "ok"
	}
	hops := hopsOf(st)
	unfold := unfolded(st)
	y := margin
	index := map[string]int{}
	for i, h := range hops {
		hv := hopView{Y: y, Name: h.Name, Stroke: colours[continuous.SLANone]}
		switch {
		case h.HTTPHeader:
			hv.Residence = "HTTP proxy, stamps of " + strings.TrimSuffix(msAt(h.ResolutionSeconds, h.ResolutionSeconds), " ms") + " ms"
		case h.ResidenceSeconds > 0 && h.WaitSeconds != nil:
			hv.Residence = "residence " + ms(h.ResidenceSeconds) + " · wait " + ms(*h.WaitSeconds)
		case h.ResidenceSeconds > 0:
			hv.Residence = "residence " + ms(h.ResidenceSeconds) // a STAMP reflector: no wait
		}
		if h.SLA == continuous.SLAExceeded {
			hv.Stroke, hv.Over = colours[continuous.SLAExceeded], true
		}
		for _, k := range slices.Sorted(mapsKeys(h.Context)) {
			hv.Context = append(hv.Context, fmt.Sprintf("%s %s", k, strconv.FormatFloat(h.Context[k], 'g', 6, 64)))
		}
		hv.ContextY, hv.ContextLineH = y+16, 14
		index[h.Name] = i
		v.Hops = append(v.Hops, hv)
		y += hopH + segH + unfold[h.Name]
	}
	for _, s := range st.Segments {
		i, ok := index[s.From]
		if !ok {
			continue
		}
		top, h := v.Hops[i].Y+hopH, segH+unfold[s.From]
		sv := segView{Y1: top, Y2: top + h, ArrowY: top + h - 12, LabelY: top + segH/2 - 6, From: s.From, To: s.To, SLA: s.SLA, Colour: colours[s.SLA],
			RTTSeconds: strconv.FormatFloat(s.MedianSeconds, 'g', -1, 64), P99Seconds: strconv.FormatFloat(s.P99Seconds, 'g', -1, 64)}
		var detail []string
		if s.Samples > 0 {
			sv.Median = "median " + msAt(s.MedianSeconds, s.ResolutionSeconds)
			detail = append(detail, "p99 "+msAt(s.P99Seconds, s.ResolutionSeconds))
		} else {
			sv.Median = "no probe crossed it in the last " + windowText(st.WindowSeconds)
		}
		switch s.SLA {
		case continuous.SLAExceeded:
			detail = append(detail, "over SLA "+ms(s.SLASeconds))
		case continuous.SLAOk:
			detail = append(detail, "SLA "+ms(s.SLASeconds))
		}
		detail = stampView(&sv, s, detail)
		sv.Detail = strings.Join(detail, " · ")
		if s.Broken != "" {
			sv.Broken, sv.Dash = "BROKEN: "+s.Broken, "6 4"
			sv.Colour = colours[continuous.SLAExceeded]
		}
		sv.Routers = routers(s, sv.LabelY+30)
		v.Segments = append(v.Segments, sv)
	}
	v.Height = max(y-segH+margin, hopH+2*margin)
	v.Label = describe(st)
	return v
}

// windowText says how far back the page looks: "minute", else "10m0s".
func windowText(seconds float64) string {
	if seconds <= 60 {
		return "minute"
	}
	return (time.Duration(seconds) * time.Second).String()
}

// hopsOf is the hops to draw: those of the latest good probe, and the
// far end of a segment that broke before any probe got through.
func hopsOf(st continuous.EntryState) []continuous.HopState {
	hops := slices.Clone(st.Hops)
	has := func(name string) bool {
		return slices.ContainsFunc(hops, func(h continuous.HopState) bool { return h.Name == name })
	}
	for _, s := range st.Segments {
		for _, n := range []string{s.From, s.To} {
			if !has(n) {
				hops = append(hops, continuous.HopState{Name: n, SLA: continuous.SLANone})
			}
		}
	}
	return hops
}

// describe is the drawing's text alternative, for screen readers.
func describe(st continuous.EntryState) string {
	var parts []string
	for _, s := range st.Segments {
		p := fmt.Sprintf("%s to %s median %s (%s)", s.From, s.To, ms(s.MedianSeconds), s.SLA)
		if s.Broken != "" {
			p += " broken: " + s.Broken
		}
		parts = append(parts, p)
	}
	return "chain " + st.Target + ": " + strings.Join(parts, "; ")
}

func mapsKeys(m map[string]float64) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

var chains = template.Must(template.New("chains").Funcs(template.FuncMap{"mul": func(a, b int) int { return a * b }}).Parse(`<div id="chains" data-updated="{{.Updated}}">
{{- if not .Chains}}
<p class="none">No chain is probed continuously: add a <code>continuous:</code> list to the configuration file (see the README) to see each chain drawn here.</p>
{{- end}}
{{- range .Chains}}
<figure class="chain {{.StatusClass}}" data-target="{{.Target}}" data-module="{{.Module}}">
<figcaption><b>{{.Target}}</b> <span class="module">module {{.Module}}</span> <span class="status">{{.Status}}</span></figcaption>
<svg viewBox="0 0 ` + strconv.Itoa(width) + ` {{.Height}}" width="100%" role="img" aria-label="{{.Label}}" xmlns="http://www.w3.org/2000/svg">
{{- range .Segments}}
<g class="segment" data-from="{{.From}}" data-to="{{.To}}" data-rtt-seconds="{{.RTTSeconds}}" data-p99-seconds="{{.P99Seconds}}" data-sla="{{.SLA}}"{{if .LossRatio}} data-loss-ratio="{{.LossRatio}}"{{end}}>
<line x1="` + strconv.Itoa(margin+boxW/2) + `" y1="{{.Y1}}" x2="` + strconv.Itoa(margin+boxW/2) + `" y2="{{.ArrowY}}" stroke="{{.Colour}}" stroke-width="4"{{if .Dash}} stroke-dasharray="{{.Dash}}"{{end}}/>
<polygon points="` + strconv.Itoa(margin+boxW/2-8) + `,{{.ArrowY}} ` + strconv.Itoa(margin+boxW/2+8) + `,{{.ArrowY}} ` + strconv.Itoa(margin+boxW/2) + `,{{.Y2}}" fill="{{.Colour}}"/>
<text x="` + strconv.Itoa(margin+boxW/2+12) + `" y="{{.LabelY}}" fill="{{.Colour}}" class="rtt">{{.Median}}</text>
<text x="` + strconv.Itoa(margin+boxW/2+12) + `" y="{{.LabelY}}" dy="15" fill="{{.Colour}}" class="small">{{.Detail}}</text>
{{- if .Broken}}<text x="` + strconv.Itoa(margin+boxW/2+12) + `" y="{{.LabelY}}" dy="30" fill="{{.Colour}}" class="broken">{{.Broken}}</text>{{end}}
{{- if .Remarked}}<text x="` + strconv.Itoa(margin+boxW/2+12) + `" y="{{.LabelY}}" dy="{{if .Broken}}45{{else}}30{{end}}" fill="#e65100" class="remarked" data-dscp-remarked="{{.RemarkedDirs}}">{{.Remarked}}</text>{{end}}
{{- range .Routers}}<text x="` + strconv.Itoa(margin+boxW/2+12) + `" y="{{.Y}}" class="router small"{{if .TTL}} data-ttl="{{.TTL}}" data-address="{{.Address}}"{{end}}{{if .Delay}} data-delay="true" fill="` + colours[continuous.SLAExceeded] + `" font-weight="bold"{{end}}>{{.Text}}</text>{{end}}
</g>
{{- end}}
{{- range .Hops}}
<g class="hop" data-hop="{{.Name}}"{{if .Over}} data-sla="exceeded"{{end}}>
<rect x="` + strconv.Itoa(margin) + `" y="{{.Y}}" width="` + strconv.Itoa(boxW) + `" height="` + strconv.Itoa(hopH) + `" rx="6" fill="#fafafa" stroke="{{.Stroke}}" stroke-width="2"/>
<text x="` + strconv.Itoa(margin+10) + `" y="{{.Y}}" dy="20" class="name">{{.Name}}</text>
{{- if .Residence}}<text x="` + strconv.Itoa(margin+10) + `" y="{{.Y}}" dy="38" class="small">{{.Residence}}</text>{{end}}
{{- $y := .ContextY}}{{$h := .ContextLineH}}
{{- range $i, $c := .Context}}<text x="` + strconv.Itoa(boxW+2*margin) + `" y="{{$y}}" dy="{{mul $i $h}}" class="context">{{$c}}</text>{{end}}
</g>
{{- end}}
</svg>
</figure>
{{- end}}
</div>`))

// Render writes the chains section: one figure per entry.
func Render(w io.Writer, states []continuous.EntryState, now time.Time) error {
	data := struct {
		Updated string
		Chains  []chainView
	}{Updated: now.UTC().Format(time.RFC3339Nano)}
	for _, st := range states {
		data.Chains = append(data.Chains, view(st, now))
	}
	return chains.Execute(w, data)
}
