package continuous

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// What continuous probing keeps of STAMP segments (prober: stamp, chains
// ending at a STAMP reflector) beyond their rtt and residence histograms:
// the packets sent and lost as counters, per direction once a reply's
// Direct Measurement counters name it, and for the chain page the loss of
// the window and the directions a router re-marks the DSCP on.

// stampMetrics are the packet counters of STAMP segments.
type stampMetrics struct {
	sent, lost, named *prometheus.CounterVec
}

func newSTAMPMetrics() *stampMetrics {
	seg := []string{"target", "module", "from", "to"}
	return &stampMetrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "segment_packets_sent_total",
			Help: "STAMP test packets the entry sent over the segment (one per continuous probe, and each connection's warm-up)."}, seg),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "segment_packets_lost_total",
			Help: "STAMP test packets of the entry whose reply did not come back in time, both directions together."}, seg),
		named: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "segment_one_way_lost_packets_total",
			Help: "STAMP test packets lost per direction, forward (never reached the reflector) or return (reflected, never came back), counted when a later reply's Direct Measurement counters name them."},
			append(seg, "direction")),
	}
}

func (m *stampMetrics) collect(ch chan<- prometheus.Metric) {
	m.sent.Collect(ch)
	m.lost.Collect(ch)
	m.named.Collect(ch)
}

// remove deletes a segment's STAMP series.
func (m *stampMetrics) remove(target, module, from, to string) {
	m.sent.DeleteLabelValues(target, module, from, to)
	m.lost.DeleteLabelValues(target, module, from, to)
	m.named.DeleteLabelValues(target, module, from, to, "forward")
	m.named.DeleteLabelValues(target, module, from, to, "return")
}

// observeSTAMP counts the packets of a result's STAMP segments, and keeps
// their loss and re-marking for the page. Only segments the entry keeps
// series for count (the bound of a chain that keeps renaming its hops).
func (r *recorder) observeSTAMP(now time.Time, res *prober.Result) {
	t, mod := r.entry.Target, r.entry.Module
	for i := range res.Segments {
		seg := &res.Segments[i]
		l := seg.Loss
		if l == nil || r.metrics.segment(r.series, seg.From, seg.To) == nil {
			continue
		}
		m := r.metrics.stamp
		m.sent.WithLabelValues(t, mod, seg.From, seg.To).Add(float64(l.Sent))
		m.lost.WithLabelValues(t, mod, seg.From, seg.To).Add(float64(l.Lost))
		var fwd, ret int
		if l.Forward != nil && l.Return != nil {
			fwd, ret = l.Forward.Lost, l.Return.Lost
			m.named.WithLabelValues(t, mod, seg.From, seg.To, "forward").Add(float64(fwd))
			m.named.WithLabelValues(t, mod, seg.From, seg.To, "return").Add(float64(ret))
		}
		r.state.stampSegment(now, seg.From, seg.To, stampSample{sent: l.Sent, lost: l.Lost, forward: fwd, ret: ret, named: l.ByDirection}, seg.DSCP)
	}
}

// stampSample is one result's packets of a segment.
type stampSample struct {
	sent, lost, forward, ret int
	named                    bool
}

// stampWindows are a STAMP segment's recent packets, and the directions
// its latest result saw the DSCP re-marked on.
type stampWindows struct {
	sent, lost, forward, ret window
	named                    bool
	remarked                 []string
}

// stampSegment records a STAMP segment's packets of one result.
func (s *entryState) stampSegment(now time.Time, from, to string, smp stampSample, dscp *prober.DSCPResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{from, to}
	if s.stamp == nil {
		s.stamp = map[[2]string]*stampWindows{}
	}
	w := s.stamp[k]
	if w == nil {
		if len(s.stamp) >= maxSeriesKeys {
			return
		}
		w = &stampWindows{}
		s.stamp[k] = w
	}
	at := s.moment(now)
	w.sent.add(at, float64(smp.sent))
	w.lost.add(at, float64(smp.lost))
	w.forward.add(at, float64(smp.forward))
	w.ret.add(at, float64(smp.ret))
	w.named = w.named || smp.named
	if dscp != nil {
		w.remarked = w.remarked[:0]
		if dscp.ForwardRemarked != nil && *dscp.ForwardRemarked {
			w.remarked = append(w.remarked, "forward")
		}
		if dscp.ReturnRemarked != nil && *dscp.ReturnRemarked {
			w.remarked = append(w.remarked, "return")
		}
	}
}

// SegmentLoss is a STAMP segment's packets over the page's window.
type SegmentLoss struct {
	Sent  int     `json:"sent"`
	Lost  int     `json:"lost"`
	Ratio float64 `json:"ratio"`
	// ForwardLost and ReturnLost are the losses the reflector's counters
	// named in the window; absent without the counters.
	ForwardLost *int `json:"forward_lost,omitempty"`
	ReturnLost  *int `json:"return_lost,omitempty"`
}

// stampSnapshot adds a STAMP segment's loss and re-marking to its state.
func (s *entryState) stampSnapshot(seg *SegmentState, at int64, span time.Duration) {
	w := s.stamp[[2]string{seg.From, seg.To}]
	if w == nil {
		return
	}
	sent, lost := int(w.sent.sum(at, span)), int(w.lost.sum(at, span))
	l := &SegmentLoss{Sent: sent, Lost: lost}
	if sent > 0 {
		l.Ratio = min(float64(lost)/float64(sent), 1)
	}
	if w.named {
		fwd, ret := int(w.forward.sum(at, span)), int(w.ret.sum(at, span))
		l.ForwardLost, l.ReturnLost = &fwd, &ret
	}
	seg.Loss = l
	if len(w.remarked) > 0 {
		seg.DSCPRemarked = append([]string(nil), w.remarked...)
	}
}

// sum adds up the samples of the span before now.
func (w *window) sum(now int64, span time.Duration) float64 {
	cut := now - int64(span)
	var total float64
	for i := range int(w.n) {
		if at := w.at[i]; at >= cut && at <= now {
			total += float64(w.value[i])
		}
	}
	return total
}
