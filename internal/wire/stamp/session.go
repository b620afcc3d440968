package stamp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/udpmsg"
)

// RegisteredPort is STAMP's (and TWAMP's) port assigned by IANA, 862.
const RegisteredPort = 862

// SessionOptions configure a Session-Sender.
type SessionOptions struct {
	// Target is the reflector, host:port.
	Target string
	// Size is the packet's length (UDP payload); 0: the smallest for
	// the mode and the TLVs (44 or 112 octets without TLVs).
	Size int
	// DSCP marks the packets the sender sends.
	DSCP uint8
	// Mode and Keys: authenticated sessions sign with the first key and
	// accept replies signed with any (frame.LoadKeys reads a key file).
	Mode Mode
	Keys frame.Keys
	TLVs TLVRequest
	// Format is the timestamps' format (NTP unless PTP is asked for).
	Format Format
	// SSID identifies the session (0: a random non-zero one).
	SSID uint16
	// Clock gives T1 and this end's Error Estimate; nil: the system's.
	Clock clock.Clock
	// TAIOffset is TAI − UTC for PTP timestamps; 0: the kernel's, or
	// DefaultTAIOffset when the kernel does not know it.
	TAIOffset int32
}

// Validate checks the options and says what to change.
func (o *SessionOptions) Validate() error {
	if o.Target == "" {
		return errors.New("STAMP sender: no target (host:port of a reflector)")
	}
	if o.DSCP > 63 {
		return fmt.Errorf("STAMP sender: DSCP %d is not 0 to 63", o.DSCP)
	}
	if o.TLVs.ReturnDSCP > 63 {
		return fmt.Errorf("STAMP sender: return DSCP %d is not 0 to 63", o.TLVs.ReturnDSCP)
	}
	if (o.Mode == Authenticated || o.TLVs.HMAC) && len(o.Keys) == 0 {
		return errors.New("STAMP sender: authenticated mode and the HMAC TLV need a key (--relay.auth-key-file)")
	}
	_, err := NewTemplate(o.Mode, o.Size, o.TLVs)
	return err
}

// Session is a Session-Sender: one socket, one SSID, sequence numbers and
// counters that go on across Probe calls (a stateful reflector keeps its
// state per session too). It is not safe for concurrent Probe calls.
type Session struct {
	opts SessionOptions
	conn *udpmsg.Conn
	tmpl *Template
	// auth signs (the sending goroutine), rauth verifies replies (the
	// receiving one): an Auth serves one goroutine.
	auth, rauth *Auth
	clock       clock.Clock
	tai         int32
	ssid        uint16
	// next is the next sequence number (also the number sent so far).
	next uint32
	// cumulative, for loss per direction across Probe calls
	received         uint32
	fwdLost, retLost int64
	// x is Exchange's buffers (nil until its first call).
	x *exchangeState
}

// Open creates the session's socket (connected to the target).
func Open(ctx context.Context, o SessionOptions) (*Session, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tmpl, _ := NewTemplate(o.Mode, o.Size, o.TLVs)
	conn, err := udpmsg.Dial(ctx, o.Target, udpmsg.Config{TxTimestamps: true, TOS: o.DSCP << 2})
	if err != nil {
		return nil, fmt.Errorf("STAMP sender: %w", err)
	}
	s := &Session{opts: o, conn: conn, tmpl: tmpl, auth: NewAuth(o.Keys), rauth: NewAuth(o.Keys), clock: o.Clock, tai: o.TAIOffset, ssid: o.SSID}
	if s.clock == nil {
		s.clock = clock.NewSystem()
	}
	if s.tai == 0 {
		s.tai = KernelTAIOffset()
	}
	for s.ssid == 0 {
		s.ssid = uint16(rand.Uint32())
	}
	return s, nil
}

// KernelTAIOffset is TAI − UTC as the kernel knows it (adjtimex), or
// DefaultTAIOffset when it does not.
func KernelTAIOffset() int32 {
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil || tx.Tai <= 0 {
		return DefaultTAIOffset
	}
	return tx.Tai
}

// Close closes the socket.
func (s *Session) Close() error { return s.conn.Close() }

