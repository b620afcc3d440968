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
	for _, h := range c.Hops {
		if h.Source == snmp.SourceSNMP {
			e.Gauge(snmpUp, boolValue(h.Up), h.Hop)
		}
		for _, v := range h.Values {
			e.Gauge(snmpValue, v.Value, h.Hop, v.Name, h.Source)
		}
	}
	if len(c.Violations) == 0 {
		return
	}
	// Every info metric of the answer carries the same label names: the
	// union of the variables; a hop without one leaves it empty (absent).
	var names []string
	for _, h := range c.Hops {
		for _, v := range h.Values {
			if peer.ValidateVarName(v.Name) == nil && !slices.Contains(names, v.Name) {
				names = append(names, v.Name)
			}
		}
	}
	slices.Sort(names)
	info, err := NewFamily(namespace+"_sla_violation_info", violationHelp, append([]string{"from", "to", "hop", "source"}, names...)...)
	if err != nil {
		e.Fail(err)
		return
	}
	for _, v := range c.Violations {
		for _, hop := range v.Hops {
			for _, h := range c.Hops {
				if h.Hop != hop || len(h.Values) == 0 {
					continue
				}
				labels := append(make([]string, 0, 4+len(names)), v.From, v.To, hop, h.Source)
				for _, n := range names {
					val := ""
					for _, hv := range h.Values {
						if hv.Name == n {
							val = snmp.FormatValue(hv.Value)
						}
					}
					labels = append(labels, val)
				}
				e.Gauge(info, 1, labels...)
			}
		}
	}
}
