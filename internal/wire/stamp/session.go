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
	// accept replies signed with any (config.ReadKeyFile reads a key file).
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
// counters that go on across calls (a stateful reflector keeps its state
// per session too). Exchange is safe for concurrent use: several packets
// may be in flight, each reply matched to its packet by the sender
// sequence number it echoes, by one receiving goroutine (receive.go).
type Session struct {
	opts  SessionOptions
	conn  *udpmsg.Conn
	tmpl  *Template
	clock clock.Clock
	tai   int32
	ssid  uint16
	// tlvAuth verifies the replies' HMAC TLVs: the keys when the requests
	// carry an HMAC TLV, else nil (ParseReplyTLVs).
	tlvAuth bool

	// sending, under sendMu: auth signs, out holds the packet.
	sendMu sync.Mutex
	auth   *Auth
	out    *udpmsg.Batch
	// next is the next sequence number (also the number sent so far);
	// txKey the kernel's number of the next transmit stamp (it counts
	// the datagrams it sent, not the numbers a failed send used).
	next, txKey uint32

	// matching, under mu
	mu      sync.Mutex
	bySeq   map[uint32]*waiter
	byKey   map[uint32]*waiter
	free    []*waiter
	recent  [recentFates]fate
	faults  ReplyFaults
	stamps  *udpmsg.Batch // ReadTxStamps' scratch, under txMu
	txMu    sync.Mutex
	onStamp func(key uint32, ns int64)
	// received counts the replies taken; fwdLost and retLost the loss
	// Probe named per direction, for the runs after.
	received         uint32
	fwdLost, retLost int64

	// the receiving goroutine's own: rauth verifies, in holds replies
	rauth *Auth
	in    *udpmsg.Batch
	done  chan struct{}
}

// Open creates the session's socket (connected to the target) and starts
// its receiving goroutine; Close ends both.
func Open(ctx context.Context, o SessionOptions) (*Session, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tmpl, _ := NewTemplate(o.Mode, o.Size, o.TLVs)
	conn, err := udpmsg.Dial(ctx, o.Target, udpmsg.Config{TxTimestamps: true, TOS: o.DSCP << 2})
	if err != nil {
		return nil, fmt.Errorf("STAMP sender: %w", err)
	}
	s := &Session{opts: o, conn: conn, tmpl: tmpl, auth: NewAuth(o.Keys), rauth: NewAuth(o.Keys), clock: o.Clock, tai: o.TAIOffset, ssid: o.SSID,
		tlvAuth: tmpl.hmac >= 0, out: udpmsg.NewBatch(1, tmpl.Len), in: udpmsg.NewBatch(16, tmpl.Len+1), stamps: udpmsg.NewBatch(16, 16),
		bySeq: map[uint32]*waiter{}, byKey: map[uint32]*waiter{}, done: make(chan struct{})}
	s.onStamp = s.txStamp
	if s.clock == nil {
		s.clock = clock.NewSystem()
	}
	if s.tai == 0 {
		s.tai = KernelTAIOffset()
	}
	for s.ssid == 0 {
		s.ssid = uint16(rand.Uint32())
	}
	go s.receive()
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

// Close closes the socket and waits for the receiving goroutine; waiting
// exchanges return what they have.
func (s *Session) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}

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
	// T2 and T3 are the reflector's receive and send times; T4 when the
	// reply arrived here (the kernel's stamp when T4Kernel).
	T2, T3, T4 int64
	T4Kernel   bool
	// TimestampError: a reflector timestamp held no valid time.
	TimestampError bool
	ReflectorSeq   uint32
	ReflectorError ErrorEstimate
	// SenderTTL is the TTL the packet arrived with at the reflector;
	// ReturnTTL and ReturnTOS those of the reply here.
	SenderTTL, ReturnTTL uint8
	ReturnTOS            uint8
	HasReturnTOS         bool
	// Length is the packet's; a reply is always the same (WrongSize
	// refuses any other).
	Length int
	TLVs   ReplyTLVs
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
	// Faults is what came during the run that was no usable reply.
	Faults ReplyFaults
}