// SSID is the session's SSID.
func (s *Session) SSID() uint16 { return s.ssid }

// Local is the socket's own address.
func (s *Session) Local() netip.AddrPort { return s.conn.LocalAddr() }

// Remote is the reflector's address.
func (s *Session) Remote() netip.AddrPort { return s.conn.RemoteAddr() }

// Mode is the session's mode.
func (s *Session) Mode() Mode { return s.opts.Mode }

// PacketResult is one test packet's fate and every time of it. Times are
// Unix nanoseconds on the clock of the end that took them.
type PacketResult struct {
	Seq  uint32
	Sent bool
	// T1 is the user-space send time written into the packet; T1Kernel
	// the kernel's software transmit stamp (0: none).
	T1, T1Kernel int64
	// SenderError is this end's Error Estimate as sent.
	SenderError ErrorEstimate
	SentTOS     uint8

	Received bool
	// Duplicates counts further replies to the same packet.
	Duplicates int
	// T2 and T3 are the reflector's receive and send times; T4 when the
	// reply arrived here (the kernel's stamp when T4Kernel).
	T2, T3, T4 int64
	T4Kernel   bool
	// TimestampError: a reflector timestamp held no valid time.
	TimestampError bool
	ReflectorSeq   uint32
	ReflectorError ErrorEstimate
	// EchoOK: the reflector returned this packet's sequence number,
	// timestamp and Error Estimate as they were sent.
	EchoOK bool
	// SenderTTL is the TTL the packet arrived with at the reflector;
	// ReturnTTL and ReturnTOS those of the reply here.
	SenderTTL, ReturnTTL uint8
	ReturnTOS            uint8
	HasReturnTOS         bool
	Length, ReplyLength  int
	TLVs                 ReplyTLVs
	AuthOK               bool
	// SizeMismatch: the reply was not the request's size (a reflector must
	// answer symmetrically).
	SizeMismatch bool
}

// BestT1 is the kernel's transmit stamp when there is one, else T1.
func (p *PacketResult) BestT1() int64 {
	if p.T1Kernel != 0 {
		return p.T1Kernel
	}
	return p.T1
}

// RTT is (T4 − T1) − (T3 − T2): the round trip without the reflector's
// residence, from each end's own clock only.
func (p *PacketResult) RTT() (time.Duration, bool) {
	if !p.Received || p.TimestampError {
		return 0, false
	}
	return time.Duration((p.T4 - p.BestT1()) - (p.T3 - p.T2)), true
}

// Residence is T3 − T2, the time the packet spent in the reflector.
func (p *PacketResult) Residence() (time.Duration, bool) {
	if !p.Received || p.TimestampError {
		return 0, false
	}
	return time.Duration(p.T3 - p.T2), true
}

// Result is one Probe's packets.
type Result struct {
	Target        string
	Local, Remote netip.AddrPort
	Mode          Mode
	SSID          uint16
	DSCP          uint8
	TLVs          TLVRequest
	Packets       []PacketResult
	Start, End    time.Time
	// RepliesBefore, PrevForwardLost and PrevReturnLost are the session's
	// before this run: the Direct Measurement counters count the whole
	// session. A run's unknown tail is named by the next run.
	RepliesBefore                   uint32
	PrevForwardLost, PrevReturnLost int64
	// BadReplies counts datagrams that were no valid reply to this run:
	// short, failing authentication, another SSID, unknown sequence.
	BadReplies int
}

