package collector

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/subsegment/subsegment_exporter/snmp"
)

type collectFunc func(ch chan<- prometheus.Metric)

func (f collectFunc) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(f, ch) }
func (f collectFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

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
# HELP subsegment_sla_violation_info 1 while the segment is out of its SLA, with the variables of the hop (from its agent, or in band) as labels.
# TYPE subsegment_sla_violation_info gauge
subsegment_sla_violation_info{from="b",hop="c",if_in_errors="12",load1="7.2",source="snmp",to="c"} 1
subsegment_sla_violation_info{from="c",hop="d",if_in_errors="",load1="0.5",source="inband",to="d"} 1
# HELP subsegment_snmp_up Whether every variable asked of the hop's agent was read (0 on timeout, auth failure, missing object).
# TYPE subsegment_snmp_up gauge
subsegment_snmp_up{hop="c"} 1
subsegment_snmp_up{hop="z"} 0
`
	col := collectFunc(SNMPContext{Context: c}.Collect)
	if err := testutil.CollectAndCompare(col, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	// Values join onto the SLA alert through the info metric; the hop z
	// (no values) has no info metric, d -> z stays visible via
	// subsegment_segment_sla_exceeded.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(col)
	if _, err := reg.Gather(); err != nil {
		t.Errorf("inconsistent label sets: %v", err)
	}
}
