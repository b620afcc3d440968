package frame

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
)

// RecordKind tells hop records from error records in a reply.
type RecordKind uint8

// Record kinds.
const (
	RecordHop   RecordKind = 1
	RecordError RecordKind = 2
)

// Hop record flags (16 bits; a record with any other bit set is refused).
const (
	// RecSynced: the hop's clock was synchronised (adjtimex without
	// STA_UNSYNC) when the request came in, so its wall clock may be
	// compared with another synchronised hop's.
	RecSynced uint16 = 1 << 0
	// RecTCPInfo: TCP holds TCP_INFO of the hop's downstream connection
	// (the near end's view of the segment after it).
	RecTCPInfo uint16 = 1 << 1
	// RecDialed: the hop opened its downstream connection for this frame;
	// Connect holds the handshake time.
	RecDialed uint16 = 1 << 2
	// RecEnd: the hop is the end of the chain and echoed the request.
	RecEnd uint16 = 1 << 3
	// RecStripped: the hop runs with --remove-perf-headers and removed
	// the records of the hops beyond it.
	RecStripped uint16 = 1 << 4
	// RecKernelIn: request-in is the kernel's receive stamp of the
	// request; WaitForward is how long it waited to be read.
	RecKernelIn uint16 = 1 << 5
	// RecKernelReply: reply-in is the kernel's receive stamp of the
	// reply; WaitReturn is how long it waited to be read.
	RecKernelReply uint16 = 1 << 6
	// RecTCPInfoUp: TCPUp holds TCP_INFO of the hop's upstream
	// connection (the far end's view of the segment before it).
	RecTCPInfoUp uint16 = 1 << 7
	// RecPath: the record ends with a path section (path.go): what the
	// hop's trace of the route to its next hop found, asked for by
	// ProbePath.
	RecPath uint16 = 1 << 8
	// RecReflector: the record is a STAMP reflector's, the end of the
	// chain, written by the relay that measured it (--forward-to
	// stamp://): Forward is its residence T3 − T2, and it reports no
	// waits (none known, not 0).
	RecReflector uint16 = 1 << 9

	recKnownFlags = RecSynced | RecTCPInfo | RecDialed | RecEnd | RecStripped | RecKernelIn | RecKernelReply | RecTCPInfoUp | RecPath | RecReflector
)

// Sizes and bounds of records.
const (
	recordPrefixLen = 2 + 1 + 2 + 8 // len, kind, flags, id
	tcpInfoLen      = 7 * 4
	hopFixedLen     = recordPrefixLen + 5*8 + 8 + 4 + 4 + 8 + 2*tcpInfoLen
	errorFixedLen   = recordPrefixLen + 1 + 1 + 1 + 1 + 2
	// MaxNameLen bounds hop names and variable names.
	MaxNameLen = peer.MaxNameLen
	// MaxVars bounds the annotations one hop may attach.
	MaxVars = 32
	// MaxMessageLen bounds the human-readable text of an error record.
	MaxMessageLen = peer.MaxMessageLen
	// MaxHopRecordLen is the largest hop record the encoder produces.
	MaxHopRecordLen = hopFixedLen + 1 + MaxNameLen + 1 + MaxVars*(1+MaxNameLen+8) + MaxPathLen
	// PlainHopRecordLen is the largest hop record without variables.
	PlainHopRecordLen = hopFixedLen + 1 + MaxNameLen + 1
	// MaxErrorRecordLen is the largest error record.
	MaxErrorRecordLen = errorFixedLen + MaxNameLen + peer.MaxPeerLen + MaxMessageLen
	// MaxDuration bounds every duration in a record.
	MaxDuration = peer.MaxDuration
)

// Offsets of the fixed fields of a hop record.
const (
	offFlags      = 3
	offForward    = recordPrefixLen
	offDownstream = offForward + 8
	offReturn     = offDownstream + 8
	offWaitFwd    = offReturn + 8
	offWaitRet    = offWaitFwd + 8
)

// Var is one local variable a hop attaches to its record (in-band context).
type Var struct {
	Name  string
	Value float64
}

