package collector

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ContentType is the media type of an Exposition: the Prometheus text
// format 0.0.4, which every Prometheus and every scraper reads, with the
// legacy names it uses.
const ContentType = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"

// Family is a gauge family of a /probe answer: its name, help and label
// names, fixed when the family is declared.
type Family struct {
	name   string
	help   string
	labels []string
	// order lists the labels by name: written so, as client_golang
	// writes them, so that what people grep for stays the same.
	order []int
}

// NewFamily declares a gauge family. Name and label names must follow the
// Prometheus rules ([a-zA-Z_:][a-zA-Z0-9_:]* for names, no leading __ for
// labels): the families of this package are declared at start-up, where a
// bad one is a bug; families with label names from outside (in-band
// variables) are declared per answer and their error is an answer's error.
func NewFamily(name, help string, labels ...string) (*Family, error) {
	if !validName(name, true) {
		return nil, fmt.Errorf("metric name %q is not a valid Prometheus name", name)
	}
	for i, l := range labels {
		if !validName(l, false) || strings.HasPrefix(l, "__") {
			return nil, fmt.Errorf("label name %q of %s is not a valid Prometheus label name", l, name)
		}
		if slices.Contains(labels[:i], l) {
			return nil, fmt.Errorf("label name %q of %s is repeated", l, name)
		}
	}
	order := make([]int, len(labels))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(labels[a], labels[b]) })
	return &Family{name: name, help: help, labels: labels, order: order}, nil
}

// mustFamily declares one of this package's own families.
func mustFamily(name, help string, labels ...string) *Family {
	f, err := NewFamily(name, help, labels...)
	if err != nil {
		panic(err) // a constant of this package: caught by every test run
	}
	return f
}

func validName(s string, colons bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', colons && c == ':':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Exposition builds one /probe answer in the text format without a
// registry: a probe's answer is a few dozen gauges built once and read
// once, and a registry per request cost more CPU than the probe itself
// (descriptors, goroutines and channels of Gather, protobuf messages).
// It keeps the guarantees a registry gives: label values are valid UTF-8,
// every sample has its family's labels, no series appears twice. A
// sample that breaks one is left out and counted as an error; the answer
// is then an error (Err), never a malformed exposition.
type Exposition struct {
	samples []sample
	values  []string
	errs    []error
	// OnError is called once per sample left out; may be nil.
	OnError func()
}

type sample struct {
	family      *Family
	value       float64
	first, size int
	hash        uint64
}

// Gauge adds one sample of family f with the label values in the order
// of the family's label names.
func (e *Exposition) Gauge(f *Family, v float64, labelValues ...string) {
	if len(labelValues) != len(f.labels) {
		e.fail(fmt.Errorf("%s: %d label values for %d labels", f.name, len(labelValues), len(f.labels)))
		return
	}
	h := fnvString(fnvOffset, f.name)
	for i, lv := range labelValues {
		if !utf8.ValidString(lv) {
			e.fail(fmt.Errorf("%s: value %q of label %s is not valid UTF-8", f.name, lv, f.labels[i]))
			return
		}
		h = fnvString(fnvByte(h, 0xff), lv)
	}
	e.samples = append(e.samples, sample{family: f, value: v, first: len(e.values), size: len(labelValues), hash: h})
	e.values = append(e.values, labelValues...)
}

// Fail records an error of the answer that is not a sample's (a family
// that could not be declared, a panic recovered while building).
func (e *Exposition) Fail(err error) { e.fail(err) }

func (e *Exposition) fail(err error) {
	e.errs = append(e.errs, err)
	if e.OnError != nil {
		e.OnError()
	}
}

// Err is every error of the answer, nil when it is whole.
func (e *Exposition) Err() error {
	e.findDuplicates()
	return errors.Join(e.errs...)
}

// findDuplicates drops the second and later samples of a series, as an
// error each: Prometheus refuses an exposition that repeats one.
func (e *Exposition) findDuplicates() {
	if len(e.samples) < 2 {
		return
	}
	order := make([]int, len(e.samples))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(e.samples[a].hash, e.samples[b].hash), a-b)
	})
	var drop []int
	for i := 1; i < len(order); i++ {
		a, b := &e.samples[order[i-1]], &e.samples[order[i]]
		if a.hash == b.hash && e.sameSeries(a, b) {
			e.fail(fmt.Errorf("%s%s appears twice", b.family.name, e.labelText(b)))
			drop = append(drop, order[i])
		}
	}
	if len(drop) == 0 {
		return
	}
	slices.Sort(drop)
	drop = slices.Compact(drop)
	for i := len(drop) - 1; i >= 0; i-- {
		e.samples = slices.Delete(e.samples, drop[i], drop[i]+1)
	}
}

func (e *Exposition) sameSeries(a, b *sample) bool {
	return a.family.name == b.family.name && slices.Equal(e.values[a.first:a.first+a.size], e.values[b.first:b.first+b.size])
}

func (e *Exposition) labelText(s *sample) string {
	var b bytes.Buffer
	writeLabels(&b, s.family, e.values[s.first:s.first+s.size])
	return b.String()
}

// WriteTo renders the exposition: families in name order (as a registry
// orders them), samples of a family in the order they were added (chain
// order, which is how people read a chain).
func (e *Exposition) WriteTo(b *bytes.Buffer) {
	e.findDuplicates()
	slices.SortStableFunc(e.samples, func(a, b sample) int { return strings.Compare(a.family.name, b.family.name) })
	var last *Family
	for i := range e.samples {
		s := &e.samples[i]
		if s.family != last {
			last = s.family
			b.WriteString("# HELP ")
			b.WriteString(s.family.name)
			b.WriteByte(' ')
			writeEscaped(b, s.family.help, false)
			b.WriteString("\n# TYPE ")
			b.WriteString(s.family.name)
			b.WriteString(" gauge\n")
		}
		b.WriteString(s.family.name)
		writeLabels(b, s.family, e.values[s.first:s.first+s.size])
		b.WriteByte(' ')
		writeValue(b, s.value)
		b.WriteByte('\n')
	}
}

func writeLabels(b *bytes.Buffer, f *Family, values []string) {
	if len(f.labels) == 0 {
		return
	}
	b.WriteByte('{')
	for k, i := range f.order {
		if k > 0 {
			b.WriteByte(',')
		}
		b.WriteString(f.labels[i])
		b.WriteString(`="`)
		writeEscaped(b, values[i], true)
		b.WriteByte('"')
	}
	b.WriteByte('}')
}

// writeEscaped escapes as the text format asks: backslash and newline
// everywhere, double quotes in label values.
func writeEscaped(b *bytes.Buffer, s string, quote bool) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '"' && quote:
			b.WriteString(`\"`)
		default:
			b.WriteByte(c)
		}
	}
}

func writeValue(b *bytes.Buffer, v float64) {
	var buf [32]byte
	switch {
	case math.IsNaN(v):
		b.WriteString("NaN")
	case math.IsInf(v, 1):
		b.WriteString("+Inf")
	case math.IsInf(v, -1):
		b.WriteString("-Inf")
	default:
		b.Write(strconv.AppendFloat(buf[:0], v, 'g', -1, 64))
	}
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = fnvByte(h, s[i])
	}
	return h
}

func fnvByte(h uint64, c byte) uint64 { return (h ^ uint64(c)) * fnvPrime }
