package config

import (
	"fmt"
	"math"
	"time"
)

// Continuous is one chain probed without pause between scrapes: the
// exporter keeps its connections open and sends a probe every Interval,
// into histograms on /metrics.
type Continuous struct {
	// Target is what /probe would take: host:port, or a URL for an http
	// module; the module must allow it.
	Target string `yaml:"target"`
	// Module names the module whose prober, SLAs and timeout apply.
	Module string `yaml:"module"`
	// Interval between probes (1s).
	Interval Duration `yaml:"interval"`
	// Buckets are the classic histogram buckets of segment rtts and hop
	// times, in seconds (about 50 µs to 10 s, doubling); a native
	// histogram is kept too.
	Buckets []float64 `yaml:"buckets,omitempty"`
	// TraceInterval is how often the entry traces the routers under its
	// segments (5m), unless its module says trace: never.
	TraceInterval Duration `yaml:"trace_interval,omitempty"`
}

// Continuous defaults and bounds.
const (
	DefaultContinuousInterval = time.Second
	minContinuousInterval     = 10 * time.Millisecond
	maxContinuousInterval     = time.Hour
	maxBuckets                = 64
)

// DefaultBuckets are 50 µs doubling to about 13 s: 19 buckets, enough to
// place a loopback segment, a continent and a timeout apart.
func DefaultBuckets() []float64 {
	out := make([]float64, 0, 19)
	for b := 50e-6; b < 14; b *= 2 {
		out = append(out, math.Round(b*1e6)/1e6)
	}
	return out
}

func (c *Config) validateContinuous() error {
	seen := map[[2]string]int{}
	for i := range c.Continuous {
		e := &c.Continuous[i]
		path := fmt.Sprintf("continuous[%d]", i)
		if e.Module == "" {
			return bad(path+".module", "missing: name the module that probes this target")
		}
		m := c.Modules[e.Module]
		if m == nil {
			return bad(path+".module", "module %q is not defined: known modules are %v", e.Module, sortedKeys(c.Modules))
		}
		if e.Target == "" {
			return bad(path+".target", "missing: give the chain's first hop (host:port) or, for an http module, its URL")
		}
		if err := m.Allows(e.Target); err != nil {
			return bad(path+".target", "%v (module %s)", err, e.Module)
		}
		key := [2]string{e.Target, e.Module}
		if j, dup := seen[key]; dup {
			return bad(path, "target %s with module %s is already continuous[%d]", e.Target, e.Module, j)
		}
		seen[key] = i
		if e.Interval == 0 {
			e.Interval = Duration(DefaultContinuousInterval)
		}
		if d := time.Duration(e.Interval); d < minContinuousInterval || d > maxContinuousInterval {
			return bad(path+".interval", "%v out of range: use %v to %v", d, minContinuousInterval, maxContinuousInterval)
		}
		if err := e.validateTraceInterval(path); err != nil {
			return err
		}
		if len(e.Buckets) == 0 {
			e.Buckets = DefaultBuckets()
		}
		if len(e.Buckets) > maxBuckets {
			return bad(path+".buckets", "%d buckets: at most %d (each is a series per segment and hop)", len(e.Buckets), maxBuckets)
		}
		for k, b := range e.Buckets {
			if b <= 0 || math.IsInf(b, 0) || math.IsNaN(b) || k > 0 && b <= e.Buckets[k-1] {
				return bad(fmt.Sprintf("%s.buckets[%d]", path, k), "%v: buckets are positive seconds in increasing order (+Inf is implied)", b)
			}
		}
	}
	return nil
}
