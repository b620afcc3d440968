// Package frame is the wire format every hop of a subsegment chain speaks.
//
// A frame is a fixed 12-byte header followed by a body and, when the chain
// shares an HMAC key, a 32-byte HMAC-SHA256 trailer over header and body:
//
//	header:  magic "SSEG" | version u8 | kind u8 | flags u8 | reserved u8 | length u32
//	body:    seq u64 | probe flags u16 | count u8 | reserved u8 | budget µs u32 | data length u32
//	         data (probe padding, or the stdin block in stream mode)
//	         request: count × 8-byte hop IDs (the path, for loop detection)
//	         reply:   count × length-prefixed records (hop and error records)
//	trailer: HMAC-SHA256 (only when the header's signed flag is set)
//
// Requests travel away from the source and carry only the path; each hop
// prepends its full record to the reply on the way back. That keeps the
// forward path cheap and lets a hop rebuild a reply on its own when its
// downstream dies mid-probe. All integers are big-endian.
//
// Layering (internal/architecture_test.go): floor 1; it imports only
// internal/host and internal/wire, never internal/config, the source end,
// relay or anything above.
package frame

import (
	"encoding/binary"
	"fmt"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// Magic starts every frame so that a relay recognises a stray connection
// (an HTTP client, a port scanner) at its first read.
const Magic = "SSEG"

// Version is bumped on any incompatible change of the layout. Version 2
// added the hops' waits, kernel-stamp flags and upstream TCP_INFO to hop
// records, and 16-bit record flags.
const Version = 2

// Sizes of the fixed parts of a frame.
const (
	HeaderLen    = 12
	ProbeHdrLen  = 20
	MACLen       = 32
	PathEntryLen = 8
	// MinFrameLen is the smallest frame that carries a probe header.
	MinFrameLen = HeaderLen + ProbeHdrLen
)

// Defaults bound per-connection memory and the work a single probe can cause.
const (
	// DefaultMaxFrameBytes lets a stream block of 16 MiB through a chain of
	// the maximum hop count with room for every hop's record. Buffers for
	// frames over 64 KiB come from a per-process budget (BufferBudget).
	DefaultMaxFrameBytes = MaxBlockBytes + 128<<10
	// MaxBlockBytes is the largest stream block (--stdin-block-size).
	MaxBlockBytes = 16 << 20
	// MaxFrameBytesLimit is the largest --relay.max-frame-bytes.
	MaxFrameBytesLimit = 64 << 20
	DefaultMaxHops     = 32
	// MaxHopsLimit is the largest hop count the count field can express.
	MaxHopsLimit = 255
	// StreamWindow is the most stream frames a source keeps in flight;
	// relays keep room for more, so that no ring fills up and stalls the
	// pipeline.
	StreamWindow = 960
	// MaxPayloadBytes is the largest probe padding a source may request.
	MaxPayloadBytes = 64 << 10
)

// Kind says what a frame carries and which way it travels.
type Kind uint8

// Frame kinds.
const (
	KindProbeRequest  Kind = 1
	KindProbeReply    Kind = 2
	KindStreamRequest Kind = 3
	KindStreamReply   Kind = 4
	// KindError answers a frame the hop could not trust or parse; its body is
	// a single error record and the sender closes the connection after it.
	KindError Kind = 5
)

func (k Kind) String() string {
	switch k {
	case KindProbeRequest:
		return "probe request"
	case KindProbeReply:
		return "probe reply"
	case KindStreamRequest:
		return "stream request"
	case KindStreamReply:
		return "stream reply"
	case KindError:
		return "error"
	}
	return fmt.Sprintf("unknown kind %d", uint8(k))
}

// IsRequest reports whether frames of this kind travel away from the source.
func (k Kind) IsRequest() bool { return k == KindProbeRequest || k == KindStreamRequest }

// IsReply reports whether frames of this kind travel back to the source.
func (k Kind) IsReply() bool { return k == KindProbeReply || k == KindStreamReply }

// ReplyKind is the kind an echo of a request of kind k carries.
func (k Kind) ReplyKind() Kind {
	if k == KindStreamRequest {
		return KindStreamReply
	}
	return KindProbeReply
}

// Header flags.
const (
	// FlagSigned marks a frame that ends with an HMAC-SHA256 trailer.
	FlagSigned uint8 = 1 << 0
)

// Probe flags, carried in the body so that every hop sees what the source asked.
const (
	// ProbeWarmup marks the first frame of a session: it opens the
	// downstream connections, so its timing is reported as connect time
	// and kept out of the rtt statistics.
	ProbeWarmup uint16 = 1 << 0
	// ProbeAnnotate asks every hop to attach its configured local
	// variables (load average, interface counters) to its record.
	ProbeAnnotate uint16 = 1 << 1
	// ProbeStripped is set by a relay running with --remove-perf-headers:
	// the path or records from beyond it were removed.
	ProbeStripped uint16 = 1 << 2
	// ProbeTrace asks every relay to start a trace of the route to its
	// next hop on the connection this frame travels (unless one is
	// running on it), bounded by the frame's budget: the path extension
	// (path.go). A relay strips it from what it forwards past
	// --remove-perf-headers.
	ProbeTrace uint16 = 1 << 3
	// ProbePath asks every relay to report its latest trace of this
	// connection in its record (RecPath), waiting within the frame's
	// budget for one still running.
	ProbePath uint16 = 1 << 4
)

// Header is the fixed part in front of every frame.
type Header struct {
	Kind  Kind
	Flags uint8
	// Length counts the bytes after the header, trailer included.
	Length uint32
}

// Signed reports whether the frame carries an HMAC trailer.
func (h Header) Signed() bool { return h.Flags&FlagSigned != 0 }

// FrameLen is the whole frame's size on the wire.
func (h Header) FrameLen() int { return HeaderLen + int(h.Length) }

// Errors a parser returns; wrapped with detail, test with errors.Is. Each
// carries the reason a hop reports for it (peer.Classify).
var (
	ErrBadMagic    = peer.NewError(peer.ReasonBadFrame, "bad magic: not a subsegment frame")
	ErrBadVersion  = peer.NewError(peer.ReasonBadFrame, "unsupported protocol version")
	ErrBadKind     = peer.NewError(peer.ReasonBadFrame, "unknown frame kind")
	ErrTooLarge    = peer.NewError(peer.ReasonTooLarge, "frame larger than the maximum frame size")
	ErrTruncated   = peer.NewError(peer.ReasonBadFrame, "frame truncated")
	ErrMalformed   = peer.NewError(peer.ReasonBadFrame, "malformed frame")
	ErrTooManyHops = peer.NewError(peer.ReasonTooManyHops, "too many hops")
)

// ParseHeader validates the fixed header at the start of b. It needs only
// HeaderLen bytes, so a reader can size its next read from it.
func ParseHeader(b []byte, maxFrameBytes int) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("%w: header needs %d bytes, have %d", ErrTruncated, HeaderLen, len(b))
	}
	if string(b[0:4]) != Magic {
		return Header{}, fmt.Errorf("%w (first bytes %q)", ErrBadMagic, printable(b[0:4]))
	}
	if b[4] != Version {
		return Header{}, fmt.Errorf("%w %d (this build speaks %d)", ErrBadVersion, b[4], Version)
	}
	h := Header{Kind: Kind(b[5]), Flags: b[6], Length: binary.BigEndian.Uint32(b[8:12])}
	if h.Kind < KindProbeRequest || h.Kind > KindError {
		return Header{}, fmt.Errorf("%w %d", ErrBadKind, b[5])
	}
	if h.Flags&^FlagSigned != 0 || b[7] != 0 {
		return Header{}, fmt.Errorf("%w: reserved header bits set (flags %#x, reserved %#x)", ErrMalformed, h.Flags, b[7])
	}
	if int64(h.Length)+HeaderLen > int64(maxFrameBytes) {
		return Header{}, fmt.Errorf("%w: %d bytes, maximum %d", ErrTooLarge, int64(h.Length)+HeaderLen, maxFrameBytes)
	}
	return h, nil
}

