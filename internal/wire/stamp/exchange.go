package stamp

import (
	"context"
	"errors"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/udpmsg"
)

// waiter is one packet in flight: what was sent, and its reply when it
// came (under the session's mu).
type waiter struct {
	p      PacketResult
	key    uint32
	hasKey bool
	// deadline ends its wait (zero: not set yet): a reply read after it
	// is late, whenever the waiting goroutine wakes.
	deadline time.Time
	// err is the socket's error while it waited (an ICMP error).
	err   error
	ready chan struct{}
	timer *time.Timer
}

// Exchange sends one test packet and waits, at most timeout and no longer
// than ctx, for its reply: the way to measure one probe at a time, as the
// prober and a relay whose next hop is a reflector do. Several Exchanges
// may run at once on one session (each reply is matched by its sequence
// number). A reply that does not come in time leaves the packet lost
// (Received false, no error); what comes that is no usable reply is
// counted in Faults. The error is the socket's: a send the kernel
// refused, or an ICMP error of the path (ECONNREFUSED: nothing listens on
// the reflector's port).
func (s *Session) Exchange(ctx context.Context, timeout time.Duration) (PacketResult, error) {
	w, err := s.send(timeout)
	if w == nil {
		return PacketResult{}, err
	}
	if err != nil {
		p := w.p
		s.release(w, false)
		return p, err
	}
	return s.wait(ctx, w, time.Now().Add(timeout))
}

// Faults is what the session received so far that was no usable reply.
func (s *Session) Faults() ReplyFaults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// send builds and sends the next packet and registers its waiter before
// the packet leaves (its reply may come at once), waiting timeout from
// now (0: until wait sets it). A nil waiter: the packet could not be
// built; an error with a waiter: the kernel did not send it (the waiter
// is the caller's to release).
func (s *Session) send(timeout time.Duration) (*waiter, error) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	m := &s.out.Msgs[0]
	p := PacketResult{Seq: s.next}
	p.SenderError = ErrorEstimateOf(s.clock.Sync(), s.opts.Format)
	p.T1 = s.clock.Wall()
	n, err := s.tmpl.Fill(m.Buf[:cap(m.Buf)], Fields{Seq: p.Seq, Timestamp: NewTimestamp(p.T1, s.opts.Format, s.tai),
		ErrorEstimate: p.SenderError, SSID: s.ssid, SenderTx: p.Seq + 1}, s.auth)
	if err != nil {
		return nil, err
	}
	m.N, m.Send, m.TxStamp = n, true, true
	p.Length, p.SentTOS = n, s.opts.DSCP<<2
	// Sent before it is: its reply may be matched before Send returns.
	p.Sent = true
	s.next++
	s.mu.Lock()
	w := s.waiter()
	w.p, w.key, w.hasKey, w.err, w.deadline = p, s.txKey, true, nil, time.Time{}
	if timeout > 0 {
		w.deadline = time.Now().Add(timeout)
	}
	s.bySeq[p.Seq] = w
	s.byKey[w.key] = w
	s.mu.Unlock()
	if k, err := s.conn.Send(s.out, 1); k != 1 || err != nil {
		if err == nil {
			err = errors.New("the kernel did not send the packet")
		}
		s.mu.Lock()
		delete(s.byKey, w.key)
		w.hasKey, w.p.Sent = false, false
		s.mu.Unlock()
		return w, err
	}
	s.txKey++
	return w, nil
}

// waiter takes a waiter from the free list (under mu).
func (s *Session) waiter() *waiter {
	if n := len(s.free); n > 0 {
		w := s.free[n-1]
		s.free = s.free[:n-1]
		return w
	}
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waiter{ready: make(chan struct{}, 1), timer: t}
}

// wait waits for w's reply until the deadline, ctx's end or the session's
// close, and releases w.
func (s *Session) wait(ctx context.Context, w *waiter, deadline time.Time) (PacketResult, error) {
	s.mu.Lock()
	w.deadline = deadline
	s.mu.Unlock()
	w.timer.Reset(time.Until(deadline))
	select {
	case <-w.ready:
	case <-w.timer.C:
	case <-ctx.Done():
	case <-s.done:
	}
	w.timer.Stop()
	// The error queue holds this packet's transmit stamp (and those of
	// lost packets: read them, or they fill the socket's buffer).
	s.readTxStamps()
	s.mu.Lock()
	p, err := w.p, w.err
	s.mu.Unlock()
	s.release(w, true)
	if p.Received || udpmsg.IsClosed(err) {
		err = nil
	}
	return p, err
}

