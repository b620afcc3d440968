package prober

import (
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/source/timing"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// Result summarises one run. It is also the stable JSON of
// `probe --output json` (documented in docs/probe.md): durations are seconds.
//
// Hops are told apart by their identity (a random ID per relay process);
// names only label them. When names repeat within a chain, the labels are
// made unique in chain order: same, same#2, same#3 (peer.Labels).
type Result struct {
	Target   string        `json:"target"`
	Source   string        `json:"source"`
	Success  bool          `json:"success"`
	Duration time.Duration `json:"-"`
	// Probes is the number of measured probes that came back.
	Probes int `json:"probes"`
	// HopsReached counts the hops beyond the source that answered.
	HopsReached int `json:"hops_reached"`
	// Truncated: the deadline stopped the run before all probes were sent.
	Truncated bool `json:"truncated"`
	Stripped  bool `json:"stripped"`
	// HTTP: the chain was probed over HTTP, its proxies reporting through
	// the Subsegment-Timing header.
	HTTP     bool            `json:"http,omitempty"`
	Hops     []HopResult     `json:"hops"`
	Segments []SegmentResult `json:"segments"`
	Failure  *FailureResult  `json:"failure"`
	// DuplicateNames: hops of the chain share names; their labels carry
	// a #N suffix.
	DuplicateNames bool     `json:"duplicate_names"`
	Samples        []Sample `json:"-"`
	fail           *Failure
	// byLabel finds a segment of a long chain (segmentAt).
	byLabel map[[2]string]int
	// scratch is set on a result that is renewed for every probe.
	scratch *buildScratch
}

// HopResult is one hop's residence statistics.
type HopResult struct {
	// Name is the hop's label: its name, unique within the chain.
	Name string `json:"name"`
	// ID is the hop's identity (hex): random per relay process.
	ID        string  `json:"id"`
	Residence Seconds `json:"residence_seconds"`
	// Wait is the part of the residence the probes spent in the kernel
	// before the hop read them (forward and return together). A STAMP
	// hop reports none: zero here, null in JSON (MarshalJSON), and no
	// wait series anywhere.
	Wait Seconds `json:"wait_seconds"`
	// KernelTimestamps: every measured probe's request-in and reply-in at
	// this hop were the kernel's receive stamps (else the read time).
	KernelTimestamps bool `json:"kernel_timestamps"`
	ClockSynced      bool `json:"clock_synced"`
	// HTTPHeader: the hop reported through its Subsegment-Timing header
	// (an HTTP proxy), with stamps of Resolution seconds.
	HTTPHeader bool `json:"http_header,omitempty"`
	// STAMP: the hop is a STAMP reflector, which reports its residence
	// (T3 − T2) and nothing of its waits.
	STAMP      bool               `json:"stamp,omitempty"`
	Resolution float64            `json:"resolution_seconds,omitempty"`
	Vars       map[string]float64 `json:"vars,omitempty"`
	id         uint64
	residences []time.Duration
	waits      []time.Duration
}

// MarshalJSON writes the hop with "wait_seconds": null when it reports no
// wait (a STAMP reflector): a 0 would read as measured.
func (h HopResult) MarshalJSON() ([]byte, error) {
	type plain HopResult
	var wait *Seconds
	if !h.STAMP {
		wait = &h.Wait
	}
	return json.Marshal(struct {
		plain
		Wait *Seconds `json:"wait_seconds"`
	}{plain(h), wait})
}

// SegmentResult is one segment's statistics.
type SegmentResult struct {
	From    string  `json:"from"`
	To      string  `json:"to"`
	Samples int     `json:"samples"`
	RTT     Seconds `json:"rtt_seconds"`
	Jitter  float64 `json:"jitter_seconds"`
	// Connect is the handshake time of the connection the near end opened
	// for this run; nil when it did not open one (reused, or unknown).
	Connect *float64 `json:"connect_seconds"`
	// TCP is the kernel's view of the near end's connection (forward
	// direction), TCPFar the far end's (return direction), as the last
	// probe found them; nil when that end could not read it.
	TCP    *TCPResult `json:"tcp"`
	TCPFar *TCPResult `json:"tcp_far"`
	// Retransmits is both ends' retransmissions during the run.
	Retransmits uint32        `json:"retransmits"`
	OneWay      *OneWayResult `json:"one_way"`
	// Resolution is the coarser of both ends' stamp resolutions (HTTP
	// chains): the figures are rounded to it.
	Resolution float64 `json:"resolution_seconds,omitempty"`
	// Loss and DSCP are a STAMP segment's packet loss and DSCP per
	// direction (stamp.go); absent for relays and proxies.
	Loss *LossResult `json:"loss,omitempty"`
	DSCP *DSCPResult `json:"dscp,omitempty"`
	// BadReplies counts what came back that was no usable reply, by
	// reason, and the replies whose TLVs were not used (a STAMP segment).
	BadReplies *stamp.ReplyFaults `json:"bad_replies,omitempty"`
	Slowest    bool               `json:"slowest"`
	// Path lists the routers under the segment in TTL order, ending at
	// its far end, as its near end traced them on the segment's own
	// connection (trace.go); absent when the segment was not traced.
	Path []PathHopResult `json:"path,omitempty"`
	// PathFlow is how the path was traced (or why there is none).
	PathFlow *PathFlowResult `json:"path_flow,omitempty"`
	// PathDelay is where the delay first appears on the path.
	PathDelay   *PathDelayResult `json:"path_delay,omitempty"`
	path        *frame.Path
	from, to    int // hop indexes
	samples     []time.Duration
	fwd         []time.Duration
	ret         []time.Duration
	bound       time.Duration
	oneWayN     int
	nearRetrans uint32
	farRetrans  uint32
	// the values Connect, TCP, TCPFar and OneWay point to once set
	connect                       float64
	tcpNear, tcpFar               TCPResult
	oneWay                        OneWayResult
	hasConnect, hasTCP, hasTCPFar bool
}

// Seconds is a min/median/max triple in seconds.
type Seconds struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
}