// PutHeader writes h into the first HeaderLen bytes of b.
func PutHeader(b []byte, h Header) {
	copy(b[0:4], Magic)
	b[4] = Version
	b[5] = byte(h.Kind)
	b[6] = h.Flags
	b[7] = 0
	binary.BigEndian.PutUint32(b[8:12], h.Length)
}

// ProbeHeader is the fixed start of the body of request and reply frames.
type ProbeHeader struct {
	Seq   uint64
	Flags uint16
	// Count is the number of path entries (request) or records (reply).
	Count uint8
	// BudgetMicros is how long the receiving hop may take to answer; each
	// hop passes a smaller budget on so that the hop nearest a failure
	// times out first and its error reaches the source in time.
	BudgetMicros uint32
	DataLen      uint32
}

// PutProbeHeader writes p into the ProbeHdrLen bytes of b.
func PutProbeHeader(b []byte, p ProbeHeader) {
	binary.BigEndian.PutUint64(b[0:8], p.Seq)
	binary.BigEndian.PutUint16(b[8:10], p.Flags)
	b[10] = p.Count
	b[11] = 0
	binary.BigEndian.PutUint32(b[12:16], p.BudgetMicros)
	binary.BigEndian.PutUint32(b[16:20], p.DataLen)
}

func parseProbeHeader(b []byte) ProbeHeader {
	return ProbeHeader{
		Seq:          binary.BigEndian.Uint64(b[0:8]),
		Flags:        binary.BigEndian.Uint16(b[8:10]),
		Count:        b[10],
		BudgetMicros: binary.BigEndian.Uint32(b[12:16]),
		DataLen:      binary.BigEndian.Uint32(b[16:20]),
	}
}

