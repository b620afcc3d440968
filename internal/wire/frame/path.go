package frame

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// The path extension of protocol version 2: a request asks the relays to
// trace the route to their next hop (ProbeTrace) and to report what their
// trace found (ProbePath); a relay reports it in a path section at the end
// of its hop record, flagged RecPath. Frames without these flags are the
// same as before, so hops that do not know the extension still
// interoperate for every other probe, and fail clearly for a traced one: a
// hop that does not know RecPath refuses the record ("unknown flags"), and
// a source that asked for paths refuses a relay's record without one.

// PathMethod is how a trace probed.
type PathMethod uint8

// Path methods.
const (
	// PathNone: no probe was sent (see the status).
	PathNone PathMethod = 0
	// PathTCP: TCP probes on the connection's own flow (CAP_NET_RAW).
	PathTCP PathMethod = 1
	// PathUDP: UDP probes with the connection's addresses and port
	// numbers (no privilege).
	PathUDP PathMethod = 2
)

func (m PathMethod) String() string {
	switch m {
	case PathTCP:
		return "tcp"
	case PathUDP:
		return "udp"
	}
	return "none"
}

// PathStatus says how a trace ended, or why there is none.
type PathStatus uint8

// Path statuses. The first five are the trace's own ends; the others say
// why a relay has no path to report.
const (
	PathReached     PathStatus = 1
	PathMaxTTL      PathStatus = 2
	PathSilent      PathStatus = 3
	PathUnreachable PathStatus = 4
	PathDeadline    PathStatus = 5
	// PathFailed: the trace could not run (Reason says why).
	PathFailed PathStatus = 6
	// PathDisabled: the relay does not trace (--no-trace.enabled).
	PathDisabled PathStatus = 7
	// PathRunning: the trace had not ended when the path was asked for.
	PathRunning PathStatus = 8
	// PathNotStarted: no trace was asked for on this connection.
	PathNotStarted PathStatus = 9

	pathStatusLast = PathNotStarted
)

var pathStatusNames = [...]string{"unknown", "reached", "max_ttl", "silent", "unreachable", "deadline", "failed", "disabled", "running", "not_started"}

func (s PathStatus) String() string {
	if int(s) < len(pathStatusNames) {
		return pathStatusNames[s]
	}
	return fmt.Sprintf("unknown status %d", uint8(s))
}

// Traced reports whether the status is a trace's own end (probes were
// sent and the hops list what answered).
func (s PathStatus) Traced() bool { return s >= PathReached && s <= PathDeadline }

// Path hop flags.
const (
	// PathHopFarEnd: the answer came from the traced connection's far end.
	PathHopFarEnd uint8 = 1 << 0
	// PathHopUnreachable: a router answered destination unreachable.
	PathHopUnreachable uint8 = 1 << 1
	// PathHopOthers: other addresses answered some of the TTL's probes
	// (a path that changed during the trace).
	PathHopOthers uint8 = 1 << 2

	pathHopKnownFlags = PathHopFarEnd | PathHopUnreachable | PathHopOthers
)

// Bounds of a path section.
const (
	// MaxPathTTL is the largest TTL a path lists.
	MaxPathTTL = 64
	// MaxPathProbes is the most probes per TTL a trace may ask for.
	MaxPathProbes = 10
	// MaxPathText bounds the reason and the route.
	MaxPathText  = 255
	pathFixedLen = 1 + 1 + 1 + 1 + 2 + 8
	pathHopLen   = 4 + 1 + 3*8 // without the address
	// MaxPathLen is the largest path section.
	MaxPathLen = pathFixedLen + 2*(1+16+2) + 2*(1+MaxPathText) + 1 + MaxPathTTL*(pathHopLen+16)
)

// Path is what one relay's trace of its next hop found: the flow it
// probed and every TTL in order, the last one the next hop when the trace
// reached it.
type Path struct {
	Method PathMethod
	Status PathStatus
	// Probes is the probes sent per TTL, MaxTTL the trace's bound.
	Probes, MaxTTL uint8
	// Packets is every probe packet the trace sent; Duration its time.
	Packets  uint16
	Duration time.Duration
	// Local and Remote are the probes' addresses and ports.
	Local, Remote netip.AddrPort
	// Reason says why this method ("tcp: CAP_NET_RAW", "udp: no
	// CAP_NET_RAW (…)") or why there is no path.
	Reason string
	// Route is the relay's route of the connection ("via 10.0.1.2 dev eth0").
	Route string
	Hops  []PathHop
}