// Probe sends count packets interval apart and waits for their replies
// until timeout after the last one (or until ctx ends).
func (s *Session) Probe(ctx context.Context, count int, interval, timeout time.Duration) (*Result, error) {
	if count <= 0 {
		return nil, fmt.Errorf("STAMP sender: %d packets: send at least 1", count)
	}
	first := s.next
	res := &Result{Target: s.opts.Target, Local: s.Local(), Remote: s.Remote(), Mode: s.opts.Mode, SSID: s.ssid,
		DSCP: s.opts.DSCP, TLVs: s.opts.TLVs, Packets: make([]PacketResult, count), Start: time.Now(),
		RepliesBefore: s.received, PrevForwardLost: s.fwdLost, PrevReturnLost: s.retLost}
	for i := range res.Packets {
		res.Packets[i].Seq = first + uint32(i)
	}
	rcv := newReceiver(s, res, first)
	var wg sync.WaitGroup
	wg.Add(1)
	sendDone := make(chan time.Time, 1)
	go func() {
		defer wg.Done()
		rcv.run(ctx, sendDone, timeout)
	}()
	sendErr := s.send(ctx, res, interval)
	sendDone <- time.Now()
	wg.Wait()
	res.End = time.Now()
	s.received += uint32(rcv.unique)
	rcv.merge(res)
	if sum := Summarize(res); sum.LossByDirection {
		s.fwdLost += int64(sum.ForwardLost)
		s.retLost += int64(sum.ReturnLost)
	}
	return res, sendErr
}

func (s *Session) send(ctx context.Context, res *Result, interval time.Duration) error {
	b := udpmsg.NewBatch(1, s.tmpl.Len)
	m := &b.Msgs[0]
	start := time.Now()
	for i := range res.Packets {
		if i > 0 && interval > 0 {
			wait := time.Until(start.Add(time.Duration(i) * interval))
			if wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				case <-t.C:
				}
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p := &res.Packets[i]
		p.SenderError = ErrorEstimateOf(s.clock.Sync(), s.opts.Format)
		p.T1 = s.clock.Wall()
		n, err := s.tmpl.Fill(m.Buf[:cap(m.Buf)], Fields{Seq: p.Seq, Timestamp: NewTimestamp(p.T1, s.opts.Format, s.tai),
			ErrorEstimate: p.SenderError, SSID: s.ssid, SenderTx: p.Seq + 1}, s.auth)
		if err != nil {
			return err
		}
		m.N, m.Send, m.TxStamp = n, true, true
		p.Length, p.SentTOS = n, s.opts.DSCP<<2
		s.next++
		if k, err := s.conn.Send(b, 1); k == 1 && err == nil {
			p.Sent = true
		}
	}
	return nil
}

// receiver reads replies and transmit stamps while the sender sends; it
// owns what it writes until merge.
type receiver struct {
	s       *Session
	first   uint32
	count   int
	replies []PacketResult
	tx      []int64
	unique  int
	bad     int
}

func newReceiver(s *Session, res *Result, first uint32) *receiver {
	return &receiver{s: s, first: first, count: len(res.Packets), replies: make([]PacketResult, len(res.Packets)), tx: make([]int64, len(res.Packets))}
}

func (r *receiver) run(ctx context.Context, sendDone <-chan time.Time, timeout time.Duration) {
	b := udpmsg.NewBatch(16, r.s.tmpl.Len+1)
	stamps := udpmsg.NewBatch(16, 16)
	onStamp := func(key uint32, ns int64) {
		if i := int(key - r.first); i >= 0 && i < r.count {
			r.tx[i] = ns
		}
	}
	var deadline time.Time
	for {
		if deadline.IsZero() {
			select {
			case t := <-sendDone:
				deadline = t.Add(timeout)
			default:
			}
		}
		if r.unique == r.count && !deadline.IsZero() {
			_, _ = r.s.conn.ReadTxStamps(stamps, onStamp)
			return
		}
		wait := time.Now().Add(5 * time.Millisecond)
		if !deadline.IsZero() && deadline.Before(wait) {
			wait = deadline
		}
		if d, ok := ctx.Deadline(); ok && d.Before(wait) {
			wait = d
		}
		_ = r.s.conn.SetReadDeadline(wait)
		n, err := r.s.conn.Recv(b)
		now := r.s.clock.Wall()
		for i := 0; i < n; i++ {
			r.reply(&b.Msgs[i], now)
		}
		_, _ = r.s.conn.ReadTxStamps(stamps, onStamp)
		if udpmsg.IsClosed(err) || ctx.Err() != nil || (!deadline.IsZero() && !time.Now().Before(deadline)) {
			return
		}
	}
}

