// Package report prints a probe run the way a person reads it (an
// mtr-like table) or the way a program does (stable JSON).
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"

	"github.com/subsegment/subsegment_exporter/prober"
)

// Table writes one row per segment and one per hop, marking the slowest
// segment, and the failure when the chain broke.
func Table(w io.Writer, r *prober.Result) error {
	fmt.Fprintf(w, "subsegment probe %s -> %s: %d probes, %d hops reached, %.3fs\n\n", r.Source, r.Target, r.Probes, r.HopsReached, r.Duration.Seconds())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEGMENT\tRTT MIN\tMEDIAN\tMAX\tJITTER\tCONNECT\tTCP RTT/MIN\tRETRANS\tPMTU\tONE-WAY FWD/RET\t")
	for _, s := range r.Segments {
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
			row = append(row, ms(s.RTT.Min), ms(s.RTT.Median), ms(s.RTT.Max), ms(s.Jitter))
		}
		if s.Connect != nil {
			row = append(row, ms(*s.Connect))
		} else {
			row = append(row, "-")
		}
		if s.TCP != nil {
			row = append(row, ms(s.TCP.RTT)+"/"+ms(s.TCP.MinRTT), strconv.FormatUint(uint64(s.TCP.Retransmits), 10), strconv.FormatUint(uint64(s.TCP.PMTU), 10))
		} else {
			row = append(row, "-", "-", "-")
		}
		if s.OneWay != nil {
			row = append(row, fmt.Sprintf("%s/%s ±%s", ms(s.OneWay.Forward), ms(s.OneWay.Return), ms(s.OneWay.ErrorBound)))
		} else {
			row = append(row, "-")
		}
		for _, c := range row {
			fmt.Fprint(tw, c, "\t")
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw, "\t\t\t\t\t\t\t\t\t\t")
	fmt.Fprintln(tw, "HOP\tRESIDENCE MIN\tMEDIAN\tMAX\tCLOCK\t\t\t\t\t\t")
	for _, h := range r.Hops {
		clock := "unsynced"
		if h.ClockSynced {
			clock = "synced"
		}
		if h.Residence.Max == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t%s\t\t\t\t\t\t\n", h.Name, clock)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\t\t\t\t\t\n", h.Name, ms(h.Residence.Min), ms(h.Residence.Median), ms(h.Residence.Max), clock)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, h := range r.Hops {
		if len(h.Vars) > 0 {
			fmt.Fprintf(w, "\n%s reports:", h.Name)
			for _, name := range sortedKeys(h.Vars) {
				fmt.Fprintf(w, " %s=%s", name, strconv.FormatFloat(h.Vars[name], 'g', 6, 64))
			}
			fmt.Fprintln(w)
		}
	}
	if r.Failure != nil {
		fmt.Fprintf(w, "\nCHAIN BROKEN: segment %s -> %s failed (%s): %s\n", r.Failure.From, r.Failure.To, r.Failure.Reason, r.Failure.Message)
	} else if s := r.SlowestSegment(); s != nil && len(r.Segments) > 1 {
		fmt.Fprintf(w, "\n* slowest segment: %s -> %s, median %s\n", s.From, s.To, ms(s.RTT.Median))
	}
	return nil
}

// JSON writes the result as the stable JSON documented in the README.
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

func sortedKeys(m map[string]float64) []string { return slices.Sorted(maps.Keys(m)) }
