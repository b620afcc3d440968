package prober

import (
	"math"
	"slices"
	"time"

	"github.com/subsegment/subsegment_exporter/frame"
	"github.com/subsegment/subsegment_exporter/timing"
)

// Result summarises one run. It is also the stable JSON of
// `probe --output json` (documented in the README): durations are seconds.
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
	Truncated bool              `json:"truncated"`
	Stripped  bool              `json:"stripped"`
	Hops      []HopResult       `json:"hops"`
	Segments  []SegmentResult   `json:"segments"`
	Failure   *FailureResult    `json:"failure"`
	Samples   []Sample          `json:"-"`
	fail      *Failure          `json:"-"`
	segIndex  map[[2]string]int `json:"-"`
}

// HopResult is one hop's residence statistics.
type HopResult struct {
	Name        string             `json:"name"`
	Residence   Seconds            `json:"residence_seconds"`
	ClockSynced bool               `json:"clock_synced"`
	Vars        map[string]float64 `json:"vars,omitempty"`
	samples     []time.Duration
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
	// TCP is the kernel's view of the near end's connection after the
	// last probe; nil when the near end could not read it.
	TCP     *TCPResult    `json:"tcp"`
	OneWay  *OneWayResult `json:"one_way"`
	Slowest bool          `json:"slowest"`
	samples []time.Duration
	fwd     []time.Duration
	ret     []time.Duration
	bound   time.Duration
	oneWayN int
}

// Seconds is a min/median/max triple in seconds.
type Seconds struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
}

// TCPResult is TCP_INFO of a segment's near-end connection.
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

func (r *Result) setFailure(f *Failure) {
	r.fail = f
	r.Failure = &FailureResult{From: f.From, To: f.To, Reason: f.Reason.String(), Message: f.Message}
	if len(r.Segments) == 0 {
		r.Segments = []SegmentResult{{From: f.From, To: f.To}}
		r.segIndex = map[[2]string]int{{f.From, f.To}: 0}
	}
}

// Fail returns the failure, nil when the chain worked.
func (r *Result) Fail() *Failure { return r.fail }

// RTTStats returns the full statistics of a segment.
func (s *SegmentResult) RTTStats() timing.Stats { return timing.Summarise(s.samples) }

// ResidenceStats returns the full statistics of a hop's residence.
func (h *HopResult) ResidenceStats() timing.Stats { return timing.Summarise(h.samples) }

// SlowestSegment returns the segment with the highest median rtt, or nil.
func (r *Result) SlowestSegment() *SegmentResult {
	for i := range r.Segments {
		if r.Segments[i].Slowest {
			return &r.Segments[i]
		}
	}
	return nil
}