// Probe sends count packets interval apart and waits for their replies
// until timeout after the last one (or until ctx ends).
func (s *Session) Probe(ctx context.Context, count int, interval, timeout time.Duration) (*Result, error) {
	if count <= 0 {
		return nil, fmt.Errorf("STAMP sender: %d packets: send at least 1", count)
	}
	s.mu.Lock()
	res := &Result{Target: s.opts.Target, Local: s.Local(), Remote: s.Remote(), Mode: s.opts.Mode, SSID: s.ssid,
		DSCP: s.opts.DSCP, TLVs: s.opts.TLVs, Packets: make([]PacketResult, 0, count), Start: time.Now(),
		RepliesBefore: s.received, PrevForwardLost: s.fwdLost, PrevReturnLost: s.retLost}
	faults := s.faults
	s.mu.Unlock()
	sent, sendErr := s.sendEvery(ctx, count, interval)
	deadline := time.Now().Add(timeout)
	for _, w := range sent {
		p, err := s.wait(ctx, w, deadline)
		if sendErr == nil && err != nil && !p.Received {
			sendErr = err
		}
		res.Packets = append(res.Packets, p)
	}
	res.End = time.Now()
	s.mu.Lock()
	res.Faults = s.faults.Since(faults)
	if sum := Summarize(res); sum.LossByDirection {
		s.fwdLost += int64(sum.ForwardLost)
		s.retLost += int64(sum.ReturnLost)
	}
	s.mu.Unlock()
	return res, sendErr
}

// sendEvery sends count packets interval apart; it stops at the first
// error (ctx's, or a packet that could not be built).
func (s *Session) sendEvery(ctx context.Context, count int, interval time.Duration) ([]*waiter, error) {
	sent := make([]*waiter, 0, count)
	start := time.Now()
	for i := 0; i < count; i++ {
		if i > 0 && interval > 0 {
			if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return sent, ctx.Err()
				case <-t.C:
				}
			}
		}
		if ctx.Err() != nil {
			return sent, ctx.Err()
		}
		w, err := s.send(0)
		if w == nil {
			return sent, err
		}
		sent = append(sent, w)
	}
	return sent, nil
}

// replyVerdict is what decodeReply made of a datagram.
type replyVerdict uint8

const (
	replyOK replyVerdict = iota
	// replyUndecodable: shorter than the base packet, or of another
	// session (SSID).
	replyUndecodable
	// replyWrongSize: not the size of the requests (cut when larger).
	replyWrongSize
	// replyAuth: an authenticated session's reply whose HMAC does not
	// verify with any of the keys.
	replyAuth
)

// echo is what a reply says the request carried, held against what was
// sent (echoes).
type echo struct {
	ts  Timestamp
	err ErrorEstimate
}

// decodeReply reads one datagram as a reply of this session, received at
// now (the kernel's stamp when the message has one); Seq is the sender's
// sequence number it answers, e its echo of the other sender fields.
// Every rule a datagram must pass to be a reply is here or in echoes:
// the request's size (a reflector answers symmetrically, RFC 8762 §4),
// the base format, the HMAC, the SSID.
func (s *Session) decodeReply(m *udpmsg.Message, now int64) (PacketResult, echo, replyVerdict) {
	var p PacketResult
	pkt := m.Buf[:m.N]
	if m.Truncated || (m.N != s.tmpl.Len && m.N >= s.opts.Mode.BaseLen()) {
		return p, echo{}, replyWrongSize
	}
	rp, err := ParseReflector(pkt, s.opts.Mode)
	if err != nil {
		return p, echo{}, replyUndecodable
	}
	// The HMAC first: the socket takes datagrams from the reflector only,
	// and one that answers with another key (or none) fails here, whatever
	// it put where the SSID would be.
	if s.opts.Mode == Authenticated {
		if _, err := s.rauth.Verify(pkt); err != nil {
			return p, echo{}, replyAuth
		}
	}
	if rp.SSID != s.ssid {
		return p, echo{}, replyUndecodable
	}
	p.Seq, p.Received = rp.SenderSeq, true
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
	var tlvAuth *Auth
	if s.tlvAuth {
		tlvAuth = s.rauth
	}
	p.TLVs = ParseReplyTLVs(pkt, s.opts.Mode, tlvAuth)
	return p, echo{ts: rp.SenderTimestamp, err: rp.SenderErrorEstimate}, replyOK
}

// echoes reports whether a reply's echo is what the packet sent carried:
// its timestamp and Error Estimate (the sequence number matched it).
func (s *Session) echoes(sent *PacketResult, e echo) bool {
	return e.ts == NewTimestamp(sent.T1, s.opts.Format, s.tai) && e.err == sent.SenderError
}
