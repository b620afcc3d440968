package prober

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/timing"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
)

// newResult is the result of a run of o before anything happened.
func newResult(o *Options) *Result {
	return &Result{Target: o.Target, Source: o.Source, HTTP: o.HTTP != nil}
}

// renew makes r the result of a new run of o, before anything happened,
// keeping its arrays: a Session's (and the continuous loop's) result is
// rebuilt on every probe. What a caller may keep of the previous result
// is never written again: its Failure, its hops' Vars, its strings.
func (r *Result) renew(o *Options) {
	hops, segs, byLabel, scratch := r.Hops[:0], r.Segments[:0], r.byLabel, r.scratch
	clear(byLabel)
	if scratch == nil {
		scratch = &buildScratch{chain: newChain()}
	}
	*r = Result{Target: o.Target, Source: o.Source, HTTP: o.HTTP != nil, Hops: hops, Segments: segs, byLabel: byLabel, scratch: scratch}
}

// buildScratch is what building a result needs besides the result, kept
// by a renewed result.
type buildScratch struct {
	chain  *chain
	labels []string
}

// built is what build needs of a protocol.
type built interface {
	// attachTCP adds the kernel's view of the source's connection to the
	// samples, once per run.
	attachTCP(samples []Sample)
	// annotate adds to a built result what only the protocol knows (an
	// HTTP hop's stamp resolution).
	annotate(r *Result)
}

// build is the one place a result is made from a run's samples: the
// kernel's view of the source's connection, the statistics, then what
// only the protocol knows.
func (r *Result) build(p built, samples []Sample, log *slog.Logger) {
	p.attachTCP(samples)
	r.summarise(samples, log)
	p.annotate(r)
}

// summarise turns a run's samples into per-hop and per-segment statistics.
// Every step keys hops by identity; labels come last.
func (r *Result) summarise(samples []Sample, log *slog.Logger) {
	r.Samples = samples
	chain := r.newChain()
	for i := range samples {
		chain.add(&samples[i])
	}
	r.label(chain, log)
	for i := range samples {
		smp := &samples[i]
		if smp.Failure != nil && r.fail == nil {
			r.fail = smp.Failure
		}
		r.countReached(smp)
		r.addSegments(chain, smp)
		r.addConnects(chain, smp)
		if smp.Warmup {
			defer r.addVars(smp.Records)
		}
		if !r.measured(smp, len(samples)) {
			continue
		}
		if !smp.Warmup {
			r.addResidences(chain, smp)
		}
		r.addRTTs(chain, smp)
		if smp.Failure == nil {
			r.Probes++
		}
	}
	r.finishSegments()
	r.finishHops()
	r.addFailure(chain)
	r.Success = r.fail == nil && r.Probes > 0
}

// measured says whether a sample's timings count. The warm-up's
// residences include the dials, so it is left out; its segment rtts are
// clean (a dial happens inside a hop) and stand in when the chain broke
// before any measured probe came back.
func (r *Result) measured(smp *Sample, n int) bool {
	if smp.Breakdown.Segments == nil {
		return false
	}
	return !smp.Warmup || n == 1 && smp.Failure != nil
}

// chain is the run's hops in chain order, as first seen, by identity.
type chain struct {
	hops []peer.Hop
	// index finds a hop by key once there are more than linearHops
	// (a chain is usually a few hops: a scan is cheaper than a map).
	index map[hopKey]int
	// next is the hop seen after each hop (-1: none), to recognise the
	// far end of a failed segment that a hop named without an identity.
	next []int
}

// linearHops is how many hops a chain finds by a scan of its hops.
const linearHops = 16

func newChain() *chain { return &chain{} }

// newChain is an empty chain: the scratch one of a renewed result.
func (r *Result) newChain() *chain {
	if r.scratch == nil {
		return newChain()
	}
	c := r.scratch.chain
	c.hops, c.next = c.hops[:0], c.next[:0]
	clear(c.index)
	return c
}

func (c *chain) indexOf(h peer.Hop) int {
	k := keyOf(h)
	if len(c.hops) <= linearHops {
		// keyOf(x) == k, without building the keys
		for i := range c.hops {
			if x := &c.hops[i]; x.ID == h.ID && (h.ID != 0 || x.Name == h.Name) {
				return i
			}
		}
	} else if i, ok := c.index[k]; ok {
		return i
	}
	c.hops = append(c.hops, h)
	c.next = append(c.next, -1)
	if n := len(c.hops); n > linearHops {
		if c.index == nil {
			c.index = map[hopKey]int{}
		}
		if len(c.index) == 0 {
			for i, x := range c.hops {
				c.index[keyOf(x)] = i
			}
		}
		c.index[k] = n - 1
	}
	return len(c.hops) - 1
}