func (r *Result) summarise(samples []Sample) {
	r.Samples = samples
	r.segIndex = map[[2]string]int{}
	hopIndex := map[string]int{}
	for _, smp := range samples {
		if smp.Failure != nil && r.fail == nil {
			r.fail = smp.Failure
		}
		reached := len(smp.Records) - 1
		if smp.Failure == nil && len(smp.Records) > 0 && smp.Records[len(smp.Records)-1].Name == HiddenHop {
			reached--
			r.Stripped = true
		}
		r.HopsReached = max(r.HopsReached, reached)
		// Hops and segments in chain order, as first seen.
		for i, rec := range smp.Records {
			if _, ok := hopIndex[rec.Name]; !ok {
				hopIndex[rec.Name] = len(r.Hops)
				r.Hops = append(r.Hops, HopResult{Name: rec.Name, ClockSynced: rec.Flags&frame.RecSynced != 0})
			}
			if i == 0 {
				continue
			}
			key := [2]string{smp.Records[i-1].Name, rec.Name}
			if _, ok := r.segIndex[key]; !ok {
				r.segIndex[key] = len(r.Segments)
				r.Segments = append(r.Segments, SegmentResult{From: key[0], To: key[1]})
			}
		}
		// Connect times come from the warm-up: the near end dialled then.
		for i, rec := range smp.Records {
			if rec.Flags&frame.RecDialed == 0 || i+1 >= len(smp.Records) {
				continue
			}
			seg := &r.Segments[r.segIndex[[2]string{rec.Name, smp.Records[i+1].Name}]]
			c := rec.Connect.Seconds()
			seg.Connect = &c
		}
		if smp.Warmup {
			defer r.addVars(smp.Records)
		}
		// The warm-up's residences include the dials, so it is left out;
		// its segment rtts are clean (a dial happens inside a hop) and stand
		// in when the chain broke before any measured probe came back.
		if smp.Warmup && (len(samples) > 1 || smp.Failure == nil) || smp.Breakdown.Segments == nil {
			continue
		}
		if !smp.Warmup {
			for i, rec := range smp.Records {
				h := &r.Hops[hopIndex[rec.Name]]
				h.samples = append(h.samples, smp.Breakdown.Residence[i])
				h.ClockSynced = h.ClockSynced && rec.Flags&frame.RecSynced != 0
			}
		}
		// A broken probe's last hop answered on its own; the segment it
		// could not cross has no rtt, the ones before it do.
		for _, seg := range smp.Breakdown.Segments {
			near, far := smp.Records[seg.From], smp.Records[seg.To]
			s := &r.Segments[r.segIndex[[2]string{near.Name, far.Name}]]
			s.samples = append(s.samples, seg.RTT)
			if seg.OneWay != nil {
				s.oneWayN++
				s.fwd = append(s.fwd, seg.OneWay.Forward)
				s.ret = append(s.ret, seg.OneWay.Return)
				s.bound = max(s.bound, seg.OneWay.ErrorBound)
			}
			if near.Flags&frame.RecTCPInfo != 0 {
				s.TCP = &TCPResult{
					RTT: micros(near.TCP.RTTMicros), RTTVar: micros(near.TCP.RTTVarMicros), MinRTT: micros(near.TCP.MinRTTMicros),
					Retransmits: near.TCP.TotalRetrans, SndMSS: near.TCP.SndMSS, PMTU: near.TCP.PMTU, SndCwnd: near.TCP.SndCwnd,
				}
			}
		}
		if smp.Failure == nil {
			r.Probes++
		}
	}
	slowest, slowestRTT := -1, time.Duration(math.MinInt64)
	for i := range r.Segments {
		s := &r.Segments[i]
		st := timing.Summarise(s.samples)
		s.Samples = st.Count
		s.RTT = seconds(st)
		s.Jitter = st.Jitter.Seconds()
		if st.Count > 0 && s.oneWayN == st.Count {
			fwd, ret := timing.Summarise(s.fwd), timing.Summarise(s.ret)
			s.OneWay = &OneWayResult{Forward: fwd.Median.Seconds(), Return: ret.Median.Seconds(), ErrorBound: s.bound.Seconds()}
		}
		if st.Count > 0 && st.Median > slowestRTT {
			slowest, slowestRTT = i, st.Median
		}
	}
	if slowest >= 0 {
		r.Segments[slowest].Slowest = true
	}
	for i := range r.Hops {
		h := &r.Hops[i]
		h.Residence = seconds(timing.Summarise(h.samples))
	}
	if r.fail != nil {
		f := r.fail
		r.setFailure(f)
		// The failed segment is listed even when no probe crossed it.
		key := [2]string{f.From, f.To}
		if _, ok := r.segIndex[key]; !ok {
			r.segIndex[key] = len(r.Segments)
			r.Segments = append(r.Segments, SegmentResult{From: f.From, To: f.To})
		}
	}
	r.Success = r.fail == nil && r.Probes > 0
}

// addVars records the variables hops attached to an annotation probe.
func (r *Result) addVars(records []frame.HopRecord) {
	for _, rec := range records {
		if len(rec.Vars) == 0 {
			continue
		}
		for i := range r.Hops {
			if r.Hops[i].Name != rec.Name {
				continue
			}
			if r.Hops[i].Vars == nil {
				r.Hops[i].Vars = map[string]float64{}
			}
			for _, v := range rec.Vars {
				r.Hops[i].Vars[v.Name] = v.Value
			}
		}
	}
}

// Segment returns the statistics of the segment from → to, or nil.
func (r *Result) Segment(from, to string) *SegmentResult {
	if i, ok := r.segIndex[[2]string{from, to}]; ok {
		return &r.Segments[i]
	}
	return nil
}

// HopNames lists the hops in chain order.
func (r *Result) HopNames() []string {
	out := make([]string, len(r.Hops))
	for i, h := range r.Hops {
		out[i] = h.Name
	}
	return slices.Clip(out)
}

func seconds(s timing.Stats) Seconds {
	return Seconds{Min: s.Min.Seconds(), Median: s.Median.Seconds(), Max: s.Max.Seconds()}
}

func micros(v uint32) float64 { return float64(v) / 1e6 }
