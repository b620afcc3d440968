package frame

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// RecordKind tells hop records from error records in a reply.
type RecordKind uint8

// Record kinds.
const (
	RecordHop   RecordKind = 1
	RecordError RecordKind = 2
)

// Hop record flags.
const (
	// RecSynced: the hop's clock was synchronised (adjtimex without
	// STA_UNSYNC) when the request came in, so its wall clock may be
	// compared with another synchronised hop's.
	RecSynced uint8 = 1 << 0
	// RecTCPInfo: the TCP fields describe the hop's downstream connection.
	RecTCPInfo uint8 = 1 << 1
	// RecDialed: the hop opened its downstream connection for this frame;
	// Connect holds the handshake time.
	RecDialed uint8 = 1 << 2
	// RecEnd: the hop is the end of the chain and echoed the request.
	RecEnd uint8 = 1 << 3
	// RecStripped: the hop runs with --remove-perf-headers and removed
	// the records of the hops beyond it.
	RecStripped uint8 = 1 << 4
)

// Sizes and bounds of records.
const (
	recordPrefixLen = 2 + 1 + 1 + 8 // len, kind, flags, id
	hopFixedLen     = recordPrefixLen + 3*8 + 8 + 4 + 4 + 8 + 7*4
	errorFixedLen   = recordPrefixLen + 1 + 1 + 1 + 1 + 2
	// MaxNameLen bounds hop names and variable names.
	MaxNameLen = 64
	// MaxVars bounds the annotations one hop may attach.
	MaxVars = 32
	// MaxMessageLen bounds the human-readable text of an error record.
	MaxMessageLen = 512
	// MaxHopRecordLen is the largest hop record the encoder produces.
	MaxHopRecordLen = hopFixedLen + 1 + MaxNameLen + 1 + MaxVars*(1+MaxNameLen+8)
)

// TCPInfo is the subset of the kernel's TCP_INFO that explains a
// segment's delay: smoothed rtt and its variance, the lowest rtt seen,
// retransmissions, and the sizes that reveal an MTU black hole.
type TCPInfo struct {
	RTTMicros    uint32
	RTTVarMicros uint32
	MinRTTMicros uint32
	TotalRetrans uint32
	SndMSS       uint32
	PMTU         uint32
	SndCwnd      uint32
}

// Var is one local variable a hop attaches to its record (in-band context).
type Var struct {
	Name  string
	Value float64
}

// HopRecord is what one hop says about one frame, on its own clocks.
type HopRecord struct {
	ID    uint64
	Flags uint8
	Name  string
	// Monotonic durations on the hop's own clock.
	Forward    time.Duration // request-in → request-out (end host: request-in → reply-out)
	Downstream time.Duration // request-out → reply-in
	Return     time.Duration // reply-in → reply-out
	// WallIn is the hop's wall clock (Unix ns) at request-in.
	WallIn         int64
	EstErrorMicros uint32
	MaxErrorMicros uint32
	Connect        time.Duration
	TCP            TCPInfo
	Vars           []Var
}

// Reason is why a segment failed; a small fixed set so that it can be a
// Prometheus label value.
type Reason uint8

// Failure reasons.
const (
	ReasonUnknown Reason = iota
	ReasonRefused
	ReasonTimeout
	ReasonReset
	ReasonClosed
	ReasonUnreachable
	ReasonLoop
	ReasonTooManyHops
	ReasonBadFrame
	ReasonAuth
	ReasonOverloaded
	reasonCount
)

var reasonNames = [...]string{"unknown", "refused", "timeout", "reset", "closed", "unreachable", "loop", "too_many_hops", "bad_frame", "auth", "overloaded"}

