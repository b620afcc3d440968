// Package report prints a probe run the way a person reads it (an
// mtr-like table) or the way a program does (stable JSON).
//
// The JSON is documented in docs/probe.md. Layering
// (internal/architecture_test.go): floor 5; it may import the source end,
// never relay, internal/exporter or cmd.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/subsegment/subsegment_exporter/internal/source/timing"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// Table writes one row per segment and one per hop, marking the slowest
// segment of a working chain, and the failure when the chain broke. Every
// string in it was validated when it arrived (names, messages).
func Table(w io.Writer, r *prober.Result) error {
	if _, err := fmt.Fprintf(w, "subsegment probe %s -> %s: %s, %s reached, %.3fs\n\n", r.Source, r.Target,
		count(r.Probes, "probe", "probes"), count(r.HopsReached, "hop", "hops"), r.Duration.Seconds()); err != nil {
		return err
	}
	rows := [][]string{{"SEGMENT", "RTT MIN", "MEDIAN", "MAX", "JITTER", "CONNECT", "TCP RTT/MIN", "RETRANS", "PMTU", "ONE-WAY FWD/RET"}}
	for i := range r.Segments {
		rows = append(rows, segmentRow(r, &r.Segments[i]))
	}
	if err := writeAligned(w, rows); err != nil {
		return err
	}
	rows = [][]string{{"HOP", "RESIDENCE MIN", "MEDIAN", "MAX", "WAIT", "STAMPS", "CLOCK"}}
	for i := range r.Hops {
		rows = append(rows, hopRow(r, i))
	}
	if _, err := fmt.Fprintln(w); err != nil {
		return err
	}
	if err := writeAligned(w, rows); err != nil {
		return err
	}
	if err := writePaths(w, r); err != nil {
		return err
	}
	return writeNotes(w, r)
}

func segmentRow(r *prober.Result, s *prober.SegmentResult) []string {
	mark := ""
	if s.Slowest && len(r.Segments) > 1 {
		mark = " *"
	}
	if r.Failure != nil && s.From == r.Failure.From && s.To == r.Failure.To {
		mark = " BROKEN"
	}
	row := []string{s.From + " -> " + s.To + mark}
	if s.Samples == 0 {
		row = append(row, "-", "-", "-", "-")
	} else {
		row = append(row, msAt(s.RTT.Min, s.Resolution), msAt(s.RTT.Median, s.Resolution), msAt(s.RTT.Max, s.Resolution), msAt(s.Jitter, s.Resolution))
	}
	if s.Connect != nil {
		row = append(row, ms(*s.Connect))
	} else {
		row = append(row, "-")
	}
	switch {
	case s.TCP != nil:
		row = append(row, ms(s.TCP.RTT)+"/"+ms(s.TCP.MinRTT), strconv.FormatUint(uint64(s.Retransmits), 10), strconv.FormatUint(uint64(s.TCP.PMTU), 10))
	case s.TCPFar != nil:
		row = append(row, "-", strconv.FormatUint(uint64(s.Retransmits), 10), "-")
	default:
		row = append(row, "-", "-", "-")
	}
	if s.OneWay != nil {
		row = append(row, fmt.Sprintf("%s/%s ±%s", ms(s.OneWay.Forward), ms(s.OneWay.Return), ms(s.OneWay.ErrorBound)))
	} else {
		row = append(row, "-")
	}
	return row
}

func hopRow(r *prober.Result, i int) []string {
	h := r.Hops[i]
	clock := "unsynced"
	switch {
	case r.HTTP && i > 0:
		clock = "-" // proxies report durations only
	case h.ClockSynced:
		clock = "synced"
	}
	stamps := "read"
	switch {
	case h.HTTPHeader:
		stamps = "header"
	case h.KernelTimestamps:
		stamps = "kernel"
	}
	if h.Residence.Max == 0 {
		if !h.HTTPHeader {
			stamps = "-"
		}
		return []string{h.Name, "-", "-", "-", "-", stamps, clock}
	}
	wait := ms(h.Wait.Median)
	if h.HTTPHeader || h.STAMP {
		wait = "-"
	}
	return []string{h.Name, msAt(h.Residence.Min, h.Resolution), msAt(h.Residence.Median, h.Resolution), msAt(h.Residence.Max, h.Resolution), wait, stamps, clock}
}

// writeAligned writes rows in columns, without trailing spaces.
func writeAligned(w io.Writer, rows [][]string) error {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, row := range rows {
		if _, err := io.WriteString(tw, strings.Join(row, "\t")+"\n"); err != nil {
			return err
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range strings.SplitAfter(b.String(), "\n") {
		if line == "" {
			continue
		}
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	return nil
}

func writeNotes(w io.Writer, r *prober.Result) error {
	var b strings.Builder
	for _, h := range r.Hops {
		if len(h.Vars) > 0 {
			fmt.Fprintf(&b, "\n%s reports:", h.Name)
			for _, name := range slices.Sorted(maps.Keys(h.Vars)) {
				fmt.Fprintf(&b, " %s=%s", name, strconv.FormatFloat(h.Vars[name], 'g', 6, 64))
			}
			b.WriteString("\n")
		}
	}
	writeSTAMP(&b, r)
	if r.DuplicateNames {
		b.WriteString("\nSome hops share a name: they are numbered in chain order (name#2, name#3); give each relay its own --relay.name.\n")
	}
	if r.Failure != nil {
		fmt.Fprintf(&b, "\nCHAIN BROKEN: segment %s -> %s failed (%s): %s\n", r.Failure.From, r.Failure.To, r.Failure.Reason, r.Failure.Message)
	} else if s := r.SlowestSegment(); s != nil && len(r.Segments) > 1 {
		fmt.Fprintf(&b, "\n* slowest segment: %s -> %s, median %s%s\n", s.From, s.To, msAt(s.RTT.Median, s.Resolution), pathNote(s))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// JSON writes the result as the stable JSON documented in docs/probe.md.
func JSON(w io.Writer, r *prober.Result) error {
	out := struct {
		*prober.Result
		DurationSeconds float64 `json:"duration_seconds"`
	}{r, r.Duration.Seconds()}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func ms(seconds float64) string { return strconv.FormatFloat(seconds*1000, 'f', 3, 64) + "ms" }

// msAt writes milliseconds with no more digits than a resolution (in
// seconds; 0 for the microseconds of our own stamps) carries: an nginx
// stamp's 1 ms shows as 20ms, never 20.000ms.
func msAt(seconds, resolution float64) string {
	return strconv.FormatFloat(seconds*1000, 'f', timing.MillisDecimals(resolution), 64) + "ms"
}

func count(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
