package config

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// TraceMode says when a module traces the routers under its segments:
// never, on_violation (as context for a segment over its SLA, as SNMP
// context is asked), or always.
type TraceMode string

// Trace modes.
const (
	TraceNever       TraceMode = "never"
	TraceOnViolation TraceMode = "on_violation"
	TraceAlways      TraceMode = "always"
)

// UnmarshalYAML accepts the three modes.
func (m *TraceMode) UnmarshalYAML(n *yaml.Node) error {
	switch TraceMode(n.Value) {
	case TraceNever, TraceOnViolation, TraceAlways:
		*m = TraceMode(n.Value)
		return nil
	}
	return fmt.Errorf("line %d: trace %q unknown: use never, on_violation or always", n.Line, n.Value)
}

// Continuous traces: every trace_interval, and within these bounds.
const (
	DefaultTraceInterval = 5 * time.Minute
	minTraceInterval     = time.Second
	maxTraceInterval     = 24 * time.Hour
)

// validateTrace fills in the module's trace mode (on_violation; never for
// an http module, whose proxies do not trace, and a stamp module, whose
// reflector has no TCP connection to trace).
func (m *Module) validateTrace(path string) error {
	if m.Trace == "" {
		m.Trace = TraceOnViolation
		if m.IsHTTP() || m.IsSTAMP() {
			m.Trace = TraceNever
		}
	}
	switch {
	case m.IsHTTP() && m.Trace != TraceNever:
		return bad(path+".trace", "%s: HTTP proxies do not trace; use trace: never (or leave it out)", m.Trace)
	case m.IsSTAMP() && m.Trace != TraceNever:
		return bad(path+".trace", "%s: traces follow a relay chain's TCP connections, a STAMP reflector has none; use trace: never (or leave it out)", m.Trace)
	}
	return nil
}

// validateTraceInterval fills in and checks a continuous entry's
// trace_interval.
func (e *Continuous) validateTraceInterval(path string) error {
	if e.TraceInterval == 0 {
		e.TraceInterval = Duration(DefaultTraceInterval)
	}
	if d := time.Duration(e.TraceInterval); d < minTraceInterval || d > maxTraceInterval {
		return bad(path+".trace_interval", "%v out of range: use %v to %v", d, minTraceInterval, maxTraceInterval)
	}
	return nil
}