// HopRecord is what one hop says about one frame, on its own clocks.
type HopRecord struct {
	ID    uint64
	Flags uint16
	Name  string
	// Monotonic durations on the hop's own clock. Request-in and reply-in
	// are the kernel's receive stamps where RecKernelIn/RecKernelReply
	// say so, else the time the hop read the frame.
	Forward    time.Duration // request-in → request-out (end host: request-in → reply-out)
	Downstream time.Duration // request-out → reply-in
	Return     time.Duration // reply-in → reply-out
	// WaitForward and WaitReturn are the parts of Forward and Return the
	// frame spent in the kernel before the hop read it: waiting for a CPU
	// or for the hop's loop. They are part of the hop's residence.
	WaitForward time.Duration
	WaitReturn  time.Duration
	// WallIn is the hop's wall clock (Unix ns) at request-in.
	WallIn         int64
	EstErrorMicros uint32
	MaxErrorMicros uint32
	Connect        time.Duration
	// TCP is TCP_INFO of the downstream connection (RecTCPInfo), TCPUp of
	// the upstream connection (RecTCPInfoUp), read for this reply.
	TCP   tcpinfo.Info
	TCPUp tcpinfo.Info
	Vars  []Var
	// Path is the hop's trace of the route to its next hop (RecPath);
	// nil in every record that does not carry one.
	Path *Path
}

// Side says which segment an error record is about, seen from the hop that
// wrote it.
type Side uint8

const (
	// SideDownstream says the hop could not get an answer from its next
	// hop: the failed segment is reporter → next hop.
	SideDownstream Side = 0
	// SideUpstream says the hop refused what it received: the failed
	// segment is previous hop → reporter.
	SideUpstream Side = 1
)

// ErrorRecord ends a reply whose probe did not make it through the chain.
type ErrorRecord struct {
	ID     uint64
	Name   string // the hop that writes the record
	Peer   string // the other end of the failed segment: next hop's name or address, or the upstream peer's address
	Reason peer.Reason
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
	flags := r.Flags &^ RecPath
	if r.Path != nil {
		flags |= RecPath
	}
	start := len(dst)
	dst = append(dst, 0, 0, byte(RecordHop))
	dst = binary.BigEndian.AppendUint16(dst, flags&recKnownFlags)
	dst = binary.BigEndian.AppendUint64(dst, r.ID)
	for _, d := range [...]time.Duration{r.Forward, r.Downstream, r.Return, r.WaitForward, r.WaitReturn} {
		dst = binary.BigEndian.AppendUint64(dst, durationBits(d))
	}
	dst = binary.BigEndian.AppendUint64(dst, uint64(r.WallIn))
	dst = binary.BigEndian.AppendUint32(dst, r.EstErrorMicros)
	dst = binary.BigEndian.AppendUint32(dst, r.MaxErrorMicros)
	dst = binary.BigEndian.AppendUint64(dst, durationBits(r.Connect))
	dst = appendTCP(dst, &r.TCP)
	dst = appendTCP(dst, &r.TCPUp)
	dst = append(dst, byte(len(name)))
	dst = append(dst, name...)
	dst = append(dst, byte(len(vars)))
	for _, v := range vars {
		vn := clip(v.Name, MaxNameLen)
		dst = append(dst, byte(len(vn)))
		dst = append(dst, vn...)
		dst = binary.BigEndian.AppendUint64(dst, math.Float64bits(v.Value))
	}
	if r.Path != nil {
		dst = AppendPath(dst, r.Path)
	}
	binary.BigEndian.PutUint16(dst[start:], uint16(len(dst)-start))
	return dst
}

func appendTCP(dst []byte, t *tcpinfo.Info) []byte {
	for _, v := range [...]uint32{t.RTTMicros, t.RTTVarMicros, t.MinRTTMicros, t.TotalRetrans, t.SndMSS, t.PMTU, t.SndCwnd} {
		dst = binary.BigEndian.AppendUint32(dst, v)
	}
	return dst
}

// AppendError encodes e at the end of dst.
func AppendError(dst []byte, e *ErrorRecord) []byte {
	name := clip(e.Name, MaxNameLen)
	p := e.Peer
	if peer.CheckPeerBytes([]byte(p)) != nil {
		p = peer.SanitizePeer(p)
	}
	msg := e.Message
	if peer.CheckText([]byte(msg), MaxMessageLen) != nil {
		msg = peer.SanitizeText(msg, MaxMessageLen)
	}
	start := len(dst)
	dst = append(dst, 0, 0, byte(RecordError), 0, 0)
	dst = binary.BigEndian.AppendUint64(dst, e.ID)
	dst = append(dst, byte(e.Reason), byte(e.Side), byte(len(name)), byte(len(p)))
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(msg)))
	dst = append(dst, name...)
	dst = append(dst, p...)
	dst = append(dst, msg...)
	binary.BigEndian.PutUint16(dst[start:], uint16(len(dst)-start))
	return dst
}

