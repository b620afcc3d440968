package collector

import (
	"errors"
	"strings"
	"testing"

	"github.com/subsegment/subsegment_exporter/snmp"
)

func TestSNMPContextLabels(t *testing.T) {
	c := &snmp.Context{
		Hops: []snmp.HopResult{
			{Hop: "c", Source: snmp.SourceSNMP, Up: true, Values: []snmp.Value{{Name: "load1", Value: 7.2000001}, {Name: "if_in_errors", Value: 12}}},
			{Hop: "z", Source: snmp.SourceSNMP, Up: false, Errors: []snmp.Error{{Reason: snmp.ReasonAuth, Err: errors.New("wrong digest")}}},
			{Hop: "d", Source: snmp.SourceInband, Up: true, Values: []snmp.Value{{Name: "load1", Value: 0.5}}},
		},
		Violations: []snmp.Violation{{From: "b", To: "c", Ratio: 2.5, Hops: []string{"c"}}, {From: "c", To: "d", Ratio: 1.2, Hops: []string{"d"}}, {From: "d", To: "z", Hops: []string{"z"}}},
	}
	want := `
# HELP subsegment_hop_snmp_value A variable of the hop: from its agent when a segment it is on broke its SLA (source=snmp), or attached by the hop to the probe (source=inband).
# TYPE subsegment_hop_snmp_value gauge
subsegment_hop_snmp_value{hop="c",name="if_in_errors",source="snmp"} 12
subsegment_hop_snmp_value{hop="c",name="load1",source="snmp"} 7.2000001
subsegment_hop_snmp_value{hop="d",name="load1",source="inband"} 0.5
# HELP subsegment_sla_violation_info 1 while the segment (from, to) or the hop's residence (from and to empty) is out of its SLA, with the variables of the hop (from its agent, or in band) as labels.
# TYPE subsegment_sla_violation_info gauge
subsegment_sla_violation_info{from="b",hop="c",if_in_errors="12",load1="7.2",source="snmp",to="c"} 1
subsegment_sla_violation_info{from="c",hop="d",if_in_errors="",load1="0.5",source="inband",to="d"} 1
# HELP subsegment_snmp_up Whether every variable asked of the hop's agent was read (0 on timeout, auth failure, missing object).
# TYPE subsegment_snmp_up gauge
subsegment_snmp_up{hop="c"} 1
subsegment_snmp_up{hop="z"} 0
`
	var e Exposition
	WriteSNMPContext(&e, c)
	// Values join onto the SLA alert through the info metric; the hop z
	// (no values) has no info metric, d -> z stays visible via
	// subsegment_segment_sla_exceeded. Every info metric has the same
	// label names.
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	if got := normalize(t, render(t, &e)); got != normalize(t, want) {
		t.Errorf("got:\n%s\nwant:\n%s", got, normalize(t, want))
	}
}

func TestSNMPContextWithoutViolationsHasNoInfo(t *testing.T) {
	var e Exposition
	WriteSNMPContext(&e, &snmp.Context{Hops: []snmp.HopResult{{Hop: "c", Source: snmp.SourceInband, Up: true, Values: []snmp.Value{{Name: "load1", Value: 1}}}}})
	WriteSNMPContext(&e, nil)
	out := render(t, &e)
	normalize(t, out)
	if e.Err() != nil || strings.Contains(out, "violation") || !strings.Contains(out, "subsegment_hop_snmp_value{hop=\"c\",name=\"load1\",source=\"inband\"} 1\n") {
		t.Errorf("got %v:\n%s", e.Err(), out)
	}
}