func (c *chain) add(smp *Sample) {
	prev := -1
	for k := range smp.Records {
		i := c.indexOf(peerOf(&smp.Records[k]))
		if prev >= 0 {
			c.next[prev] = i
		}
		prev = i
	}
	if f := smp.Failure; f != nil {
		c.indexOf(f.From)
		c.farEnd(f)
	}
}

// farEnd is the index of a failure's far end: a hop already in the chain
// after the near end when the failure names it so, else a new one.
func (c *chain) farEnd(f *Failure) int {
	if f.To.ID == 0 {
		if n := c.next[c.indexOf(f.From)]; n >= 0 && c.hops[n].Name == f.To.Name {
			return n
		}
	}
	return c.indexOf(f.To)
}

// dupWarned remembers the chains whose repeated names were logged, so
// each is logged once; bounded like any cache of what peers send.
var dupWarned struct {
	sync.Mutex
	seen map[string]bool
}

// label gives every hop its label, unique within the chain, and creates
// the hop results in chain order.
func (r *Result) label(c *chain, log *slog.Logger) {
	var labels []string
	var dup bool
	if r.scratch != nil {
		labels, dup = peer.AppendLabels(r.scratch.labels[:0], c.hops)
		r.scratch.labels = labels
	} else {
		labels, dup = peer.Labels(c.hops)
	}
	// A renewed result's hops reuse the arrays of the previous ones, and
	// the hex of an identity that did not change.
	prev := r.Hops[:cap(r.Hops)]
	if r.Hops == nil {
		r.Hops = make([]HopResult, 0, len(c.hops))
	}
	r.Hops = r.Hops[:0]
	for i, h := range c.hops {
		hr := HopResult{Name: labels[i], id: h.ID, KernelTimestamps: true, ClockSynced: true}
		if i < len(prev) {
			hr.residences, hr.waits = prev[i].residences[:0], prev[i].waits[:0]
			if prev[i].id == h.ID {
				hr.ID = prev[i].ID
			}
		}
		if hr.id != 0 && hr.ID == "" {
			hr.ID = hexID(h.ID)
		}
		r.Hops = append(r.Hops, hr)
	}
	r.DuplicateNames = dup
	if !dup {
		return
	}
	key := r.Target + " " + strings.Join(labels, ",")
	dupWarned.Lock()
	defer dupWarned.Unlock()
	if dupWarned.seen == nil || len(dupWarned.seen) > 1000 {
		dupWarned.seen = map[string]bool{}
	}
	if !dupWarned.seen[key] {
		dupWarned.seen[key] = true
		log.Warn("hops of the chain share names: their labels are numbered in chain order; give each relay its own --relay.name", "target", r.Target, "hops", strings.Join(labels, " "))
	}
}

func (r *Result) countReached(smp *Sample) {
	reached := len(smp.Records) - 1
	if smp.Failure == nil && len(smp.Records) > 0 && smp.Records[len(smp.Records)-1].Name == HiddenHop {
		reached--
		r.Stripped = true
	}
	r.HopsReached = max(r.HopsReached, reached)
}

// segment returns the segment between two hops, created on first use.
func (r *Result) segment(from, to int) *SegmentResult {
	key := [2]string{r.Hops[from].Name, r.Hops[to].Name}
	if i := r.segmentAt(key[0], key[1]); i >= 0 {
		return &r.Segments[i]
	}
	seg := SegmentResult{From: key[0], To: key[1], from: from, to: to}
	if n := len(r.Segments); n < cap(r.Segments) {
		// A renewed result's segment reuses the previous one's arrays.
		old := &r.Segments[:n+1][n]
		seg.samples, seg.fwd, seg.ret = old.samples[:0], old.fwd[:0], old.ret[:0]
	}
	r.Segments = append(r.Segments, seg)
	if n := len(r.Segments); n > linearHops {
		if r.byLabel == nil {
			r.byLabel = map[[2]string]int{}
		}
		if len(r.byLabel) == 0 {
			for i := range r.Segments {
				r.byLabel[[2]string{r.Segments[i].From, r.Segments[i].To}] = i
			}
		}
		r.byLabel[key] = n - 1
	}
	return &r.Segments[len(r.Segments)-1]
}

