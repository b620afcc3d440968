package collector

import (
	"slices"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/snmp"
)

var (
	snmpUp    = mustFamily(namespace+"_snmp_up", "Whether every variable asked of the hop's agent was read (0 on timeout, auth failure, missing object).", "hop")
	snmpValue = mustFamily(namespace+"_hop_snmp_value", "A variable of the hop: from its agent when a segment it is on broke its SLA (source=snmp), or attached by the hop to the probe (source=inband).", "hop", "name", "source")
)

const violationHelp = "1 while the segment (from, to) or the hop's residence (from and to empty) is out of its SLA, with the variables of the hop (from its agent, or in band) as labels."

// WriteSNMPContext adds the context of a probe run to the /probe answer
// e: up and values per hop, and one subsegment_sla_violation_info per
// violating segment and hop with the hop's values as labels.
func WriteSNMPContext(e *Exposition, c *snmp.Context) {
	if c == nil {
		return
	}
	writeHopValues(e, c.Hops)
	if len(c.Violations) == 0 {
		return
	}
	names := variableNames(c.Hops)
	info, err := NewFamily(namespace+"_sla_violation_info", violationHelp, append([]string{"from", "to", "hop", "source"}, names...)...)
	if err != nil {
		e.Fail(err)
		return
	}
	for _, v := range c.Violations {
		for _, hop := range v.Hops {
			for _, h := range c.Hops {
				if h.Hop == hop && len(h.Values) > 0 {
					e.Gauge(info, 1, violationLabels(v.From, v.To, h, names)...)
				}
			}
		}
	}
}

// writeHopValues writes each hop's snmp_up (for agents) and its values.
func writeHopValues(e *Exposition, hops []snmp.HopResult) {
	for _, h := range hops {
		if h.Source == snmp.SourceSNMP {
			e.Gauge(snmpUp, boolValue(h.Up), h.Hop)
		}
		for _, v := range h.Values {
			e.Gauge(snmpValue, v.Value, h.Hop, v.Name, h.Source)
		}
	}
}

// variableNames is the union of the hops' variable names that are label
// names, sorted: every info metric of one answer carries the same label
// names, and a hop without one leaves it empty (absent).
func variableNames(hops []snmp.HopResult) []string {
	var names []string
	for _, h := range hops {
		for _, v := range h.Values {
			if peer.ValidateVarName(v.Name) == nil && !slices.Contains(names, v.Name) {
				names = append(names, v.Name)
			}
		}
	}
	slices.Sort(names)
	return names
}

// violationLabels are the label values of one info metric: the segment
// (or, with from and to empty, the hop's residence), the hop, its source,
// and its value of each variable name ("" where it has none).
func violationLabels(from, to string, h snmp.HopResult, names []string) []string {
	labels := append(make([]string, 0, 4+len(names)), from, to, h.Hop, h.Source)
	for _, n := range names {
		val := ""
		for _, hv := range h.Values {
			if hv.Name == n {
				val = snmp.FormatValue(hv.Value)
			}
		}
		labels = append(labels, val)
	}
	return labels
}