// PathHop is one TTL of a path.
type PathHop struct {
	TTL   uint8
	Flags uint8
	// Sent is the probes that counted for this TTL, Answered those that
	// got an answer.
	Sent, Answered uint8
	// Address answered most probes; zero when none did.
	Address netip.Addr
	// Min, Median and Max are the answered probes' round trips.
	Min, Median, Max time.Duration
}

// LossRatio is the share of the TTL's probes that got no answer.
func (h PathHop) LossRatio() float64 {
	if h.Sent == 0 {
		return 1
	}
	return float64(h.Sent-h.Answered) / float64(h.Sent)
}

// NoPath is the section of a relay that has no path to report, and why.
func NoPath(status PathStatus, reason string) *Path {
	return &Path{Status: status, Reason: reason}
}

// AppendPath encodes p at the end of dst. Text is made valid and cut to
// its bound, hops beyond MaxPathTTL are left out.
func AppendPath(dst []byte, p *Path) []byte {
	hops := p.Hops
	if len(hops) > MaxPathTTL {
		hops = hops[:MaxPathTTL]
	}
	dst = append(dst, byte(p.Method), byte(p.Status), p.Probes, p.MaxTTL)
	dst = binary.BigEndian.AppendUint16(dst, p.Packets)
	dst = binary.BigEndian.AppendUint64(dst, durationBits(p.Duration))
	dst = appendAddrPort(dst, p.Local)
	dst = appendAddrPort(dst, p.Remote)
	dst = appendText(dst, p.Reason)
	dst = appendText(dst, p.Route)
	dst = append(dst, byte(len(hops)))
	for i := range hops {
		h := &hops[i]
		dst = append(dst, h.TTL, h.Flags&pathHopKnownFlags, h.Sent, h.Answered)
		dst = appendAddr(dst, h.Address)
		for _, d := range [...]time.Duration{h.Min, h.Median, h.Max} {
			dst = binary.BigEndian.AppendUint64(dst, durationBits(d))
		}
	}
	return dst
}

func appendAddr(dst []byte, a netip.Addr) []byte {
	if !a.IsValid() {
		return append(dst, 0)
	}
	a = a.WithZone("")
	if a.Is4In6() {
		a = a.Unmap()
	}
	b := a.AsSlice()
	dst = append(dst, byte(len(b)))
	return append(dst, b...)
}

func appendAddrPort(dst []byte, ap netip.AddrPort) []byte {
	if !ap.Addr().IsValid() {
		return append(dst, 0, 0, 0)
	}
	dst = appendAddr(dst, ap.Addr())
	return binary.BigEndian.AppendUint16(dst, ap.Port())
}

func appendText(dst []byte, s string) []byte {
	if peer.CheckText([]byte(s), MaxPathText) != nil {
		s = peer.SanitizeText(s, MaxPathText)
	}
	dst = append(dst, byte(len(s)))
	return append(dst, s...)
}

// path checks (and with d.keep decodes) a path section: every number in
// its range, every string printable, TTLs in order from 1, round trips in
// order, an answered TTL with its address and an unanswered one without.
func (d *decoder) path(out **Path) {
	var p Path
	p.Method = PathMethod(d.u8())
	p.Status = PathStatus(d.u8())
	p.Probes, p.MaxTTL = d.u8(), d.u8()
	p.Packets = d.u16()
	p.Duration = d.duration("trace duration")
	p.Local = d.addrPort("local address")
	p.Remote = d.addrPort("remote address")
	p.Reason = d.str(int(d.u8()), "trace reason", checkPathText)
	p.Route = d.str(int(d.u8()), "trace route", checkPathText)
	n := int(d.u8())
	if d.err != nil {
		return
	}
	d.checkPathHead(&p, n)
	if d.keep && d.err == nil && n > 0 {
		p.Hops = make([]PathHop, 0, n)
	}
	var lastFlags uint8
	for i := 0; i < n && d.err == nil; i++ {
		h := d.pathHop(i)
		lastFlags = h.Flags
		if d.keep {
			p.Hops = append(p.Hops, h)
		}
	}
	if d.err == nil && p.Status == PathReached && lastFlags&PathHopFarEnd == 0 {
		d.failf("a trace that reached its far end does not end at it")
	}
	if d.keep && d.err == nil {
		kept := p // allocated only when decoding: a relay's check allocates nothing
		*out = &kept
	}
}

