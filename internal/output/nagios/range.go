// Package nagios is the check command: it runs the probe once and answers
// the way the Monitoring Plugins development guidelines say a plugin must,
// so Nagios, Icinga and friends run it as they run check_ping.
//
// Layering (internal/architecture_test.go): floor 5; it may import the source
// end, snmp, internal/config and internal/wire, never relay,
// internal/exporter or cmd.
package nagios

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/timing"
)

// State is a plugin's exit code.
type State int

// Plugin states.
const (
	OK       State = 0
	Warning  State = 1
	Critical State = 2
	Unknown  State = 3
)

func (s State) String() string {
	switch s {
	case OK:
		return "OK"
	case Warning:
		return "WARNING"
	case Critical:
		return "CRITICAL"
	}
	return "UNKNOWN"
}

// Range is a threshold range of the guidelines: "10" (alert outside 0:10),
// "10:" (below 10), "~:10" (above 10), "10:20" (outside), "@10:20"
// (inside). Values are durations: a plain number is milliseconds, and
// ms, s and us suffixes are accepted.
type Range struct {
	Start, End       float64 // ms; -Inf / +Inf when open
	Inside           bool    // @: alert inside the range
	spec             string
	startSet, endSet bool
}

// ParseRange parses a range of the guidelines' syntax.
func ParseRange(s string) (Range, error) {
	r := Range{spec: s, Start: 0, End: math.Inf(1)}
	body := strings.TrimSpace(s)
	if body == "" {
		return Range{}, fmt.Errorf("empty range")
	}
	if strings.HasPrefix(body, "@") {
		r.Inside = true
		body = body[1:]
	}
	lo, hi, hasColon := strings.Cut(body, ":")
	if !hasColon {
		hi, lo = lo, ""
	}
	if lo == "" && hi == "" {
		return Range{}, fmt.Errorf("range %q has no bound", s)
	}
	var err error
	switch {
	case lo == "~":
		r.Start = math.Inf(-1)
	case lo != "":
		if r.Start, err = parseValue(lo); err != nil {
			return Range{}, fmt.Errorf("range %q: start: %w", s, err)
		}
		r.startSet = true
	}
	if hi != "" {
		if r.End, err = parseValue(hi); err != nil {
			return Range{}, fmt.Errorf("range %q: end: %w", s, err)
		}
		r.endSet = true
	} else if !hasColon {
		return Range{}, fmt.Errorf("range %q: no value", s)
	}
	if r.Start > r.End {
		return Range{}, fmt.Errorf("range %q: start %v is above end %v", s, r.Start, r.End)
	}
	return r, nil
}

// parseValue reads a number of milliseconds, or a duration with a unit.
func parseValue(s string) (float64, error) {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"ms", 1}, {"us", 1e-3}, {"µs", 1e-3}, {"s", 1000}} {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
				return 0, fmt.Errorf("%q is not a number of %s", s, u.suffix)
			}
			return v * u.ms, nil
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q is not a number (milliseconds, or with ms, s or us)", s)
	}
	return v, nil
}

// Alert reports whether a value (ms) triggers the range.
func (r Range) Alert(ms float64) bool {
	in := ms >= r.Start && ms <= r.End
	if r.Inside {
		return in
	}
	return !in
}

// Perfdata is the range written in milliseconds, for performance data.
func (r Range) Perfdata() string {
	var b strings.Builder
	if r.Inside {
		b.WriteByte('@')
	}
	switch {
	case math.IsInf(r.Start, -1):
		b.WriteString("~:")
	case r.startSet:
		b.WriteString(num(r.Start))
		b.WriteByte(':')
	}
	if r.endSet {
		b.WriteString(num(r.End))
	}
	return b.String()
}

// Describe says in words what triggers the range, for the status line.
func (r Range) Describe() string {
	switch {
	case r.Inside:
		return fmt.Sprintf("inside %s:%sms", num(r.Start), num(r.End))
	case !r.endSet:
		return fmt.Sprintf("under %sms", num(r.Start))
	case r.Start == 0 && !r.startSet, math.IsInf(r.Start, -1):
		return fmt.Sprintf("over %sms", num(r.End))
	}
	return fmt.Sprintf("outside %s:%sms", num(r.Start), num(r.End))
}

func (r Range) String() string { return r.spec }

// Defined reports whether the range was given.
func (r Range) Defined() bool { return r.spec != "" }

func num(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// ms is a duration in milliseconds with three decimals.
func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 3, 64) }

// msAt is ms with no more digits than a resolution (seconds) carries.
func msAt(d time.Duration, resolution float64) string {
	return strconv.FormatFloat(float64(d)/1e6, 'f', timing.MillisDecimals(resolution), 64)
}
