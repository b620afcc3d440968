// Package prober is the source end of a chain. Run probes a chain of relays
// (tcp.go), of HTTP proxies (http.go), or a STAMP reflector (stamp.go): it
// opens one connection to the first hop (a UDP socket for STAMP), sends a
// warm-up probe that opens every downstream connection (and reports their
// connect times), then the measured probes, and turns
// what the hops stamped into per-segment and per-hop statistics, keyed by
// each hop's identity: result.go is the model, build.go the one place a
// result is built. Session keeps a chain open for continuous probing. The
// exporter, the probe command and the Nagios check all run it.
//
// Layering (internal/architecture_test.go): floor 3; it may import timing,
// internal/wire, internal/config and internal/host, never relay, snmp,
// collector, internal/output or internal/exporter.
package prober

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/source/timing"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/transport"
)

// HiddenHop names what lies beyond a relay running with
// --remove-perf-headers: its downstream time is reported as one segment.
const HiddenHop = "hidden"

// Options describe one run of probes through a chain.
type Options struct {
	// Target is the first hop, host:port.
	Target string
	// Source names hop 0, this process, in segment labels.
	Source string
	// Count is the number of measured probes (the warm-up comes on top).
	Count    int
	Interval time.Duration
	// PayloadBytes pads every probe so that an MTU/MSS black hole on a
	// segment makes that segment fail.
	PayloadBytes int
	// Timeout bounds each probe's round trip; the context's deadline
	// bounds the whole run.
	Timeout       time.Duration
	MaxFrameBytes int
	Keys          frame.Keys
	Clock         clock.Clock
	// Realtime converts kernel receive stamps (nil: the system's clock).
	Realtime func() int64
	// Dial opens the TCP connection to the first hop (nil: plainly); TLS,
	// when set, makes it TLS.
	Dial func(ctx context.Context, address string) (net.Conn, error)
	TLS  *tls.Config
	// AnnotateWarmup asks every hop to attach its local variables to the
	// warm-up probe's record.
	AnnotateWarmup bool
	// AnnotateAfter, when it returns true for the measured result, sends
	// one more probe asking for the hops' local variables.
	AnnotateAfter func(*Result) bool
	// Trace, when set, asks for the segments' paths after the measured
	// probes (trace.go); relay chains only.
	Trace *TraceOptions
	// HTTP, when set, makes Target a URL probed through HTTP proxies
	// (http.go); TLS then applies to https targets.
	HTTP *HTTPOptions
	// STAMP, when set, makes Target a STAMP reflector (host:port, or
	// stamp://host:port) measured with STAMP test packets (stamp.go).
	STAMP *STAMPOptions
	// Names remembers hop names across runs, to name a first hop that
	// cannot be reached; may be nil.
	Names *NameCache
	// ReuseResults makes a Session renew one result in place for every
	// Probe (valid until the next), for a caller that records each before
	// the next (continuous probing): no allocation per probe.
	ReuseResults bool
	Logger       *slog.Logger
}

// Validate reports the first bad option.
func (o *Options) Validate() error {
	switch {
	case o.STAMP != nil:
		if err := o.STAMP.validate(o); err != nil {
			return err
		}
	case o.HTTP != nil:
		if _, err := peer.ParseHTTPTarget(o.Target); err != nil {
			return fmt.Errorf("target: %w", err)
		}
		if o.PayloadBytes != 0 {
			return fmt.Errorf("payload bytes are for relay chains, not HTTP")
		}
	default:
		if err := peer.ValidateAddress(o.Target); err != nil {
			return fmt.Errorf("target: %w", err)
		}
	}
	if err := peer.ValidateName(o.Source); err != nil {
		return fmt.Errorf("source name: %w", err)
	}
	if o.Count < 1 || o.Count > 10000 {
		return fmt.Errorf("probe count %d out of range: use 1 to 10000", o.Count)
	}
	if o.Interval < 0 {
		return fmt.Errorf("probe interval %v is negative", o.Interval)
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("probe timeout %v must be positive", o.Timeout)
	}
	return frame.CheckPayload(o.PayloadBytes, o.maxFrame(), frame.DefaultMaxHops)
}

func defaultTLS() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS12} }

func (o *Options) maxFrame() int {
	if o.MaxFrameBytes > 0 {
		return o.MaxFrameBytes
	}
	return frame.DefaultMaxFrameBytes
}

func (o *Options) dialer() transport.Dialer {
	// No TCP keep-alive: a run's connection lives for seconds at most,
	// and its four setsockopt calls were a tenth of a /probe's syscalls.
	return transport.Dialer{Dial: o.Dial, TLS: o.TLS, KeepAlive: -1, Clocks: rxstamp.Clocks{Mono: o.Clock.Monotonic, Real: o.Realtime, MaxWait: o.Timeout}}
}