// release forgets a waiter and notes its packet's fate (waited: its wait
// ended), for telling late replies from duplicates.
func (s *Session) release(w *waiter, waited bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.bySeq, w.p.Seq)
	if w.hasKey {
		delete(s.byKey, w.key)
	}
	if waited {
		s.recent[w.p.Seq%recentFates] = fate{seq: w.p.Seq, valid: true, received: w.p.Received}
	}
	select {
	case <-w.ready:
	default:
	}
	w.p, w.err = PacketResult{}, nil
	if len(s.free) < maxFreeWaiters {
		s.free = append(s.free, w)
	}
}

// Bounds of the session's bookkeeping.
const (
	// recentFates remembers the fates of the last packets, to tell a late
	// reply from a duplicate.
	recentFates = 1024
	// maxFreeWaiters bounds the waiters kept for reuse.
	maxFreeWaiters = 64
)

// fate is what became of a packet whose wait ended.
type fate struct {
	seq             uint32
	valid, received bool
}

// receive is the session's receiving goroutine: it matches every reply to
// the packet waiting for it, until the socket is closed.
func (s *Session) receive() {
	defer close(s.done)
	for {
		n, err := s.conn.Recv(s.in)
		now, read := s.clock.Wall(), time.Now()
		// A packet's transmit stamp was queued before its reply came.
		s.readTxStamps()
		s.mu.Lock()
		for i := 0; i < n; i++ {
			s.dispatch(&s.in.Msgs[i], now, read)
		}
		if err != nil && !udpmsg.IsClosed(err) {
			// An ICMP error of the path: every packet in flight fails
			// with it.
			for _, w := range s.bySeq {
				w.err = err
				w.signal()
			}
		}
		s.mu.Unlock()
		if udpmsg.IsClosed(err) {
			return
		}
	}
}

func (w *waiter) signal() {
	select {
	case w.ready <- struct{}{}:
	default:
	}
}

// dispatch takes one datagram read at read (under mu): the reply of a
// waiting packet, or a fault counted by reason.
func (s *Session) dispatch(m *udpmsg.Message, now int64, read time.Time) {
	q, e, v := s.decodeReply(m, now)
	switch v {
	case replyUndecodable:
		s.faults.Undecodable++
		return
	case replyWrongSize:
		s.faults.WrongSize++
		return
	case replyAuth:
		s.faults.Auth++
		return
	}
	w := s.bySeq[q.Seq]
	switch {
	case w == nil || w.p.Received:
		s.stray(q.Seq, w != nil)
	case !w.deadline.IsZero() && read.After(w.deadline):
		// Its wait is over, whether or not its goroutine woke yet.
		s.faults.Late++
	case !s.echoes(&w.p, e):
		// Not the reply of the packet sent with this number: the real
		// one may still come.
		s.faults.Echo++
	default:
		s.match(&w.p, q)
		s.received++
		if q.TLVs.Unverified {
			s.faults.TLVUnverified++
		}
		w.signal()
	}
}

// stray counts a reply with no packet waiting for it: late when its
// packet's wait ended without a reply, else a duplicate (or a number
// never sent).
func (s *Session) stray(seq uint32, answered bool) {
	f := s.recent[seq%recentFates]
	if !answered && f.valid && f.seq == seq && !f.received {
		s.faults.Late++
		return
	}
	s.faults.Duplicate++
}

// match makes p, as sent, the record of its reply q: q's times and what
// the reflector said, p's own T1, Error Estimate and transmit stamp.
func (s *Session) match(p *PacketResult, q PacketResult) {
	sent := *p
	*p = q
	p.Sent, p.T1, p.T1Kernel, p.SenderError, p.Length, p.SentTOS = sent.Sent, sent.T1, sent.T1Kernel, sent.SenderError, sent.Length, sent.SentTOS
}

// readTxStamps drains the socket's error queue into the waiting packets'
// T1Kernel (keyed by the kernel's count of stamped datagrams).
func (s *Session) readTxStamps() {
	s.txMu.Lock()
	defer s.txMu.Unlock()
	_, _ = s.conn.ReadTxStamps(s.stamps, s.onStamp)
}

func (s *Session) txStamp(key uint32, ns int64) {
	s.mu.Lock()
	if w := s.byKey[key]; w != nil {
		w.p.T1Kernel = ns
	}
	s.mu.Unlock()
}
