// Package httpstamp reads the Subsegment-Timing response header by which
// unmodified HTTP proxies report their own time: one entry per proxy,
//
//	Subsegment-Timing: <hop>;dur=<number><unit>
//
// with unit us, ms or s, the time from the proxy receiving the request to
// sending the response, on the proxy's own clock. Entries may come in one
// header each or comma-separated in one. Everything in them comes from
// peers: names follow the hop-name rules, numbers are range-checked, and
// anything else is an error of reason bad_header that quotes the entry.
//
// Layering (internal/architecture_test.go): floor 1; it imports only
// internal/host and internal/wire, never internal/config, the source end,
// relay or anything above.
package httpstamp

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// Header is the response header the proxies add.
const Header = "Subsegment-Timing"

// MaxEntries bounds the entries of one response, as relays bound hops.
const MaxEntries = 32

// Entry is one proxy's stamp.
type Entry struct {
	Hop      string
	Duration time.Duration
	// Resolution is the smallest step the value can show: its unit and
	// the digits it was written with (0.002s: 1 ms; 2226us: 1 µs).
	Resolution time.Duration
	// Position is the entry's place in the response, 0 first.
	Position int
	// Text is the entry as received, for messages.
	Text string
}

// ErrBadHeader is the class of every error of this package.
var ErrBadHeader = peer.NewError(peer.ReasonBadHeader, "bad "+Header+" header")

func badf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadHeader}, args...)...)
}

// EntryError is an entry refused after its hop name was found valid: the
// prober names that proxy's segment.
type EntryError struct {
	Hop string
	err error
}

func (e *EntryError) Error() string { return e.err.Error() }

func (e *EntryError) Unwrap() error { return e.err }

// quote shows peer text in a message: made valid, short.
func quote(s string) string {
	t := peer.SanitizeText(s, 80)
	if len(t) < len(s) {
		t += "…"
	}
	return strconv.Quote(t)
}

// Parse reads the entries of the header's values, in the order received.
func Parse(values []string) ([]Entry, error) {
	var out []Entry
	for _, v := range values {
		for raw := range strings.SplitSeq(v, ",") {
			text := strings.TrimSpace(raw)
			if text == "" {
				continue
			}
			if len(out) == MaxEntries {
				return nil, badf("more than %d entries: a chain that long is refused, as relays refuse more than %d hops", MaxEntries, MaxEntries)
			}
			e, err := parseEntry(text)
			if err != nil {
				return nil, err
			}
			e.Position = len(out)
			out = append(out, e)
		}
	}
	return out, nil
}

func parseEntry(text string) (Entry, error) {
	name, params, _ := strings.Cut(text, ";")
	name = strings.TrimSpace(name)
	if err := peer.ValidateName(name); err != nil {
		return Entry{}, badf("entry %s: hop %v", quote(text), err)
	}
	e := Entry{Hop: name, Text: text}
	found := false
	for p := range strings.SplitSeq(params, ";") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		if !strings.EqualFold(strings.TrimSpace(k), "dur") {
			continue // desc= and other Server-Timing parameters
		}
		if found {
			return Entry{}, &EntryError{Hop: name, err: badf("entry %s has dur twice", quote(text))}
		}
		found = true
		d, res, err := parseDuration(strings.TrimSpace(v))
		if err != nil {
			return Entry{}, &EntryError{Hop: name, err: badf("entry %s: %v", quote(text), err)}
		}
		e.Duration, e.Resolution = d, res
	}
	if !found {
		return Entry{}, &EntryError{Hop: name, err: badf("entry %s has no dur=: write it as %s;dur=<number>us|ms|s", quote(text), name)}
	}
	return e, nil
}

var units = []struct {
	suffix string
	unit   time.Duration
}{{"us", time.Microsecond}, {"ms", time.Millisecond}, {"s", time.Second}}

// parseDuration reads <number><unit>. Apache's %D writes D=<microseconds>:
// the D= is accepted before the number.
func parseDuration(v string) (time.Duration, time.Duration, error) {
	v = strings.TrimPrefix(v, "D=")
	var unit time.Duration
	for _, u := range units {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, unit = n, u.unit
			break
		}
	}
	if unit == 0 {
		return 0, 0, errors.New("dur has no unit: end it with us, ms or s")
	}
	intPart, frac, hasDot := strings.Cut(v, ".")
	if intPart == "" || len(intPart) > 12 || len(frac) > 9 || hasDot && frac == "" || !digits(intPart) || !digits(frac) {
		return 0, 0, errors.New("dur is not a plain decimal number")
	}
	// In integers, range-checked before every multiplication: a value
	// past what time.Duration holds must not wrap round into range.
	whole, _ := strconv.ParseInt(intPart, 10, 64) // at most 12 digits
	if whole > int64(peer.MaxDuration/unit) {
		return 0, 0, fmt.Errorf("dur over %v", peer.MaxDuration)
	}
	scale := int64(math.Pow10(len(frac)))
	part, _ := strconv.ParseInt("0"+frac, 10, 64) // at most 9 digits
	// part < scale ≤ 1e9 and unit ≤ 1e9: the product fits.
	d := time.Duration(whole)*unit + time.Duration((part*int64(unit)+scale/2)/scale)
	if d > peer.MaxDuration {
		return 0, 0, fmt.Errorf("dur over %v", peer.MaxDuration)
	}
	return d, max(unit/time.Duration(scale), time.Nanosecond), nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Outermost orders entries from the outermost proxy inwards. An outer
// proxy's time contains the inner's, so where two durations differ by
// more than both resolutions together the longer is outside; closer than
// that, the order received decides, in which HAProxy, nginx and Apache's
// "Header add" append their entry after the inner proxies' ("Header
// always add" puts Apache's first: then only the values can order it).
func Outermost(entries []Entry) []Entry {
	out := slices.Clone(entries)
	// Insertion sort with a comparison that is not transitive across
	// ties: n is at most MaxEntries.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && outside(out[j], out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// outside reports whether a belongs outside b.
func outside(a, b Entry) bool {
	if diff := a.Duration - b.Duration; diff > a.Resolution+b.Resolution || -diff > a.Resolution+b.Resolution {
		return diff > 0
	}
	return a.Position > b.Position
}

// Duplicate finds an entry that appears twice, name and value alike: one
// proxy stamping twice (two add-header lines), not two proxies of one
// name, which the identity rules number instead.
func Duplicate(entries []Entry) (Entry, bool) {
	for i, a := range entries {
		for _, b := range entries[i+1:] {
			if a.Hop == b.Hop && a.Duration == b.Duration && a.Resolution == b.Resolution {
				return b, true
			}
		}
	}
	return Entry{}, false
}