// checkRecords validates count records in b, which they must exactly fill,
// without allocating: relays refuse a malformed reply at the segment where
// it appears, with the same rules a source decodes by.
func checkRecords(b []byte, count int) error {
	off := 0
	for i := 0; i < count; i++ {
		n, err := recordLen(b[off:], i)
		if err != nil {
			return err
		}
		if err := decodeRecord(b[off:off+n], i, nil); err != nil {
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
		return 0, &BadRecord{Index: index, Err: fmt.Errorf("%w: %d bytes left, a record needs at least %d", ErrMalformed, len(b), recordPrefixLen)}
	}
	n := int(binary.BigEndian.Uint16(b))
	if n > len(b) {
		return 0, &BadRecord{Index: index, Err: fmt.Errorf("%w: announces %d bytes, %d left", ErrMalformed, n, len(b))}
	}
	switch RecordKind(b[2]) {
	case RecordHop:
		if n < hopFixedLen+2 {
			return 0, &BadRecord{Index: index, Err: fmt.Errorf("%w: hop record of %d bytes, at least %d needed", ErrMalformed, n, hopFixedLen+2)}
		}
	case RecordError:
		if n < errorFixedLen {
			return 0, &BadRecord{Index: index, Err: fmt.Errorf("%w: error record of %d bytes, at least %d needed", ErrMalformed, n, errorFixedLen)}
		}
	default:
		return 0, &BadRecord{Index: index, Err: fmt.Errorf("%w: unknown record kind %d", ErrMalformed, b[2])}
	}
	return n, nil
}

// BadRecord is a record of a reply that was refused. Index is its
// position in the reply: 0 is the record of the hop right after the one
// that received the reply, so a source's record i is hop i+1's.
type BadRecord struct {
	Index int
	Err   error
}

func (e *BadRecord) Error() string { return fmt.Sprintf("record %d: %v", e.Index, e.Err) }

func (e *BadRecord) Unwrap() error { return e.Err }

// ParseRecords decodes the records of a reply's tail. On error it returns
// the records decoded before the refused one with it.
func ParseRecords(tail []byte, count int) ([]Record, error) {
	return ParseRecordsInto(make([]Record, 0, count), tail, count)
}

// ParseRecordsInto is ParseRecords into dst's array, for a receiver that
// decodes a reply of the same chain every second (a continuous probe):
// what dst held is overwritten, and a hop's name that is the one dst held
// at the same position is kept rather than allocated again. The rules are
// ParseRecords' (decodeRecord).
func ParseRecordsInto(dst []Record, tail []byte, count int) ([]Record, error) {
	prev := dst[:cap(dst)]
	out := dst[:0]
	off := 0
	for i := 0; i < count; i++ {
		n, err := recordLen(tail[off:], i)
		if err != nil {
			return out, err
		}
		var rec Record
		if i < len(prev) && prev[i].Kind == RecordHop {
			rec.Hop.Name = prev[i].Hop.Name
		}
		if err := decodeRecord(tail[off:off+n], i, &rec); err != nil {
			return out, err
		}
		out = append(out, rec)
		off += n
	}
	if off != len(tail) {
		return out, fmt.Errorf("%w: %d bytes after the last of %d records", ErrMalformed, len(tail)-off, count)
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
	// reuse is returned for a hop name of the same bytes instead of a
	// new string (ParseRecordsInto).
	reuse string
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b)-d.off {
		d.failf("field needs %d bytes, %d left", n, len(d.b)-d.off)
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

func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) durationOf(v uint64, what string) time.Duration {
	if v > uint64(MaxDuration) {
		if v > math.MaxInt64 {
			d.failf("%s is negative", what)
		} else {
			d.failf("%s of %v is over %v", what, time.Duration(v), MaxDuration)
		}
		return 0
	}
	return time.Duration(v)
}

func tcpOf(b []byte) tcpinfo.Info {
	be := binary.BigEndian
	return tcpinfo.Info{RTTMicros: be.Uint32(b[0:]), RTTVarMicros: be.Uint32(b[4:]), MinRTTMicros: be.Uint32(b[8:]), TotalRetrans: be.Uint32(b[12:]),
		SndMSS: be.Uint32(b[16:]), PMTU: be.Uint32(b[20:]), SndCwnd: be.Uint32(b[24:])}
}

// str takes n bytes and checks them with check (which allocates only
// when it fails); it returns them as a string only when decoding.
func (d *decoder) str(n int, what string, check func([]byte) error) string {
	b := d.take(n)
	if d.err != nil {
		return ""
	}
	if err := check(b); err != nil {
		d.failf("%s: %v", what, err)
		return ""
	}
	if !d.keep {
		return ""
	}
	if d.reuse != "" && string(b) == d.reuse {
		return d.reuse
	}
	return string(b)
}

func (d *decoder) failf(format string, args ...any) {
	if d.err == nil {
		d.err = &BadRecord{Index: d.index, Err: fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)}
	}
}

// decodeRecord checks one record and, when rec is not nil, decodes it.
// This is the one place where a peer's bytes become trusted data: every
// name, number and flag of a record is checked here, for relays (which
// only validate, without allocating) and for sources alike.
func decodeRecord(b []byte, index int, rec *Record) error {
	d := decoder{b: b, off: 2, index: index, keep: rec != nil}
	var scratch Record
	if rec == nil {
		rec = &scratch
	}
	d.reuse, rec.Hop.Name = rec.Hop.Name, ""
	var kind RecordKind
	var flags uint16
	var id uint64
	if p := d.take(recordPrefixLen - 2); p != nil {
		kind, flags, id = RecordKind(p[0]), binary.BigEndian.Uint16(p[1:]), binary.BigEndian.Uint64(p[3:])
	}
	rec.Kind = kind
	switch kind {
	case RecordHop:
		d.hop(&rec.Hop, id, flags)
	case RecordError:
		d.errorRecord(&rec.Err, id, flags)
	default:
		d.failf("unknown kind %d", kind)
	}
	if d.err != nil {
		return d.err
	}
	if d.off != len(b) {
		return &BadRecord{Index: index, Err: fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(b)-d.off)}
	}
	return nil
}