// segmentAt is the index of the segment from → to (labels), -1 for none:
// a scan of a few segments, a map of many.
func (r *Result) segmentAt(from, to string) int {
	if len(r.Segments) <= linearHops {
		for i := range r.Segments {
			if r.Segments[i].From == from && r.Segments[i].To == to {
				return i
			}
		}
		return -1
	}
	if i, ok := r.byLabel[[2]string{from, to}]; ok {
		return i
	}
	return -1
}

// addSegments lists the segments in chain order, as first seen, with the
// kernel's view of both ends and their retransmissions.
func (r *Result) addSegments(c *chain, smp *Sample) {
	for i := 1; i < len(smp.Records); i++ {
		near, far := &smp.Records[i-1], &smp.Records[i]
		s := r.segment(c.indexOf(peerOf(near)), c.indexOf(peerOf(far)))
		if near.Flags&frame.RecTCPInfo != 0 {
			s.tcpNear, s.hasTCP = tcpResult(near.TCP), true
			s.nearRetrans = max(s.nearRetrans, near.TCP.TotalRetrans)
		}
		if far.Flags&frame.RecTCPInfoUp != 0 {
			s.tcpFar, s.hasTCPFar = tcpResult(far.TCPUp), true
			s.farRetrans = max(s.farRetrans, far.TCPUp.TotalRetrans)
		}
	}
}

// addConnects takes the connect times from the sample whose hops dialled
// (the warm-up).
func (r *Result) addConnects(c *chain, smp *Sample) {
	for i := range smp.Records {
		rec := &smp.Records[i]
		if rec.Flags&frame.RecDialed == 0 || i+1 >= len(smp.Records) {
			continue
		}
		s := r.segment(c.indexOf(peerOf(rec)), c.indexOf(peerOf(&smp.Records[i+1])))
		s.connect, s.hasConnect = rec.Connect.Seconds(), true
	}
}

// addResidences adds each hop's residence and wait, and whether its
// stamps came from the kernel and its clock was synchronised.
func (r *Result) addResidences(c *chain, smp *Sample) {
	last := len(smp.Records) - 1
	for i := range smp.Records {
		rec := &smp.Records[i]
		h := &r.Hops[c.indexOf(peerOf(rec))]
		h.residences = append(h.residences, smp.Breakdown.Residence[i])
		if rec.Flags&frame.RecReflector != 0 {
			// A STAMP reflector: its residence, no waits to report.
			h.STAMP = true
		} else {
			h.waits = append(h.waits, rec.WaitForward+rec.WaitReturn)
		}
		h.ClockSynced = h.ClockSynced && rec.Flags&frame.RecSynced != 0
		want := kernelFlags(i, i == last, rec.Flags)
		h.KernelTimestamps = h.KernelTimestamps && rec.Flags&want == want
	}
}

// kernelFlags are the stamps a hop at position i takes from the kernel:
// the request's arrival (every hop but the source) and the reply's (every
// hop but the end of the chain).
func kernelFlags(i int, end bool, flags uint16) uint16 {
	var want uint16
	if i > 0 {
		want |= frame.RecKernelIn
	}
	if !end && flags&frame.RecEnd == 0 {
		want |= frame.RecKernelReply
	}
	return want
}

// addRTTs adds the segment rtts of a probe. A broken probe's last hop
// answered on its own; the segment it could not cross has no rtt, the
// ones before it do.
func (r *Result) addRTTs(c *chain, smp *Sample) {
	for k := range smp.Breakdown.Segments {
		seg := &smp.Breakdown.Segments[k]
		near, far := &smp.Records[seg.From], &smp.Records[seg.To]
		s := r.segment(c.indexOf(peerOf(near)), c.indexOf(peerOf(far)))
		s.samples = append(s.samples, seg.RTT)
		if seg.OneWay != nil {
			s.oneWayN++
			s.fwd = append(s.fwd, seg.OneWay.Forward)
			s.ret = append(s.ret, seg.OneWay.Return)
			s.bound = max(s.bound, seg.OneWay.ErrorBound)
		}
	}
}