func (d *decoder) checkPathHead(p *Path, n int) {
	switch {
	case p.Method > PathUDP:
		d.failf("unknown trace method %d", p.Method)
	case p.Status == 0 || p.Status > pathStatusLast:
		d.failf("unknown trace status %d", p.Status)
	case p.Status.Traced() && p.Method == PathNone:
		d.failf("a trace that %s sent no probe", p.Status)
	case !p.Status.Traced() && n > 0:
		d.failf("a path with status %s lists %d TTLs", p.Status, n)
	case p.Probes > MaxPathProbes || p.MaxTTL > MaxPathTTL:
		d.failf("trace bounds of %d probes per TTL and %d TTLs, at most %d and %d", p.Probes, p.MaxTTL, MaxPathProbes, MaxPathTTL)
	case n > int(p.MaxTTL):
		d.failf("%d TTLs in a trace bounded by %d", n, p.MaxTTL)
	case p.Status == PathReached && n == 0:
		d.failf("a trace that reached its far end lists no TTL")
	}
}

func (d *decoder) pathHop(i int) PathHop {
	var h PathHop
	h.TTL, h.Flags, h.Sent, h.Answered = d.u8(), d.u8(), d.u8(), d.u8()
	h.Address = d.addr("TTL address")
	h.Min = d.duration("TTL minimum rtt")
	h.Median = d.duration("TTL median rtt")
	h.Max = d.duration("TTL maximum rtt")
	if d.err != nil {
		return h
	}
	switch {
	case int(h.TTL) != i+1:
		d.failf("TTL %d listed at position %d (TTLs are listed in order from 1)", h.TTL, i+1)
	case h.Flags&^pathHopKnownFlags != 0:
		d.failf("TTL %d: unknown flags %#02x", h.TTL, h.Flags&^pathHopKnownFlags)
	case h.Answered > h.Sent || int(h.Sent) > 2*MaxPathProbes:
		d.failf("TTL %d: %d of %d probes answered (at most %d sent)", h.TTL, h.Answered, h.Sent, 2*MaxPathProbes)
	case h.Answered == 0 && (h.Address.IsValid() || h.Max != 0 || h.Flags != 0):
		d.failf("TTL %d: no probe answered, yet an address, round trip or flag", h.TTL)
	case h.Answered > 0 && !h.Address.IsValid():
		d.failf("TTL %d: answered without an address", h.TTL)
	case h.Min > h.Median || h.Median > h.Max:
		d.failf("TTL %d: round trips out of order (min %v, median %v, max %v)", h.TTL, h.Min, h.Median, h.Max)
	}
	return h
}

func (d *decoder) addr(what string) netip.Addr {
	n := int(d.u8())
	if d.err != nil {
		return netip.Addr{}
	}
	switch n {
	case 0:
		return netip.Addr{}
	case 4:
		if b := d.take(4); b != nil {
			return netip.AddrFrom4([4]byte(b))
		}
	case 16:
		if b := d.take(16); b != nil {
			return netip.AddrFrom16([16]byte(b)).Unmap() // as the encoder writes it
		}
	default:
		d.failf("%s of %d bytes (4 or 16)", what, n)
	}
	return netip.Addr{}
}

func (d *decoder) addrPort(what string) netip.AddrPort {
	a := d.addr(what)
	port := d.u16()
	if d.err == nil && !a.IsValid() && port != 0 {
		d.failf("%s: a port without an address", what)
	}
	if !a.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, port)
}

func checkPathText(b []byte) error { return peer.CheckText(b, MaxPathText) }

// duration reads a duration of a path section, bounded as every one of a
// record is.
func (d *decoder) duration(what string) time.Duration { return d.durationOf(d.u64(), what) }