// ConfiguredFirstHop is the name of the chain's first hop from the
// options alone, without a word from any peer: the STAMP reflector's
// name, the first of the HTTP hops or else the HTTP target's address,
// the relay target's address. A caller that must not name a series
// after what a peer said (continuous probing, for a failed warm-up)
// counts such a failure on the segment to it.
func (o *Options) ConfiguredFirstHop() string {
	switch {
	case o.STAMP != nil:
		return o.STAMP.reflectorName(o.Target)
	case o.HTTP != nil && len(o.HTTP.Hops) > 0:
		return o.HTTP.Hops[0]
	case o.HTTP != nil:
		if t, err := peer.ParseHTTPTarget(o.Target); err == nil {
			return t.Address
		}
	}
	return o.Target
}

// NameCache remembers, per target, the name its first hop reported. It
// holds at most maxCachedNameBytes of targets and names, so that /probe
// requests for ever new targets (as many as the modules' target patterns
// allow) cannot grow it without bound; when full, a new target's name
// takes old ones' place.
type NameCache struct {
	mu sync.Mutex
	m  map[string]string
	// bytes is what m holds, by cachedBytes.
	bytes int
	// version changes with every name the cache changes or forgets: a
	// prober puts a name it put before again only when the cache changed
	// since (keep).
	version atomic.Uint64
}

// maxCachedNameBytes keeps far more targets than an exporter probes
// continuously (10 000 in the scale figures, docs/scale.md: some 1 MB):
// a cache smaller than them forgot names as it filled, and every entry's
// next probe put its own again.
const maxCachedNameBytes = 8 << 20

// cachedBytes is what a target's name costs the cache: both strings and
// the map's own share.
func cachedBytes(target, name string) int { return len(target) + len(name) + 64 }

func (c *NameCache) get(target string) string {
	if c != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		if v, ok := c.m[target]; ok {
			return v
		}
	}
	return target
}

// chainOf is the hops an HTTP target's last good response named,
// outermost first.
func (c *NameCache) chainOf(target string) []string {
	if v := c.get("chain " + target); v != "chain "+target {
		return strings.Fields(v)
	}
	return nil
}

func (c *NameCache) putChain(target string, hops []string) {
	if len(hops) > 0 {
		c.put("chain "+target, strings.Join(hops, " "))
	}
}

// put remembers target's name and returns the cache's version after it.
func (c *NameCache) put(target, name string) uint64 {
	if c == nil || name == "" {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]string{}
	}
	old, ok := c.m[target]
	if ok && old == name {
		return c.version.Load()
	}
	if ok {
		delete(c.m, target)
		c.bytes -= cachedBytes(target, old)
	}
	for k, v := range c.m { // arbitrary ones: map order is random
		if c.bytes+cachedBytes(target, name) <= maxCachedNameBytes {
			break
		}
		delete(c.m, k)
		c.bytes -= cachedBytes(k, v)
	}
	c.m[target] = name
	c.bytes += cachedBytes(target, name)
	return c.version.Add(1)
}

// cachedName is what a prober put into a NameCache last: the name, and
// the cache's version right after.
type cachedName struct {
	name    string
	version uint64
}

// keep puts target's name unless last says it is there already (the
// same name, and the cache unchanged since): a continuous entry's every
// probe reports the same name, and its put would take the lock shared by
// every entry. Another prober that names the same target otherwise (a
// round-robin name, a renamed relay) changes the version: both put
// theirs again, the last one stays, as when every probe put its name.
func (c *NameCache) keep(target, name string, last *cachedName) {
	if c == nil || name == "" {
		return
	}
	if last.name == name && last.version == c.version.Load() {
		return
	}
	*last = cachedName{name: name, version: c.put(target, name)}
}

// Failure locates where the chain broke: the hop that reported it and the
// other end of the failed segment.
type Failure struct {
	// FromIndex is the position of the near end in the sample's records
	// (0 = source).
	FromIndex int
	// From is the near end; To the far end: a hop, or as the reporting hop
	// named it (its name, else its address) when it never answered.
	From, To peer.Hop
	Reason   peer.Reason
	Message  string
}

func (f *Failure) Error() string {
	return fmt.Sprintf("segment %s -> %s failed (%s): %s", f.From.Name, f.To.Name, f.Reason, f.Message)
}

// Sample is one probe's result.
type Sample struct {
	Seq    uint64
	Warmup bool
	// Records holds the source's own record first, then one per hop that
	// answered, in chain order.
	Records   []frame.HopRecord
	Breakdown timing.Breakdown
	Failure   *Failure
}