// TCPResult is TCP_INFO of one end of a segment.
type TCPResult struct {
	RTT         float64 `json:"rtt_seconds"`
	RTTVar      float64 `json:"rttvar_seconds"`
	MinRTT      float64 `json:"min_rtt_seconds"`
	Retransmits uint32  `json:"retransmits"`
	SndMSS      uint32  `json:"snd_mss_bytes"`
	PMTU        uint32  `json:"pmtu_bytes"`
	SndCwnd     uint32  `json:"snd_cwnd_segments"`
}

// OneWayResult holds median one-way delays, present only when both ends
// of the segment had synchronised clocks for every probe.
type OneWayResult struct {
	Forward    float64 `json:"forward_seconds"`
	Return     float64 `json:"return_seconds"`
	ErrorBound float64 `json:"error_bound_seconds"`
}

// FailureResult is where the chain broke.
type FailureResult struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// Fail returns the failure, nil when the chain worked.
func (r *Result) Fail() *Failure { return r.fail }

// RTTStats returns the full statistics of a segment.
func (s *SegmentResult) RTTStats() timing.Stats { return timing.Summarise(s.samples) }

// ResidenceStats returns the full statistics of a hop's residence.
func (h *HopResult) ResidenceStats() timing.Stats { return timing.Summarise(h.residences) }

// Identity is the hop's ID (0 for a hop that never answered).
func (h *HopResult) Identity() uint64 { return h.id }

// SlowestSegment returns the segment with the highest median rtt, or nil.
func (r *Result) SlowestSegment() *SegmentResult {
	for i := range r.Segments {
		if r.Segments[i].Slowest {
			return &r.Segments[i]
		}
	}
	return nil
}

// Segment returns the statistics of the segment from → to (labels), or nil.
func (r *Result) Segment(from, to string) *SegmentResult {
	if i := r.segmentAt(from, to); i >= 0 {
		return &r.Segments[i]
	}
	return nil
}

// Hop returns the statistics of the hop with this label, or nil.
func (r *Result) Hop(label string) *HopResult {
	for i := range r.Hops {
		if r.Hops[i].Name == label {
			return &r.Hops[i]
		}
	}
	return nil
}

// HopNames lists the hops' labels in chain order.
func (r *Result) HopNames() []string {
	out := make([]string, len(r.Hops))
	for i, h := range r.Hops {
		out[i] = h.Name
	}
	return slices.Clip(out)
}

// Clone is a copy of r that shares nothing r's next renewal writes: what
// a caller keeps of a Session's result beyond the next probe (a context
// read in the background).
func (r *Result) Clone() *Result {
	c := *r
	c.scratch, c.Samples = nil, nil
	c.byLabel = maps.Clone(r.byLabel)
	c.Hops = slices.Clone(r.Hops)
	for i := range c.Hops {
		h := &c.Hops[i]
		h.residences, h.waits = slices.Clone(h.residences), slices.Clone(h.waits)
	}
	c.Segments = slices.Clone(r.Segments)
	for i := range c.Segments {
		s := &c.Segments[i]
		s.samples, s.fwd, s.ret = slices.Clone(s.samples), slices.Clone(s.fwd), slices.Clone(s.ret)
		s.Connect, s.TCP, s.TCPFar, s.OneWay = nil, nil, nil, nil
		s.pointers()
		if r.Segments[i].OneWay != nil {
			s.OneWay = &s.oneWay
		}
	}
	return &c
}