// View locates the parts of one complete frame inside a buffer without
// copying it, so that a relay can rewrite and forward it in place.
type View struct {
	Header Header
	Probe  ProbeHeader
	// Offsets into the frame (0 = first header byte).
	DataOff int
	TailOff int // path entries (request) or records (reply)
	MACOff  int // == frame length when unsigned
}

// Data is the frame's padding or stream block.
func (v *View) Data(frame []byte) []byte { return frame[v.DataOff:v.TailOff] }

// Tail is the frame's path (request) or records (reply).
func (v *View) Tail(frame []byte) []byte { return frame[v.TailOff:v.MACOff] }

// Parse validates a complete frame of any kind but KindError and locates its
// parts. It never panics on any input: every inconsistency is an error.
// When only a record is refused (a *BadRecord error), the View is still
// returned.
func Parse(frame []byte, maxFrameBytes, maxHops int) (View, error) {
	return parse(frame, maxFrameBytes, maxHops, nil)
}

// parse is Parse; with recs set, a reply's records are decoded into
// *recs as they are checked (ParseRecordsInto), not only checked.
func parse(frame []byte, maxFrameBytes, maxHops int, recs *[]Record) (View, error) {
	h, err := ParseHeader(frame, maxFrameBytes)
	if err != nil {
		return View{}, err
	}
	if len(frame) < h.FrameLen() {
		return View{}, fmt.Errorf("%w: header announces %d bytes, have %d", ErrTruncated, h.FrameLen(), len(frame))
	}
	frame = frame[:h.FrameLen()]
	v := View{Header: h, MACOff: len(frame)}
	if h.Signed() {
		v.MACOff -= MACLen
	}
	if h.Kind == KindError {
		return View{}, fmt.Errorf("%w: an error frame has no probe header", ErrMalformed)
	}
	if v.MACOff < MinFrameLen {
		return View{}, fmt.Errorf("%w: %d bytes is too short for a %s", ErrTruncated, len(frame), h.Kind)
	}
	v.Probe = parseProbeHeader(frame[HeaderLen:MinFrameLen])
	if frame[HeaderLen+11] != 0 {
		return View{}, fmt.Errorf("%w: reserved probe header byte set", ErrMalformed)
	}
	v.DataOff = MinFrameLen
	if int64(v.Probe.DataLen) > int64(v.MACOff-v.DataOff) {
		return View{}, fmt.Errorf("%w: data length %d exceeds the %d bytes left", ErrMalformed, v.Probe.DataLen, v.MACOff-v.DataOff)
	}
	v.TailOff = v.DataOff + int(v.Probe.DataLen)
	if int(v.Probe.Count) > maxHops {
		return View{}, fmt.Errorf("%w: %d entries, maximum %d", ErrTooManyHops, v.Probe.Count, maxHops)
	}
	tail := frame[v.TailOff:v.MACOff]
	if h.Kind.IsRequest() {
		if len(tail) != int(v.Probe.Count)*PathEntryLen {
			return View{}, fmt.Errorf("%w: path of %d hops needs %d bytes, have %d", ErrMalformed, v.Probe.Count, int(v.Probe.Count)*PathEntryLen, len(tail))
		}
		return v, nil
	}
	if recs != nil {
		*recs, err = ParseRecordsInto(*recs, tail, int(v.Probe.Count))
	} else {
		err = checkRecords(tail, int(v.Probe.Count))
	}
	if err != nil {
		// The frame's structure is known: a receiver may still decode the
		// records before the refused one (ParseRecords) to say where the
		// chain went wrong.
		return v, err
	}
	return v, nil
}

// PathContains reports whether the request path in tail holds id: a hop that
// finds itself there has been reached twice, a forwarding loop.
func PathContains(tail []byte, id uint64) bool {
	for off := 0; off+PathEntryLen <= len(tail); off += PathEntryLen {
		if binary.BigEndian.Uint64(tail[off:]) == id {
			return true
		}
	}
	return false
}

// PathIDs decodes a request path; used by diagnostics, not the relay hot path.
func PathIDs(tail []byte) []uint64 {
	ids := make([]uint64, 0, len(tail)/PathEntryLen)
	for off := 0; off+PathEntryLen <= len(tail); off += PathEntryLen {
		ids = append(ids, binary.BigEndian.Uint64(tail[off:]))
	}
	return ids
}

func printable(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			c = '.'
		}
		out[i] = c
	}
	return string(out)
}