func (r Reason) String() string {
	if r < reasonCount {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason_%d", uint8(r))
}

// Reasons lists every reason, for documentation and pre-initialised metrics.
func Reasons() []Reason {
	out := make([]Reason, 0, reasonCount)
	for r := ReasonUnknown; r < reasonCount; r++ {
		out = append(out, r)
	}
	return out
}

// Side says which segment an error record is about, seen from the hop that
// wrote it.
type Side uint8

const (
	// SideDownstream: the hop could not get an answer from its next hop;
	// the failed segment is reporter → next hop.
	SideDownstream Side = 0
	// SideUpstream: the hop refused what it received; the failed segment
	// is previous hop → reporter.
	SideUpstream Side = 1
)

// ErrorRecord ends a reply whose probe did not make it through the chain.
type ErrorRecord struct {
	ID     uint64
	Name   string // the hop that writes the record
	Peer   string // the other end of the failed segment: next hop's name or address, or the upstream peer's address
	Reason Reason
	Side   Side
	// Message is the error text, for logs and debug output.
	Message string
}

// Record is a decoded reply record: exactly one of Hop and Err is set,
// according to Kind.
type Record struct {
	Kind RecordKind
	Hop  HopRecord
	Err  ErrorRecord
}

// AppendHop encodes r at the end of dst. With enough capacity in dst it does
// not allocate, which keeps the relay's return path allocation-free.
func AppendHop(dst []byte, r *HopRecord) []byte {
	name := clip(r.Name, MaxNameLen)
	vars := r.Vars
	if len(vars) > MaxVars {
		vars = vars[:MaxVars]
	}
	start := len(dst)
	dst = append(dst, 0, 0, byte(RecordHop), r.Flags)
	dst = binary.BigEndian.AppendUint64(dst, r.ID)
	dst = binary.BigEndian.AppendUint64(dst, durationBits(r.Forward))
	dst = binary.BigEndian.AppendUint64(dst, durationBits(r.Downstream))
	dst = binary.BigEndian.AppendUint64(dst, durationBits(r.Return))
	dst = binary.BigEndian.AppendUint64(dst, uint64(r.WallIn))
	dst = binary.BigEndian.AppendUint32(dst, r.EstErrorMicros)
	dst = binary.BigEndian.AppendUint32(dst, r.MaxErrorMicros)
	dst = binary.BigEndian.AppendUint64(dst, durationBits(r.Connect))
	for _, v := range [...]uint32{r.TCP.RTTMicros, r.TCP.RTTVarMicros, r.TCP.MinRTTMicros, r.TCP.TotalRetrans, r.TCP.SndMSS, r.TCP.PMTU, r.TCP.SndCwnd} {
		dst = binary.BigEndian.AppendUint32(dst, v)
	}
	dst = append(dst, byte(len(name)))
	dst = append(dst, name...)
	dst = append(dst, byte(len(vars)))
	for _, v := range vars {
		vn := clip(v.Name, MaxNameLen)
		dst = append(dst, byte(len(vn)))
		dst = append(dst, vn...)
		dst = binary.BigEndian.AppendUint64(dst, math.Float64bits(v.Value))
	}
	binary.BigEndian.PutUint16(dst[start:], uint16(len(dst)-start))
	return dst
}

// AppendError encodes e at the end of dst.
func AppendError(dst []byte, e *ErrorRecord) []byte {
	name := clip(e.Name, MaxNameLen)
	peer := clip(e.Peer, 255)
	msg := clip(e.Message, MaxMessageLen)
	start := len(dst)
	dst = append(dst, 0, 0, byte(RecordError), 0)
	dst = binary.BigEndian.AppendUint64(dst, e.ID)
	dst = append(dst, byte(e.Reason), byte(e.Side), byte(len(name)), byte(len(peer)))
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(msg)))
	dst = append(dst, name...)
	dst = append(dst, peer...)
	dst = append(dst, msg...)
	binary.BigEndian.PutUint16(dst[start:], uint16(len(dst)-start))
	return dst
}

// checkRecords validates count records in b, which they must exactly fill,
// without allocating; relays use it to refuse malformed replies at the
// segment where they appear.
func checkRecords(b []byte, count int) error {
	off := 0
	for i := 0; i < count; i++ {
		n, err := recordLen(b[off:], i)
		if err != nil {
			return err
		}
		if err := validateRecord(b[off:off+n], i); err != nil {
			return err
		}
		off += n
	}
	if off != len(b) {
		return fmt.Errorf("%w: %d bytes after the last of %d records", ErrMalformed, len(b)-off, count)
	}
	return nil
}

func recordLen(b []byte, index int) (int, error) {
	if len(b) < recordPrefixLen {
		return 0, fmt.Errorf("%w: record %d: %d bytes left, a record needs at least %d", ErrMalformed, index, len(b), recordPrefixLen)
	}
	n := int(binary.BigEndian.Uint16(b))
	if n > len(b) {
		return 0, fmt.Errorf("%w: record %d announces %d bytes, %d left", ErrMalformed, index, n, len(b))
	}
	switch RecordKind(b[2]) {
	case RecordHop:
		if n < hopFixedLen+2 {
			return 0, fmt.Errorf("%w: hop record %d is %d bytes, at least %d needed", ErrMalformed, index, n, hopFixedLen+2)
		}
	case RecordError:
		if n < errorFixedLen {
			return 0, fmt.Errorf("%w: error record %d is %d bytes, at least %d needed", ErrMalformed, index, n, errorFixedLen)
		}
	default:
		return 0, fmt.Errorf("%w: record %d has unknown kind %d", ErrMalformed, index, b[2])
	}
	return n, nil
}