// Run sends the probes and summarises them. It always returns a result; a
// broken chain is reported in Result.Failure, never as a Go error.
func Run(ctx context.Context, o Options) *Result {
	start := time.Now()
	o.defaults()
	res := newResult(&o)
	defer func() { res.Duration = time.Since(start) }()
	p, fail := dial(ctx, &o)
	if fail != nil {
		res.setFailure(fail)
		o.Logger.Debug("first hop unreachable", "target", o.Target, "reason", fail.Reason, "err", fail.Message)
		return res
	}
	defer p.close()
	samples := measure(ctx, p, &o, res)
	res.build(p, samples, o.Logger)
	if res.fail == nil && o.HTTP == nil && o.AnnotateAfter != nil && o.AnnotateAfter(res) {
		ann := p.probe(ctx, uint64(o.Count)+1, frame.ProbeAnnotate)
		if ann.Failure == nil {
			res.addVars(ann.Records)
		} else {
			o.Logger.Info("annotation probe failed", "err", ann.Failure.Error())
		}
	}
	if res.fail == nil && o.HTTP == nil && o.Trace != nil && (o.Trace.When == nil || o.Trace.When(res)) {
		tracePaths(ctx, p, &o, res)
	}
	return res
}

// defaults fills what a caller may leave unset.
func (o *Options) defaults() {
	if o.Clock == nil {
		o.Clock = clock.NewSystem()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// protocol is one way of probing a chain, one file each: through relays
// (tcp.go), through HTTP proxies (http.go), or to a STAMP reflector
// (stamp.go).
type protocol interface {
	// probe sends one probe and reads what came back.
	probe(ctx context.Context, seq uint64, flags uint16) Sample
	// attachTCP and annotate: what build needs of it.
	built
	close()
}

// dial validates the options and opens the first connection of the
// chain with the protocol they ask for.
func dial(ctx context.Context, o *Options) (protocol, *Failure) {
	if f := o.invalid(); f != nil {
		return nil, f
	}
	if o.HTTP != nil {
		return dialHTTP(ctx, o)
	}
	if o.STAMP != nil {
		return dialSTAMP(ctx, o)
	}
	s, fail := open(ctx, o)
	if fail != nil {
		return nil, fail
	}
	return s, nil
}

// invalid is the failure of options Validate refuses, nil for valid ones.
func (o *Options) invalid() *Failure {
	if err := o.Validate(); err != nil {
		return &Failure{From: peer.Hop{Name: o.Source}, To: peer.Hop{Name: o.Target}, Reason: peer.ReasonUnknown, Message: err.Error()}
	}
	return nil
}

// measure sends the warm-up and the measured probes, stopping at the
// first failure or when another probe could not come back in time.
func measure(ctx context.Context, s protocol, o *Options, res *Result) []Sample {
	warm := s.probe(ctx, 0, frame.ProbeWarmup|annotateFlag(o.AnnotateWarmup))
	warm.Warmup = true
	samples := []Sample{warm}
	if warm.Failure != nil {
		o.Logger.Info("warm-up probe failed", "err", warm.Failure.Error())
		return samples
	}
	slowest := warm.Breakdown.RoundTrip
	for seq := uint64(1); seq <= uint64(o.Count); seq++ {
		if seq > 1 && !fits(ctx, slowest+o.Interval) {
			// A slow chain, not a broken one: stop before a probe that
			// cannot come back before the deadline.
			res.Truncated = true
			o.Logger.Info("stopping early: no time left for another probe", "probes", seq-1, "slowest_round_trip", slowest)
			break
		}
		if seq > 1 && o.Interval > 0 && !sleep(ctx, o.Interval) {
			break
		}
		smp := s.probe(ctx, seq, 0)
		samples = append(samples, smp)
		if smp.Failure != nil {
			o.Logger.Info("probe failed", "seq", seq, "err", smp.Failure.Error())
			break
		}
		slowest = max(slowest, smp.Breakdown.RoundTrip)
		if o.Logger.Enabled(ctx, slog.LevelDebug) {
			o.Logger.Debug("probe", "seq", seq, "round_trip", smp.Breakdown.RoundTrip, "segments", describe(smp))
		}
	}
	return samples
}

// fits reports whether a probe taking about need still ends before the
// context's deadline, with a margin.
func fits(ctx context.Context, need time.Duration) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) > need*3/2
}

// describe lists a probe's segment rtts for the log.
func describe(smp Sample) string {
	var b strings.Builder
	for i, seg := range smp.Breakdown.Segments {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s>%s=%s", smp.Records[seg.From].Name, smp.Records[seg.To].Name, seg.RTT)
	}
	return b.String()
}

func annotateFlag(on bool) uint16 {
	if on {
		return frame.ProbeAnnotate
	}
	return 0
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
