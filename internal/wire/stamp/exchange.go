package stamp

import (
	"context"
	"errors"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/udpmsg"
)

// ExchangeInfo is what else came while Exchange waited for its reply.
type ExchangeInfo struct {
	// Late counts valid replies to earlier packets of the session: they
	// came after their own wait ended, so those packets stay lost.
	Late int
	// AuthFailed counts replies whose HMAC did not verify with any key
	// (authenticated sessions): the reflector signs with another key.
	AuthFailed int
	// Bad counts datagrams that were no reply of this session.
	Bad int
}

// exchangeState is Exchange's own buffers, made at its first call.
type exchangeState struct {
	out, in, stamps *udpmsg.Batch
}

// Exchange sends one test packet and waits, at most timeout and no longer
// than ctx, for its reply: the way to measure one probe at a time, as the
// prober and a relay whose next hop is a reflector do. A reply that does
// not come in time leaves the packet lost (Received false, no error);
// replies to earlier packets that arrive meanwhile are counted late, never
// matched. The error is the socket's: a send the kernel refused, or an
// ICMP error of the path (ECONNREFUSED: nothing listens on the
// reflector's port). Not safe for concurrent use, nor with Probe.
func (s *Session) Exchange(ctx context.Context, timeout time.Duration) (PacketResult, ExchangeInfo, error) {
	var info ExchangeInfo
	x := s.exchange()
	p := PacketResult{Seq: s.next}
	m := &x.out.Msgs[0]
	p.SenderError = ErrorEstimateOf(s.clock.Sync(), s.opts.Format)
	p.T1 = s.clock.Wall()
	n, err := s.tmpl.Fill(m.Buf[:cap(m.Buf)], Fields{Seq: p.Seq, Timestamp: NewTimestamp(p.T1, s.opts.Format, s.tai),
		ErrorEstimate: p.SenderError, SSID: s.ssid, SenderTx: p.Seq + 1}, s.auth)
	if err != nil {
		return p, info, err
	}
	m.N, m.Send, m.TxStamp = n, true, true
	p.Length, p.SentTOS = n, s.opts.DSCP<<2
	s.next++
	deadline := time.Now().Add(timeout)
	if k, err := s.conn.Send(x.out, 1); k != 1 || err != nil {
		if err == nil {
			err = errors.New("the kernel did not send the packet")
		}
		return p, info, err
	}
	p.Sent = true
	stop := context.AfterFunc(ctx, func() { _ = s.conn.SetReadDeadline(time.Now()) })
	defer stop()
	err = s.await(ctx, &p, &info, deadline)
	s.readTxStamp(&p)
	if p.Received {
		s.received++
	}
	return p, info, err
}

func (s *Session) exchange() *exchangeState {
	if s.x == nil {
		s.x = &exchangeState{out: udpmsg.NewBatch(1, s.tmpl.Len), in: udpmsg.NewBatch(4, s.tmpl.Len+1), stamps: udpmsg.NewBatch(4, 16)}
	}
	return s.x
}

// match makes p, as sent, the record of its reply q: q's times and what
// the reflector said, p's own T1 and Error Estimate, held against what q
// echoes.
func (s *Session) match(p *PacketResult, q PacketResult) {
	sent := *p
	*p = q
	p.Sent, p.T1, p.SenderError, p.Length, p.SentTOS = sent.Sent, sent.T1, sent.SenderError, sent.Length, sent.SentTOS
	p.EchoOK = Timestamp(q.T1) == NewTimestamp(sent.T1, s.opts.Format, s.tai) && q.SenderError == sent.SenderError
	p.SizeMismatch = p.ReplyLength != p.Length
}

// await reads until the reply to p arrives, the deadline passes or ctx
// ends; it fills p with the reply.
func (s *Session) await(ctx context.Context, p *PacketResult, info *ExchangeInfo, deadline time.Time) error {
	x := s.x
	for ctx.Err() == nil && time.Now().Before(deadline) {
		_ = s.conn.SetReadDeadline(deadline)
		n, err := s.conn.Recv(x.in)
		now := s.clock.Wall()
		for i := 0; i < n; i++ {
			q, v := s.decodeReply(&x.in.Msgs[i], now)
			switch {
			case v == replyAuth:
				info.AuthFailed++
			case v != replyOK:
				info.Bad++
			case q.Seq == p.Seq && !p.Received:
				s.match(p, q)
			case q.Seq < p.Seq:
				info.Late++
			default:
				info.Bad++ // a duplicate, or a number never sent
			}
		}
		if p.Received {
			return nil
		}
		if err != nil && !isTimeout(err) {
			if udpmsg.IsClosed(err) || ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	return nil
}

// readTxStamp takes the kernel's transmit stamp of p, when it is there
// (the stamps are keyed by the session's sequence numbers).
func (s *Session) readTxStamp(p *PacketResult) {
	_, _ = s.conn.ReadTxStamps(s.x.stamps, func(key uint32, ns int64) {
		if key == p.Seq {
			p.T1Kernel = ns
		}
	})
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