func (d *decoder) hop(h *HopRecord, id uint64, flags uint16) {
	h.ID, h.Flags = id, flags
	if flags&^recKnownFlags != 0 {
		d.failf("unknown flags %#04x", flags&^recKnownFlags)
	}
	// The fixed fields in one take: relays check every record of every
	// reply, so this is the round trip's hot path.
	f := d.take(hopFixedLen - recordPrefixLen)
	if f == nil {
		return
	}
	be := binary.BigEndian
	fw, ds, rt, wf, wr, cn := be.Uint64(f[0:]), be.Uint64(f[8:]), be.Uint64(f[16:]), be.Uint64(f[24:]), be.Uint64(f[32:]), be.Uint64(f[56:])
	if max(fw, ds, rt, wf, wr, cn) > uint64(MaxDuration) {
		// Refused: say which, in the record's order.
		for i, what := range [...]string{"forward time", "downstream time", "return time", "forward wait", "return wait", "connect time"} {
			d.durationOf([...]uint64{fw, ds, rt, wf, wr, cn}[i], what)
		}
		return
	}
	h.Forward, h.Downstream, h.Return = time.Duration(fw), time.Duration(ds), time.Duration(rt)
	h.WaitForward, h.WaitReturn, h.Connect = time.Duration(wf), time.Duration(wr), time.Duration(cn)
	h.WallIn = int64(be.Uint64(f[40:]))
	h.EstErrorMicros = be.Uint32(f[48:])
	h.MaxErrorMicros = be.Uint32(f[52:])
	h.TCP = tcpOf(f[64:])
	h.TCPUp = tcpOf(f[64+tcpInfoLen:])
	if d.err == nil {
		d.checkTimes(h)
	}
	h.Name = d.str(int(d.u8()), "hop name", peer.CheckNameBytes)
	d.reuse = ""
	nvars := int(d.u8())
	if nvars > MaxVars {
		d.failf("%d variables, at most %d", nvars, MaxVars)
	}
	for i := 0; i < nvars && d.err == nil; i++ {
		name := d.str(int(d.u8()), "variable name", checkVarName)
		value := math.Float64frombits(d.u64())
		if d.err == nil && (math.IsNaN(value) || math.IsInf(value, 0)) {
			d.failf("variable %d is not a finite number", i)
		}
		if d.keep && d.err == nil {
			h.Vars = append(h.Vars, Var{Name: name, Value: value})
		}
	}
	if flags&RecPath != 0 && d.err == nil {
		d.path(&h.Path)
	}
}

