package trace

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Config is what every trace of a process shares.
type Config struct {
	// Rate is the most probe packets per second the Tracer sends, over
	// all its traces (default 100).
	Rate float64
	// Burst is how many probe packets may go back to back (default 10).
	Burst int
}

// Options bound one trace. The zero value is the default.
type Options struct {
	// MaxTTL is the largest time to live probed (default 30, at most 64).
	MaxTTL int
	// Probes is the probes sent per TTL (default 3, at most 10).
	Probes int
	// Wait is the longest wait for a TTL's answers (default 1s). The
	// trace waits four times the longest round trip seen so far, at
	// least 250 ms, at most Wait; a later answer still counts while the
	// trace runs.
	Wait time.Duration
	// MaxSilent ends the trace after that many TTLs in a row without any
	// answer (default 5).
	MaxSilent int
	// FarEndSpacing is the gap between probes that reach the far end in
	// TCP mode (default 550 ms): the far end answers at most one SYN per
	// half second on a connection (tcp_invalid_ratelimit, RFC 5961).
	FarEndSpacing time.Duration
	// Method forces a method: MethodTCP fails without CAP_NET_RAW,
	// MethodUDP never tries raw sockets. Empty chooses TCP when the
	// process may, UDP otherwise.
	Method Method
}

// Defaults and limits of Options and Config.
const (
	DefaultMaxTTL        = 30
	MaxMaxTTL            = 64
	DefaultProbes        = 3
	MaxProbes            = 10
	DefaultWait          = time.Second
	minWait              = 250 * time.Millisecond
	DefaultMaxSilent     = 5
	DefaultFarEndSpacing = 550 * time.Millisecond
	DefaultRate          = 100
	DefaultBurst         = 10
)

func (o Options) withDefaults() (Options, error) {
	if o.MaxTTL == 0 {
		o.MaxTTL = DefaultMaxTTL
	}
	if o.Probes == 0 {
		o.Probes = DefaultProbes
	}
	if o.Wait == 0 {
		o.Wait = DefaultWait
	}
	if o.MaxSilent == 0 {
		o.MaxSilent = DefaultMaxSilent
	}
	if o.FarEndSpacing == 0 {
		o.FarEndSpacing = DefaultFarEndSpacing
	}
	switch {
	case o.MaxTTL < 1 || o.MaxTTL > MaxMaxTTL:
		return o, fmt.Errorf("trace: max TTL %d out of range 1..%d", o.MaxTTL, MaxMaxTTL)
	case o.Probes < 1 || o.Probes > MaxProbes:
		return o, fmt.Errorf("trace: %d probes per TTL out of range 1..%d", o.Probes, MaxProbes)
	case o.Wait < 0:
		return o, fmt.Errorf("trace: negative wait %v", o.Wait)
	case o.MaxSilent < 1:
		return o, fmt.Errorf("trace: max silent TTLs %d, want at least 1", o.MaxSilent)
	case o.FarEndSpacing < 0:
		return o, fmt.Errorf("trace: negative far-end spacing %v", o.FarEndSpacing)
	case o.Method != "" && o.Method != MethodTCP && o.Method != MethodUDP:
		return o, fmt.Errorf("trace: unknown method %q (tcp or udp)", o.Method)
	}
	return o, nil
}

// Tracer runs traces for a process: one per far end at a time, all
// within one rate of probe packets. Create one per process.
type Tracer struct {
	limiter *bucket
	packets atomic.Uint64

	mu      sync.Mutex
	running map[netip.AddrPort]*flight
	// farEnd is when each far end last answered a TCP probe: it answers
	// at most one per half second, so the next trace of it waits for
	// FarEndSpacing to pass (entries older than that are pruned).
	farEnd map[netip.AddrPort]time.Time
}

// flight is a trace in progress that later callers wait for.
type flight struct {
	done chan struct{}
	res  *Result
	err  error
}

// NewTracer returns a Tracer; zero fields of cfg take their defaults.
func NewTracer(cfg Config) (*Tracer, error) {
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Burst == 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.Rate < 0 || cfg.Burst < 1 {
		return nil, fmt.Errorf("trace: rate %v/s with burst %d: want a positive rate and a burst of at least 1", cfg.Rate, cfg.Burst)
	}
	return &Tracer{limiter: newBucket(cfg.Rate, cfg.Burst), running: map[netip.AddrPort]*flight{},
		farEnd: map[netip.AddrPort]time.Time{}}, nil
}

