package collector

import (
	"regexp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/snmp"
)

var (
	snmpUp    = prometheus.NewDesc(namespace+"_snmp_up", "Whether every variable asked of the hop's agent was read (0 on timeout, auth failure, missing object).", []string{"hop"}, nil)
	snmpValue = prometheus.NewDesc(namespace+"_hop_snmp_value", "A variable of the hop: from its agent when a segment it is on broke its SLA (source=snmp), or attached by the hop to the probe (source=inband).", []string{"hop", "name", "source"}, nil)

	labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	fixedLabels = map[string]bool{"from": true, "to": true, "hop": true, "source": true}
)

// SNMPContext renders the context of a probe run.
type SNMPContext struct {
	Context *snmp.Context
}

// Collect sends the context's metrics: up and values per hop, and one
// subsegment_sla_violation_info per violating segment and hop with the
// hop's values as labels.
func (s SNMPContext) Collect(ch chan<- prometheus.Metric) {
	c := s.Context
	if c == nil {
		return
	}
	for _, h := range c.Hops {
		if h.Source == snmp.SourceSNMP {
			ch <- prometheus.MustNewConstMetric(snmpUp, prometheus.GaugeValue, boolValue(h.Up), h.Hop)
		}
		for _, v := range h.Values {
			ch <- prometheus.MustNewConstMetric(snmpValue, prometheus.GaugeValue, v.Value, h.Hop, v.Name, h.Source)
		}
	}
	// Every info metric of the answer carries the same label names: the
	// union of the variables; a hop without one leaves it empty (absent).
	var names []string
	for _, h := range c.Hops {
		for _, v := range h.Values {
			if labelNameRE.MatchString(v.Name) && !fixedLabels[v.Name] && !slices.Contains(names, v.Name) {
				names = append(names, v.Name)
			}
		}
	}
	slices.Sort(names)
	desc := prometheus.NewDesc(namespace+"_sla_violation_info",
		"1 while the segment is out of its SLA, with the variables of the hop (from its agent, or in band) as labels.",
		append([]string{"from", "to", "hop", "source"}, names...), nil)
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
				ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, 1, labels...)
			}
		}
	}
}