// checkTimes enforces what the segment arithmetic relies on: a hop's
// waits lie within the part of its residence they belong to, and the end
// host has no downstream.
func (d *decoder) checkTimes(h *HopRecord) {
	switch {
	case h.WaitForward > h.Forward:
		d.failf("forward wait %v exceeds the forward time %v", h.WaitForward, h.Forward)
	case h.WaitReturn > h.Return:
		d.failf("return wait %v exceeds the return time %v", h.WaitReturn, h.Return)
	case h.Flags&RecEnd != 0 && (h.Downstream != 0 || h.Return != 0):
		d.failf("the end host's record has a downstream or return time")
	case h.Flags&RecEnd != 0 && h.Flags&RecStripped != 0:
		d.failf("a record is both the end host's and a stripping relay's")
	case h.Flags&RecEnd != 0 && h.Flags&RecPath != 0:
		d.failf("the end host's record carries a path (it has no next hop to trace)")
	case h.Flags&RecReflector != 0 && (h.Flags&RecEnd == 0 || h.WaitForward != 0 || h.WaitReturn != 0):
		d.failf("a STAMP reflector's record is the end of the chain, without waits")
	}
}

func (d *decoder) errorRecord(e *ErrorRecord, id uint64, flags uint16) {
	e.ID = id
	e.Reason = peer.Reason(d.u8())
	e.Side = Side(d.u8())
	nameLen, peerLen := int(d.u8()), int(d.u8())
	msgLen := int(d.u16())
	switch {
	case d.err != nil:
		return
	case flags != 0:
		d.failf("error record with flags %#04x", flags)
	case !e.Reason.Valid():
		d.failf("unknown reason %d", uint8(e.Reason))
	case e.Side > SideUpstream:
		d.failf("unknown side %d", e.Side)
	}
	e.Name = d.str(nameLen, "reporting hop's name", peer.CheckNameBytes)
	e.Peer = d.str(peerLen, "peer", peer.CheckPeerBytes)
	e.Message = d.str(msgLen, "message", checkMessage)
}

func checkMessage(b []byte) error { return peer.CheckText(b, MaxMessageLen) }

func checkVarName(b []byte) error {
	for i, c := range b {
		if !labelByte(c, i) {
			return fmt.Errorf("%q is not a label name", b)
		}
	}
	if len(b) == 0 || len(b) > MaxNameLen {
		return fmt.Errorf("%d bytes, 1 to %d allowed", len(b), MaxNameLen)
	}
	return nil
}

func labelByte(c byte, i int) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9'
}

func durationBits(d time.Duration) uint64 {
	if d < 0 {
		return 0
	}
	return uint64(min(d, MaxDuration))
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// FirstHopName returns the name in the first record of a reply's tail
// without decoding the rest; relays use it to learn their next hop's name.
// The tail must come from a frame Parse accepted.
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
	ID                          uint64
	Name                        []byte
	Flags                       uint16
	Forward, Downstream, Return time.Duration
	WaitForward, WaitReturn     time.Duration
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

// ReadHopTimes reads a hop record's identity and durations in place. The
// record must come from a frame Parse accepted.
func ReadHopTimes(rec []byte) HopTimes {
	nameLen := int(rec[hopFixedLen])
	return HopTimes{
		ID:          binary.BigEndian.Uint64(rec[5:]),
		Name:        rec[hopFixedLen+1 : hopFixedLen+1+nameLen],
		Flags:       binary.BigEndian.Uint16(rec[offFlags:]),
		Forward:     time.Duration(binary.BigEndian.Uint64(rec[offForward:])),
		Downstream:  time.Duration(binary.BigEndian.Uint64(rec[offDownstream:])),
		Return:      time.Duration(binary.BigEndian.Uint64(rec[offReturn:])),
		WaitForward: time.Duration(binary.BigEndian.Uint64(rec[offWaitFwd:])),
		WaitReturn:  time.Duration(binary.BigEndian.Uint64(rec[offWaitRet:])),
	}
}