// ParseRecords decodes the records of a reply's tail.
func ParseRecords(tail []byte, count int) ([]Record, error) {
	out := make([]Record, 0, count)
	off := 0
	for i := 0; i < count; i++ {
		n, err := recordLen(tail[off:], i)
		if err != nil {
			return nil, err
		}
		var rec Record
		if err := decodeRecord(tail[off:off+n], i, &rec); err != nil {
			return nil, err
		}
		out = append(out, rec)
		off += n
	}
	if off != len(tail) {
		return nil, fmt.Errorf("%w: %d bytes after the last of %d records", ErrMalformed, len(tail)-off, count)
	}
	return out, nil
}

// ParseErrorFrame decodes the single error record of a KindError frame.
func ParseErrorFrame(frame []byte, maxFrameBytes int) (ErrorRecord, error) {
	h, err := ParseHeader(frame, maxFrameBytes)
	if err != nil {
		return ErrorRecord{}, err
	}
	if h.Kind != KindError {
		return ErrorRecord{}, fmt.Errorf("%w: %s is not an error frame", ErrMalformed, h.Kind)
	}
	if len(frame) < h.FrameLen() {
		return ErrorRecord{}, fmt.Errorf("%w: header announces %d bytes, have %d", ErrTruncated, h.FrameLen(), len(frame))
	}
	end := h.FrameLen()
	if h.Signed() {
		end -= MACLen
	}
	if end < HeaderLen {
		return ErrorRecord{}, fmt.Errorf("%w: error frame shorter than its trailer", ErrTruncated)
	}
	recs, err := ParseRecords(frame[HeaderLen:end], 1)
	if err != nil {
		return ErrorRecord{}, err
	}
	if recs[0].Kind != RecordError {
		return ErrorRecord{}, fmt.Errorf("%w: error frame holds a hop record", ErrMalformed)
	}
	return recs[0].Err, nil
}

// decoder reads fields of one record; with keep false it validates
// without allocating strings.
type decoder struct {
	b     []byte
	off   int
	err   error
	index int
	keep  bool
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b)-d.off {
		d.err = fmt.Errorf("%w: record %d: field needs %d bytes, %d left", ErrMalformed, d.index, n, len(d.b)-d.off)
		return nil
	}
	out := d.b[d.off : d.off+n]
	d.off += n
	return out
}

func (d *decoder) u8() uint8 {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if b := d.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) duration() time.Duration {
	v := d.u64()
	if v > math.MaxInt64 {
		if d.err == nil {
			d.err = fmt.Errorf("%w: record %d: duration out of range", ErrMalformed, d.index)
		}
		return 0
	}
	return time.Duration(v)
}

func (d *decoder) str(n int) string {
	b := d.take(n)
	if !d.keep {
		return ""
	}
	return string(b)
}

func (d *decoder) failf(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: record %d: "+format, append([]any{ErrMalformed, d.index}, args...)...)
	}
}

// validateRecord checks one record with direct offsets, the relay's hot
// path; decodeRecord applies the same rules while decoding.
func validateRecord(b []byte, index int) error {
	if RecordKind(b[2]) != RecordHop {
		return decodeRecord(b, index, nil)
	}
	bad := func(what string) error { return fmt.Errorf("%w: record %d: %s", ErrMalformed, index, what) }
	if len(b) < hopFixedLen+2 {
		return bad("too short")
	}
	for _, off := range [...]int{12, 20, 28, 52} {
		if b[off]&0x80 != 0 {
			return bad("duration out of range")
		}
	}
	off := hopFixedLen
	nameLen := int(b[off])
	if nameLen > MaxNameLen {
		return bad("name too long")
	}
	off += 1 + nameLen
	if off >= len(b) {
		return bad("name beyond the record")
	}
	nvars := int(b[off])
	if nvars > MaxVars {
		return bad("too many variables")
	}
	off++
	for i := 0; i < nvars; i++ {
		if off >= len(b) {
			return bad("variable beyond the record")
		}
		vn := int(b[off])
		if vn > MaxNameLen {
			return bad("variable name too long")
		}
		off += 1 + vn + 8
	}
	if off != len(b) {
		return bad(fmt.Sprintf("%d bytes of variables where %d are left", off-hopFixedLen, len(b)-hopFixedLen))
	}
	return nil
}

