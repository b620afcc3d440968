package snmp

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
)

// Context is what was learnt about the hops of a probe run: their agents'
// answers for segments out of SLA, and the variables hops attached in band.
type Context struct {
	Hops []HopResult
	// Violations are the segments out of their SLA, with the hops whose
	// values explain them.
	Violations []Violation
}

// ByHop is the context's values by hop and variable: what the chain page
// shows next to a hop.
func (c *Context) ByHop() map[string]map[string]float64 {
	if c == nil || len(c.Hops) == 0 {
		return nil
	}
	out := map[string]map[string]float64{}
	for _, h := range c.Hops {
		for _, v := range h.Values {
			if out[h.Hop] == nil {
				out[h.Hop] = map[string]float64{}
			}
			out[h.Hop][v.Name] = v.Value
		}
	}
	return out
}

// Violation is a segment (From, To) or a hop's residence (Hop) over its
// SLA, with the hops whose values explain it.
type Violation struct {
	From, To, Hop string
	Ratio         float64
	Hops          []string
}

// What names the violation for people: "segment b -> c" or "hop c".
func (v Violation) What() string {
	if v.Hop != "" {
		return "hop " + v.Hop
	}
	return "segment " + v.From + " -> " + v.To
}

// Investigate queries the agents of the hops of every segment out of its
// SLA (as the module's snmp section says), and of every hop over its
// residence SLA (the hop itself: a loaded host gets its own load asked),
// and collects in-band values.
func Investigate(ctx context.Context, q *Querier, cfg *config.Config, m *config.Module, r *prober.Result, verdicts []sla.Verdict) *Context {
	c := &Context{}
	for _, h := range r.Hops {
		if len(h.Vars) == 0 {
			continue
		}
		hr := HopResult{Hop: h.Name, Source: SourceInband, Up: true}
		for _, name := range sortedVarNames(h.Vars) {
			hr.Values = append(hr.Values, Value{Name: name, Value: h.Vars[name]})
		}
		c.Hops = append(c.Hops, hr)
	}
	var reqs []Request
	reqIndex := map[string]int{}
	for _, v := range verdicts {
		if !v.Exceeded {
			continue
		}
		viol := Violation{From: v.From, To: v.To, Hop: v.Hop, Ratio: v.Ratio}
		var hops []string
		switch {
		case m.SNMP != nil:
			hops = m.SNMP.HopsFor(v.Subject())
		case v.Hop != "":
			hops = []string{v.Hop}
		default:
			hops = []string{v.To}
		}
		for _, hop := range hops {
			viol.Hops = append(viol.Hops, hop)
			if m.SNMP == nil {
				continue
			}
			agent := m.SNMP.Hops[hop]
			if agent == nil {
				continue
			}
			i, ok := reqIndex[hop]
			if !ok {
				i = len(reqs)
				reqIndex[hop] = i
				reqs = append(reqs, Request{Target: Target{Hop: hop, Address: agent.Target, Auth: cfg.Auths[agent.Auth]}})
			}
			reqs[i].Vars = mergeVars(reqs[i].Vars, m.SNMP.VariablesFor(v.Subject(), v.Ratio))
		}
		c.Violations = append(c.Violations, viol)
	}
	if len(reqs) > 0 {
		mq := *q
		mq.Timeout, mq.Retries = time.Duration(m.SNMP.Timeout), m.SNMP.RetryCount()
		c.Hops = append(c.Hops, mq.Query(ctx, reqs)...)
	}
	return c
}

func mergeVars(have, add []config.Variable) []config.Variable {
	for _, v := range add {
		dup := false
		for _, h := range have {
			dup = dup || h.Name == v.Name
		}
		if !dup {
			have = append(have, v)
		}
	}
	return have
}

// FormatValue renders a value for a label with bounded precision: at most
// four decimals and no float noise (7.2, not 7.2000001).
func FormatValue(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	if math.Abs(v) >= 1e15 {
		return strconv.FormatFloat(v, 'g', 15, 64)
	}
	return strconv.FormatFloat(math.Round(v*1e4)/1e4, 'f', -1, 64)
}

// Debug describes the context for debug=true output.
func (c *Context) Debug() string {
	var b strings.Builder
	if len(c.Violations) == 0 && len(c.Hops) == 0 {
		return "no segment out of its SLA and no in-band variables: nothing queried\n"
	}
	for _, v := range c.Violations {
		fmt.Fprintf(&b, "%s is out of its SLA (%.2fx): context from %s\n", v.What(), v.Ratio, strings.Join(v.Hops, ", "))
	}
	for _, h := range c.Hops {
		status := "up"
		if !h.Up {
			status = "DOWN"
		}
		fmt.Fprintf(&b, "hop %s (%s, %s):", h.Hop, h.Source, status)
		for _, v := range h.Values {
			fmt.Fprintf(&b, " %s=%s", v.Name, FormatValue(v.Value))
		}
		b.WriteString("\n")
		for _, e := range h.Errors {
			fmt.Fprintf(&b, "  error (%s): %v\n", e.Reason, e.Err)
		}
	}
	return b.String()
}

func sortedVarNames(m map[string]float64) []string { return slices.Sorted(maps.Keys(m)) }