// finishSegments computes the statistics and marks the slowest segment.
// Pointers into a segment are set here, once its array no longer grows.
func (r *Result) finishSegments() {
	slowest, slowestRTT := -1, time.Duration(math.MinInt64)
	for i := range r.Segments {
		s := &r.Segments[i]
		s.pointers()
		st := timing.Summarise(s.samples)
		s.Samples = st.Count
		s.RTT = seconds(st)
		s.Jitter = st.Jitter.Seconds()
		s.Retransmits = s.nearRetrans + s.farRetrans
		if st.Count > 0 && s.oneWayN == st.Count {
			fwd, ret := timing.Summarise(s.fwd), timing.Summarise(s.ret)
			s.oneWay = OneWayResult{Forward: fwd.Median.Seconds(), Return: ret.Median.Seconds(), ErrorBound: s.bound.Seconds()}
			s.OneWay = &s.oneWay
		}
		if st.Count > 0 && st.Median > slowestRTT {
			slowest, slowestRTT = i, st.Median
		}
	}
	// The slowest of a working chain: a broken chain's story is its break.
	if slowest >= 0 && r.fail == nil {
		r.Segments[slowest].Slowest = true
	}
}

func (r *Result) finishHops() {
	for i := range r.Hops {
		h := &r.Hops[i]
		h.Residence = seconds(timing.Summarise(h.residences))
		h.Wait = seconds(timing.Summarise(h.waits))
		if len(h.residences) == 0 {
			h.KernelTimestamps, h.ClockSynced = false, false
		}
	}
}

// addFailure records where the chain broke; the failed segment is listed
// even when no probe crossed it.
func (r *Result) addFailure(c *chain) {
	f := r.fail
	if f == nil {
		return
	}
	s := r.segment(c.indexOf(f.From), c.farEnd(f))
	r.Failure = &FailureResult{From: s.From, To: s.To, Reason: f.Reason.String(), Message: f.Message}
}

// setFailure records a failure that happened before any probe came back.
func (r *Result) setFailure(f *Failure) {
	r.fail = f
	r.Failure = &FailureResult{From: f.From.Name, To: f.To.Name, Reason: f.Reason.String(), Message: f.Message}
	if len(r.Segments) == 0 {
		r.Hops = []HopResult{{Name: f.From.Name}}
		r.Segments = []SegmentResult{{From: f.From.Name, To: f.To.Name, to: -1}}
	}
}

// addVars records the variables hops attached to an annotation probe.
func (r *Result) addVars(records []frame.HopRecord) {
	for _, rec := range records {
		if len(rec.Vars) == 0 {
			continue
		}
		for i := range r.Hops {
			h := &r.Hops[i]
			if h.id == 0 || h.id != rec.ID {
				continue
			}
			if h.Vars == nil {
				h.Vars = map[string]float64{}
			}
			for _, v := range rec.Vars {
				h.Vars[v.Name] = v.Value
			}
		}
	}
}

func seconds(s timing.Stats) Seconds {
	return Seconds{Min: s.Min.Seconds(), Median: s.Median.Seconds(), Max: s.Max.Seconds()}
}

func micros(v uint32) float64 { return float64(v) / 1e6 }

func hexID(id uint64) string {
	if id == 0 {
		return ""
	}
	return fmt.Sprintf("%016x", id)
}

// hopKey identifies a hop within a run: by its ID when it reported one,
// else (a far end that never answered, the hidden rest of a stripped
// chain) by how it was named.
type hopKey struct {
	id   uint64
	name string
}

func keyOf(h peer.Hop) hopKey {
	if h.ID != 0 {
		return hopKey{id: h.ID}
	}
	return hopKey{name: h.Name}
}

// pointers points a segment's optional parts at the values it holds.
func (s *SegmentResult) pointers() {
	if s.hasConnect {
		s.Connect = &s.connect
	}
	if s.hasTCP {
		s.TCP = &s.tcpNear
	}
	if s.hasTCPFar {
		s.TCPFar = &s.tcpFar
	}
}

func tcpResult(t tcpinfo.Info) TCPResult {
	return TCPResult{RTT: micros(t.RTTMicros), RTTVar: micros(t.RTTVarMicros), MinRTT: micros(t.MinRTTMicros),
		Retransmits: t.TotalRetrans, SndMSS: t.SndMSS, PMTU: t.PMTU, SndCwnd: t.SndCwnd}
}