// Packets is the probe packets this Tracer sent, over all its traces.
func (t *Tracer) Packets() uint64 { return t.packets.Load() }

// ErrBusy is returned to a caller that waited for another caller's trace
// of the same far end and whose own context ended first.
var ErrBusy = errors.New("a trace of this far end is already running")

// Trace traces the path from this host to the far end of conn, on conn's
// own flow, within ctx (the scrape's budget: the trace never outlives
// it). Its sockets are opened on the calling goroutine, so in the calling
// thread's network namespace, which must be the connection's.
//
// One trace per far end runs at a time: a caller that comes while one is
// running waits for it and gets the same *Result (read-only, shared).
//
// A deadline or a silent path is not an error: the Result says how the
// trace ended (Stop) and holds what it found. Errors are for a conn that
// is not an established TCP connection, bad options, and a trace that
// could not start.
func (t *Tracer) Trace(ctx context.Context, conn Conn, opts Options) (*Result, error) {
	target, err := Inspect(conn)
	if err != nil {
		return nil, err
	}
	return t.TraceTarget(ctx, target, opts)
}

// Target is what a trace needs of a connection, read from it at once by
// Inspect: its addresses, options and state. An event loop inspects the
// connection it owns on its own thread and traces the Target elsewhere,
// so that the trace never touches a descriptor the loop may close.
type Target struct{ info connInfo }

// Local is the connection's local address.
func (t Target) Local() netip.AddrPort { return t.info.local }

// Remote is the connection's far end, the address a trace probes.
func (t Target) Remote() netip.AddrPort { return t.info.remote }

// Inspect reads what a trace of conn needs (a handful of getsockopt calls).
func Inspect(conn Conn) (Target, error) {
	info, err := inspect(conn)
	if err != nil {
		return Target{}, fmt.Errorf("trace: %w", err)
	}
	return Target{info: info}, nil
}

// TraceTarget is Trace of a connection inspected before.
func (t *Tracer) TraceTarget(ctx context.Context, target Target, opts Options) (*Result, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	info := target.info
	if !info.remote.IsValid() {
		return nil, fmt.Errorf("trace: %w: an empty target", ErrNotTCP)
	}
	t.mu.Lock()
	if f, ok := t.running[info.remote]; ok {
		t.mu.Unlock()
		select {
		case <-f.done:
			return f.res, f.err
		case <-ctx.Done():
			return nil, fmt.Errorf("trace to %v: %w, and it did not end within this caller's deadline: %w", info.remote, ErrBusy, ctx.Err())
		}
	}
	f := &flight{done: make(chan struct{})}
	t.running[info.remote] = f
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.running, info.remote)
		t.mu.Unlock()
		close(f.done)
	}()
	t.coolDown(ctx, info.remote, opts.FarEndSpacing)
	f.res, f.err = t.trace(ctx, info, opts)
	return f.res, f.err
}

// coolDown waits until the far end can answer a probe again after the
// previous trace's last answer (or until ctx ends: the trace then runs
// with what is left, and ends at once).
func (t *Tracer) coolDown(ctx context.Context, remote netip.AddrPort, spacing time.Duration) {
	t.mu.Lock()
	last, ok := t.farEnd[remote]
	t.mu.Unlock()
	if !ok {
		return
	}
	if d := time.Until(last.Add(spacing)); d > 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-ctx.Done():
		}
	}
}

// farEndAnswered records when a far end last answered a TCP probe.
func (t *Tracer) farEndAnswered(remote netip.AddrPort, at time.Time, spacing time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for r, when := range t.farEnd {
		if time.Since(when) > max(spacing, DefaultFarEndSpacing) {
			delete(t.farEnd, r)
		}
	}
	t.farEnd[remote] = at
}

// Capability says which method a trace from this process would use, and
// why: it tries to open a raw socket (and closes it).
func Capability() (Method, string) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return MethodUDP, noRawReason(err)
	}
	unix.Close(fd)
	return MethodTCP, "tcp: CAP_NET_RAW"
}

func noRawReason(err error) string {
	if isPermission(err) {
		return fmt.Sprintf("udp: no CAP_NET_RAW (%v)", err)
	}
	return fmt.Sprintf("udp: raw TCP probes failed (%v)", err)
}