// decodeRecord checks one record and, when rec is not nil, decodes it.
func decodeRecord(b []byte, index int, rec *Record) error {
	d := &decoder{b: b, off: 2, index: index, keep: rec != nil}
	var scratch Record
	if rec == nil {
		rec = &scratch
	}
	kind := RecordKind(d.u8())
	flags := d.u8()
	id := d.u64()
	rec.Kind = kind
	switch kind {
	case RecordHop:
		h := &rec.Hop
		h.ID, h.Flags = id, flags
		h.Forward = d.duration()
		h.Downstream = d.duration()
		h.Return = d.duration()
		h.WallIn = int64(d.u64())
		h.EstErrorMicros = d.u32()
		h.MaxErrorMicros = d.u32()
		h.Connect = d.duration()
		h.TCP = TCPInfo{RTTMicros: d.u32(), RTTVarMicros: d.u32(), MinRTTMicros: d.u32(), TotalRetrans: d.u32(), SndMSS: d.u32(), PMTU: d.u32(), SndCwnd: d.u32()}
		if nameLen := int(d.u8()); nameLen > MaxNameLen {
			d.failf("name of %d bytes, maximum %d", nameLen, MaxNameLen)
		} else {
			h.Name = d.str(nameLen)
		}
		nvars := int(d.u8())
		if nvars > MaxVars {
			d.failf("%d variables, maximum %d", nvars, MaxVars)
		}
		for i := 0; i < nvars && d.err == nil; i++ {
			vn := int(d.u8())
			if vn > MaxNameLen {
				d.failf("variable name of %d bytes, maximum %d", vn, MaxNameLen)
				break
			}
			name := d.str(vn)
			value := math.Float64frombits(d.u64())
			if d.keep {
				h.Vars = append(h.Vars, Var{Name: name, Value: value})
			}
		}
	case RecordError:
		e := &rec.Err
		e.ID = id
		e.Reason = Reason(d.u8())
		e.Side = Side(d.u8())
		nameLen, peerLen := int(d.u8()), int(d.u8())
		msgLen := int(d.u16())
		if flags != 0 || e.Side > SideUpstream || nameLen > MaxNameLen || msgLen > MaxMessageLen {
			d.failf("error record has out-of-range fields")
		}
		e.Name = d.str(nameLen)
		e.Peer = d.str(peerLen)
		e.Message = d.str(msgLen)
	default:
		d.failf("unknown kind %d", kind)
	}
	if d.err != nil {
		return d.err
	}
	if d.off != len(b) {
		return fmt.Errorf("%w: record %d has %d trailing bytes", ErrMalformed, index, len(b)-d.off)
	}
	return nil
}

func durationBits(d time.Duration) uint64 {
	if d < 0 {
		return 0
	}
	return uint64(d)
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// FirstHopName returns the name in the first record of a reply's tail
// without decoding the rest; relays use it to learn their next hop's name.
func FirstHopName(tail []byte) ([]byte, bool) {
	if len(tail) < hopFixedLen+1 || RecordKind(tail[2]) != RecordHop {
		return nil, false
	}
	n := int(binary.BigEndian.Uint16(tail))
	nameLen := int(tail[hopFixedLen])
	if n > len(tail) || hopFixedLen+1+nameLen > n {
		return nil, false
	}
	return tail[hopFixedLen+1 : hopFixedLen+1+nameLen], true
}

// HopTimes is what a streaming consumer needs of a hop record, read in place.
type HopTimes struct {
	Name                        []byte
	Flags                       uint8
	Forward, Downstream, Return time.Duration
}

// RecordIter walks the records of a reply that Parse accepted, without
// allocating: stream mode reads millions of them.
type RecordIter struct {
	tail []byte
	off  int
}

// NewRecordIter iterates over the records in a parsed reply's tail.
func NewRecordIter(tail []byte) RecordIter { return RecordIter{tail: tail} }

// Next returns the next record's kind and bytes, or false at the end.
func (it *RecordIter) Next() (RecordKind, []byte, bool) {
	if it.off+recordPrefixLen > len(it.tail) {
		return 0, nil, false
	}
	n := int(binary.BigEndian.Uint16(it.tail[it.off:]))
	if n < recordPrefixLen || it.off+n > len(it.tail) {
		return 0, nil, false
	}
	rec := it.tail[it.off : it.off+n]
	it.off += n
	return RecordKind(rec[2]), rec, true
}

// ReadHopTimes reads a hop record's name and durations in place. The
// record must come from a frame Parse accepted.
func ReadHopTimes(rec []byte) HopTimes {
	nameLen := int(rec[hopFixedLen])
	return HopTimes{
		Name:       rec[hopFixedLen+1 : hopFixedLen+1+nameLen],
		Flags:      rec[3],
		Forward:    time.Duration(binary.BigEndian.Uint64(rec[12:])),
		Downstream: time.Duration(binary.BigEndian.Uint64(rec[20:])),
		Return:     time.Duration(binary.BigEndian.Uint64(rec[28:])),
	}
}