// reply checks one datagram and records it as the reply to its packet.
func (r *receiver) reply(m *udpmsg.Message, now int64) {
	q, v := r.s.decodeReply(m, now)
	if v != replyOK {
		r.bad++
		return
	}
	i := int(q.Seq - r.first)
	if i < 0 || i >= r.count {
		r.bad++
		return
	}
	p := &r.replies[i]
	if p.Received {
		p.Duplicates++
		return
	}
	r.unique++
	*p = q
}

// replyVerdict is what decodeReply made of a datagram.
type replyVerdict uint8

const (
	replyOK replyVerdict = iota
	// replyBad: short, truncated, of another session, or malformed.
	replyBad
	// replyAuth: an authenticated session's reply whose HMAC does not
	// verify with any of the keys.
	replyAuth
)

// decodeReply reads one datagram as a reply of this session, received at
// now (the kernel's stamp when the message has one): the sender fields it
// echoes go into T1 and SenderError, for the caller to hold against what
// was sent; Seq is the sender's sequence number it answers. Every rule a
// reply must pass is here, for Probe and Exchange alike.
func (s *Session) decodeReply(m *udpmsg.Message, now int64) (PacketResult, replyVerdict) {
	var p PacketResult
	pkt := m.Buf[:m.N]
	rp, err := ParseReflector(pkt, s.opts.Mode)
	if err != nil || m.Truncated {
		return p, replyBad
	}
	// The HMAC first: the socket takes datagrams from the reflector only,
	// and one that answers with another key (or none) fails here, whatever
	// it put where the SSID would be.
	if s.opts.Mode == Authenticated {
		if _, err := s.rauth.Verify(pkt); err != nil {
			return p, replyAuth
		}
	}
	if rp.SSID != s.ssid {
		return p, replyBad
	}
	p.Seq, p.Received, p.AuthOK = rp.SenderSeq, true, true
	p.T4, p.T4Kernel = now, false
	if m.RxTime != 0 {
		p.T4, p.T4Kernel = m.RxTime, true
	}
	f := rp.ErrorEstimate.Format()
	var e2, e3 error
	p.T2, e2 = rp.ReceiveTimestamp.UnixNano(f, s.tai)
	p.T3, e3 = rp.Timestamp.UnixNano(f, s.tai)
	p.TimestampError = e2 != nil || e3 != nil
	p.ReflectorSeq, p.ReflectorError = rp.Seq, rp.ErrorEstimate
	p.SenderTTL, p.ReturnTTL = rp.SenderTTL, m.TTL
	p.ReturnTOS, p.HasReturnTOS = m.TOS, m.HasTOS
	p.ReplyLength = m.N
	p.TLVs = ParseReplyTLVs(pkt, s.opts.Mode, s.rauth)
	// echoed fields, held against what was sent by the caller
	p.T1 = int64(rp.SenderTimestamp)
	p.SenderError = rp.SenderErrorEstimate
	return p, replyOK
}

// merge folds the receiver's records into the sent packets.
func (r *receiver) merge(res *Result) {
	res.BadReplies = r.bad
	for i := range res.Packets {
		p, q := &res.Packets[i], &r.replies[i]
		p.T1Kernel = r.tx[i]
		if !q.Received {
			continue
		}
		echoTS, echoErr := Timestamp(q.T1), q.SenderError
		sentTS := NewTimestamp(p.T1, r.s.opts.Format, r.s.tai)
		p.EchoOK = echoTS == sentTS && echoErr == p.SenderError
		p.Received, p.Duplicates, p.AuthOK = true, q.Duplicates, q.AuthOK
		p.T2, p.T3, p.T4, p.T4Kernel, p.TimestampError = q.T2, q.T3, q.T4, q.T4Kernel, q.TimestampError
		p.ReflectorSeq, p.ReflectorError = q.ReflectorSeq, q.ReflectorError
		p.SenderTTL, p.ReturnTTL, p.ReturnTOS, p.HasReturnTOS = q.SenderTTL, q.ReturnTTL, q.ReturnTOS, q.HasReturnTOS
		p.ReplyLength, p.TLVs = q.ReplyLength, q.TLVs
		p.SizeMismatch = p.ReplyLength != p.Length
	}
}