func (t *Tracer) trace(ctx context.Context, info connInfo, opts Options) (*Result, error) {
	started := time.Now()
	rt, err := lookupRoute(info.local, info.remote, protoTCP, info.mark, 0)
	if err != nil {
		return nil, fmt.Errorf("trace to %v: the connection's route: %w", info.remote, err)
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	base, n := binary.BigEndian.Uint32(rnd[:]), opts.MaxTTL*opts.Probes+opts.Probes
	p, flow, err := open(info, rt, opts, base, uint32(n))
	if err != nil {
		return nil, fmt.Errorf("trace to %v: %w", info.remote, err)
	}
	s := &session{
		opts:    opts,
		info:    info,
		method:  flow.Protocol,
		p:       p,
		answers: make(chan answer, 4*opts.Probes*2),
		base:    base,
		probes:  make([]probeRec, 0, n),
		first:   make([]int, 1, opts.MaxTTL+2),
		tracer:  t,
	}
	// The readers check identities against copies of base and n: the
	// session's own fields are the trace loop's.
	p.start(s.answers, func(id uint32) bool { return id-base < uint32(n) })
	stop := s.run(ctx)
	p.close()
	s.drain()
	if !s.lastFarEnd.IsZero() {
		t.farEndAnswered(info.remote, s.lastFarEnd, opts.FarEndSpacing)
	}
	res := &Result{
		Flow:     flow,
		Probes:   opts.Probes,
		MaxTTL:   opts.MaxTTL,
		Local:    info.local,
		Remote:   info.remote,
		Hops:     s.hops(),
		Stop:     stop,
		Reached:  stop == StopReached,
		Packets:  len(s.probes),
		Started:  started,
		Duration: time.Since(started),
	}
	if s.sendErr != nil {
		res.SendError = s.sendErr.Error()
	}
	return res, nil
}

// open picks the method and opens its sockets, pinned to the
// connection's route.
func open(info connInfo, rt route, opts Options, base, n uint32) (prober, Flow, error) {
	flow := Flow{Local: info.local, Remote: info.remote, Route: rt.String()}
	reason := "udp: asked for"
	if opts.Method != MethodUDP {
		switch tp, note, err := openTCP(info, rt, base, n); {
		case err == nil && !info.sack:
			tp.close()
			reason = "udp: the connection has no SACK, where a TCP probe's challenge ACK could count as a duplicate ACK"
		case err == nil:
			flow.Protocol, flow.Reason = MethodTCP, "tcp: CAP_NET_RAW"+note
			flow.Route += pinCheck(info, rt, protoTCP, info.local)
			return tp, flow, nil
		default:
			reason = noRawReason(err)
		}
		if opts.Method == MethodTCP {
			return nil, flow, fmt.Errorf("tcp probes asked for: %s", reason)
		}
	}
	up, note, err := openUDP(info, rt)
	if err != nil {
		return nil, flow, err
	}
	flow.Protocol, flow.Reason, flow.Local = MethodUDP, reason+note, up.local
	flow.Route += pinCheck(info, rt, protoUDP, up.local)
	return up, flow, nil
}

// pinCheck asks the kernel how the probes are routed once pinned to the
// connection's interface, and says so when that is not the connection's
// nexthop (two nexthops of a multipath route on one interface).
func pinCheck(info connInfo, rt route, proto uint8, local netip.AddrPort) string {
	probeLocal, probeRemote := local, info.remote
	if proto == protoTCP {
		// A raw socket's route lookup carries no ports.
		probeLocal, probeRemote = netip.AddrPortFrom(local.Addr(), 0), netip.AddrPortFrom(info.remote.Addr(), 0)
	}
	prt, err := lookupRoute(probeLocal, probeRemote, proto, info.mark, rt.oif)
	if err != nil {
		return fmt.Sprintf(" (the probes' route: %v)", err)
	}
	if prt.gateway != rt.gateway {
		return fmt.Sprintf(" (the probes leave %s, not by the connection's nexthop: two nexthops share its interface)", prt)
	}
	return ""
}

// probeRec is one probe sent and what answered it.
type probeRec struct {
	ttl      int
	sent     time.Time
	answered bool
	guessed  bool // the answer had no identity: matched by time and TTL
	from     netip.Addr
	rtt      time.Duration
	kind     answerKind
	code     uint8
}

// session is one trace in progress.
type session struct {
	opts    Options
	info    connInfo
	method  Method
	p       prober
	answers chan answer
	base    uint32
	probes  []probeRec
	// first[ttl] is the index of ttl's first probe: a TTL's probes are
	// sent together (the far end's spaced ones right after), so they are
	// s.probes[first[ttl]:first[ttl+1]] and every check of a TTL looks at
	// a handful of probes, not the whole trace.
	first   []int
	maxRTT  time.Duration
	sendErr error
	tracer  *Tracer
	// lastFarEnd is when the far end last answered a TCP probe.
	lastFarEnd time.Time
	// lastTTL, when set, is the far end's TTL found by a late answer
	// (lateFarEnd): the TTLs probed after it are not part of the path.
	lastTTL int
}

// span is the index range of ttl's probes.
func (s *session) span(ttl int) (lo, hi int) {
	if ttl < 1 || ttl >= len(s.first) {
		return 0, 0
	}
	lo, hi = s.first[ttl], len(s.probes)
	if ttl+1 < len(s.first) {
		hi = s.first[ttl+1]
	}
	return lo, hi
}

// run probes TTL after TTL until the far end answers or a bound ends it.
func (s *session) run(ctx context.Context) Stop {
	silent := 0
	for ttl := 1; ttl <= s.opts.MaxTTL; ttl++ {
		if !s.probeTTL(ctx, ttl) {
			return StopDeadline
		}
		if s.lateFarEnd(ttl) {
			return StopReached
		}
		st := s.status(ttl)
		switch {
		case st.farEnd:
			if s.method == MethodTCP {
				s.spaceFarEnd(ctx, ttl)
				if !s.status(ttl).farEnd {
					// A router's quoted answer to a later probe of the
					// TTL, or the far end's silence to the spaced ones,
					// showed the "answer" was a duplicate ACK of the
					// connection: forget it and go on.
					s.dropGuesses(s.span(ttl))
					silent = 0
					continue
				}
			}
			return StopReached
		case st.unreachable:
			return StopUnreachable
		case st.answered == 0:
			if silent++; silent >= s.opts.MaxSilent {
				return StopSilent
			}
		default:
			silent = 0
		}
	}
	return StopMaxTTL
}

// probeTTL sends a TTL's probes and collects answers; false when the
// context ended.
func (s *session) probeTTL(ctx context.Context, ttl int) bool {
	for range s.opts.Probes {
		if !s.send(ctx, ttl) {
			return false
		}
	}
	return s.collect(ctx, ttl, time.Now().Add(s.wait()))
}

// send sends one probe when the rate allows; false when the context ends
// (or would end) first.
func (s *session) send(ctx context.Context, ttl int) bool {
	if ctx.Err() != nil || s.tracer.limiter.wait(ctx) != nil {
		return false
	}
	if len(s.probes) == cap(s.probes) {
		return false // never beyond the bound the slice was made for
	}
	for len(s.first) <= ttl {
		s.first = append(s.first, len(s.probes))
	}
	id := s.base + uint32(len(s.probes))
	sent, err := s.p.send(ttl, id)
	if err != nil {
		if s.sendErr == nil {
			s.sendErr = err
		}
		sent = time.Now()
	}
	s.probes = append(s.probes, probeRec{ttl: ttl, sent: sent})
	s.tracer.packets.Add(1)
	return true
}

// wait is how long a TTL's answers are waited for.
func (s *session) wait() time.Duration {
	return min(s.opts.Wait, max(minWait, 4*s.maxRTT))
}

// collect takes answers until every counted probe of ttl is answered or
// until; false when the context ended.
func (s *session) collect(ctx context.Context, ttl int, until time.Time) bool {
	timer := time.NewTimer(time.Until(until))
	defer timer.Stop()
	for !s.status(ttl).done {
		select {
		case a := <-s.answers:
			s.take(a, ttl)
		case <-timer.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// drain takes the answers already delivered (late ones for earlier TTLs).
func (s *session) drain() {
	for {
		select {
		case a := <-s.answers:
			s.take(a, 0)
		default:
			return
		}
	}
}

// take matches an answer to its probe: by identity when it quotes one,
// otherwise the earliest unanswered counted probe of the current TTL sent
// before it (the far end's challenge ACK; an ICMP error that quotes too
// little of a UDP probe). An answer with identity overrides a guess.
func (s *session) take(a answer, cur int) {
	if a.hasID {
		i := a.id - s.base
		if i >= uint32(len(s.probes)) {
			return // not one of this trace's probes
		}
		pr := &s.probes[i]
		if pr.answered && !pr.guessed {
			return
		}
		s.record(pr, a, false)
		if a.kind == kindTimeExceeded {
			s.dropGuesses(s.span(pr.ttl))
		}
		return
	}
	lo, hi := s.span(cur)
	if lo < hi && a.kernelNs > 0 && a.kernelNs < s.probes[lo].sent.UnixNano() {
		s.takeLate(a, cur)
		return
	}
	if s.expiredAt(lo, hi) {
		// A router answered a probe of this TTL with time exceeded: the
		// TTL's probes (one flow, one path) end before the far end, so
		// nothing of it can be the far end's answer.
		return
	}
	for i := lo; i < hi; i++ {
		pr := &s.probes[i]
		if !pr.answered && !pr.sent.After(a.at) && s.counted(i) {
			s.record(pr, a, true)
			return
		}
	}
}

// takeLate matches an answer without identity that the kernel received
// before the current TTL's probes left, but that was read after its own
// TTL's wait was over (a reader that got no CPU in time): it belongs to
// the previous TTL, never to the current one.
func (s *session) takeLate(a answer, cur int) {
	if cur < 2 {
		return
	}
	plo, phi := s.span(cur - 1)
	if s.expiredAt(plo, phi) {
		return // that TTL ended before the far end
	}
	for i := plo; i < phi; i++ {
		pr := &s.probes[i]
		if !pr.answered && pr.sent.UnixNano() <= a.kernelNs && s.counted(i) {
			s.record(pr, a, true)
			return
		}
	}
}

// expiredAt reports whether a router answered one of the probes lo..hi
// with time exceeded, quoting the probe (not a guess).
func (s *session) expiredAt(lo, hi int) bool {
	for i := lo; i < hi; i++ {
		if pr := &s.probes[i]; pr.answered && !pr.guessed && pr.kind == kindTimeExceeded {
			return true
		}
	}
	return false
}

// dropGuesses forgets the guessed answers of probes lo..hi: a quoted time
// exceeded for one of them showed that none reached the far end.
func (s *session) dropGuesses(lo, hi int) {
	for i := lo; i < hi; i++ {
		if pr := &s.probes[i]; pr.answered && pr.guessed {
			*pr = probeRec{ttl: pr.ttl, sent: pr.sent}
		}
	}
}

// lateFarEnd reports whether a late answer showed the far end at the TTL
// before ttl: the trace then ends there, reached.
func (s *session) lateFarEnd(ttl int) bool {
	if ttl < 2 || !s.status(ttl-1).farEnd {
		return false
	}
	s.lastTTL = ttl - 1
	return true
}

func (s *session) record(pr *probeRec, a answer, guessed bool) {
	rtt := a.at.Sub(pr.sent)
	// The kernel's receive stamp leaves out the reader's wake-up; it is
	// realtime, so it is kept only when it is consistent with the
	// monotonic round trip (a clock step would make it nonsense).
	if a.kernelNs > 0 {
		if k := time.Duration(a.kernelNs - pr.sent.UnixNano()); k > 0 && k <= rtt {
			rtt = k
		}
	}
	pr.answered, pr.guessed, pr.from, pr.rtt, pr.kind, pr.code = true, guessed, a.from, rtt, a.kind, a.code
	if a.kind != kindTimeExceeded && sameAddr(a.from, s.info.remote.Addr()) {
		pr.kind = kindFarEnd
		if s.method == MethodTCP && a.at.After(s.lastFarEnd) {
			s.lastFarEnd = a.at
		}
	}
	s.maxRTT = max(s.maxRTT, rtt)
}

// counted: probe i counts for its TTL. In TCP mode a probe the far end
// could not answer, because it was sent within FarEndSpacing after a probe
// the far end did answer, does not count (the far end rate-limits its
// challenge ACKs); every other probe counts.
func (s *session) counted(i int) bool {
	pr := &s.probes[i]
	if s.method != MethodTCP || pr.answered {
		return true
	}
	lo, hi := s.span(pr.ttl)
	for j := lo; j < hi; j++ {
		q := &s.probes[j]
		if q.answered && q.kind == kindFarEnd &&
			!pr.sent.Before(q.sent) && pr.sent.Sub(q.sent) < s.opts.FarEndSpacing && j != i {
			return false
		}
	}
	return true
}

// ttlStatus sums up a TTL's probes.
type ttlStatus struct {
	counted, answered   int
	farEnd, unreachable bool
	done                bool // every counted probe answered
}

func (s *session) status(ttl int) ttlStatus {
	var st ttlStatus
	farEnd := 0
	lo, hi := s.span(ttl)
	for i := lo; i < hi; i++ {
		pr := &s.probes[i]
		if !s.counted(i) {
			continue
		}
		st.counted++
		if !pr.answered {
			continue
		}
		st.answered++
		switch pr.kind {
		case kindFarEnd:
			farEnd++
		case kindUnreachable:
			st.unreachable = true
		}
	}
	// The far end answers one probe per FarEndSpacing and its answer is
	// matched by time: at least half of the TTL's counted probes must
	// have been answered so, or one duplicate ACK of a busy connection
	// would end the trace at a silent router.
	st.farEnd = farEnd > 0 && 2*farEnd >= st.counted
	st.done = st.counted > 0 && st.answered == st.counted
	return st
}

// spaceFarEnd sends the far end's remaining probes one by one, each
// FarEndSpacing after the last one it answered, so that every probe that
// counts could be answered.
func (s *session) spaceFarEnd(ctx context.Context, ttl int) {
	for s.status(ttl).counted < s.opts.Probes {
		var last time.Time
		lo, hi := s.span(ttl)
		for i := lo; i < hi; i++ {
			if pr := &s.probes[i]; pr.answered && pr.kind == kindFarEnd && pr.sent.After(last) {
				last = pr.sent
			}
		}
		timer := time.NewTimer(time.Until(last.Add(s.opts.FarEndSpacing)))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if !s.send(ctx, ttl) || !s.collect(ctx, ttl, time.Now().Add(s.wait())) {
			return
		}
	}
}

// hops builds the Result's hops from the probes.
func (s *session) hops() []Hop {
	maxTTL := 0
	for _, pr := range s.probes {
		maxTTL = max(maxTTL, pr.ttl)
	}
	if s.lastTTL > 0 {
		maxTTL = min(maxTTL, s.lastTTL)
	}
	hops := make([]Hop, maxTTL)
	tallies := make([]addrTally, maxTTL)
	for i := range hops {
		hops[i] = Hop{TTL: i + 1, Unreachable: -1}
	}
	for i := range s.probes {
		pr := &s.probes[i]
		if !s.counted(i) || pr.ttl > maxTTL {
			continue
		}
		h := &hops[pr.ttl-1]
		h.Sent++
		if !pr.answered {
			continue
		}
		h.Answered++
		h.RTTs = append(h.RTTs, pr.rtt)
		switch pr.kind {
		case kindFarEnd:
			h.FarEnd = true
		case kindUnreachable:
			h.Unreachable = int(pr.code)
		}
		tallies[pr.ttl-1].count(pr.from)
	}
	for i, t := range tallies {
		hops[i].Address, hops[i].Others = t.split()
	}
	return hops
}

// addrTally counts the answers from each address at one TTL.
type addrTally []struct {
	addr netip.Addr
	n    int
}

func (t *addrTally) count(addr netip.Addr) {
	for k := range *t {
		if (*t)[k].addr == addr {
			(*t)[k].n++
			return
		}
	}
	*t = append(*t, struct {
		addr netip.Addr
		n    int
	}{addr, 1})
}

// split returns the address that answered most (the first of equals)
// and the others in the order they first answered.
func (t addrTally) split() (best netip.Addr, others []netip.Addr) {
	b := -1
	for k := range t {
		if b < 0 || t[k].n > t[b].n {
			b = k
		}
	}
	for k := range t {
		if k == b {
			best = t[k].addr
		} else {
			others = append(others, t[k].addr)
		}
	}
	return best, others
}

// bucket is a token bucket of probe packets.
type bucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate float64, burst int) *bucket {
	return &bucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: time.Now()}
}

// errRate is returned when the next token comes after the deadline.
var errRate = errors.New("trace: the probe rate limit leaves no room before the deadline")

// wait takes a token, sleeping until there is one; it fails at once if
// that would pass the context's deadline, and takes nothing then.
func (b *bucket) wait(ctx context.Context) error {
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens--
	var delay time.Duration
	if b.tokens < 0 {
		delay = time.Duration(-b.tokens / b.rate * float64(time.Second))
	}
	if dl, ok := ctx.Deadline(); ok && now.Add(delay).After(dl) {
		b.tokens++
		b.mu.Unlock()
		return errRate
	}
	b.mu.Unlock()
	if delay <= 0 {
		return nil
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		b.tokens++
		b.mu.Unlock()
		return ctx.Err()
	}
}
