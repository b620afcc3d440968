// Package nfqdelay delays packets at IP level for the network lab, where
// the kernel has no netem: an iptables rule sends packets to an NFQUEUE
// (`iptables -A FORWARD -o IF -j NFQUEUE --queue-num N`), and a Delayer
// bound to that queue holds each one for a fixed delay before it gives
// the kernel its verdict, NF_ACCEPT. The kernel's own TCP, ICMP and
// routing stay in the path; only the time changes.
//
// It speaks nfnetlink_queue over a raw netlink socket (golang.org/x/sys/
// unix; the usual Go NFQUEUE libraries are not available here) in
// copy-mode meta: the kernel sends the packet's id and header, never its
// bytes. Packets leave in the order they came (one fixed delay, one FIFO),
// and at most Config.MaxQueued are held: the kernel's queue is capped at
// that length and drops what comes beyond it (a tail drop, as a full
// router queue would).
//
// A Delayer can live in a network namespace the test created: its socket
// is opened on a thread that joined the namespace (netns.Do) and stays
// there. Start the Delayer before adding the rule (without a listener the
// queue drops everything, unless the rule has --queue-bypass), and remove
// the rule before Close: Close accepts every packet still held, then
// unbinds the queue.
//
// Only tests import it (internal/architecture_test.go).
package nfqdelay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netns"
)

// nfnetlink_queue protocol numbers (linux/netfilter/nfnetlink_queue.h).
const (
	msgPacket       = 0
	msgVerdict      = 1
	msgConfig       = 2
	msgVerdictBatch = 3

	attrPacketHdr  = 1
	attrVerdictHdr = 2

	cfgCmd      = 1
	cfgParams   = 2
	cfgQueueMax = 3

	cmdBind   = 1
	cmdUnbind = 2

	copyMeta = 1

	verdictAccept = 1

	nlmsgHdrLen  = 16
	nfgenHdrLen  = 4
	attrHdrLen   = 4
	packetHdrLen = 7
)

// Config says which queue to serve and how.
type Config struct {
	// Queue is the NFQUEUE number of the iptables rule.
	Queue uint16
	// Delay is how long every packet is held.
	Delay time.Duration
	// MaxQueued caps the packets held at once (default 4096).
	MaxQueued int
	// Namespace is the network namespace (its name under /run/netns) the
	// queue is in; "" for the caller's.
	Namespace string
}

// Stats count what the Delayer did.
type Stats struct {
	// Received is the packets the kernel handed over.
	Received uint64
	// Accepted is the packets released after the delay.
	Accepted uint64
	// MaxLate is the longest a packet was held beyond its delay, from the
	// Delayer reading it to its verdict (the kernel's own queueing before
	// the read adds to it).
	MaxLate time.Duration
}

// Delayer holds the packets of one queue.
type Delayer struct {
	cfg     Config
	fd      int
	held    chan held
	done    chan struct{}
	closing atomic.Bool
	wg      sync.WaitGroup
	seq     atomic.Uint32

	received atomic.Uint64
	accepted atomic.Uint64
	maxLate  atomic.Int64

	errMu sync.Mutex
	err   error
}

type held struct {
	id  uint32
	due int64 // CLOCK_MONOTONIC ns
}

// Start binds the queue and starts holding its packets.
func Start(cfg Config) (*Delayer, error) {
	if cfg.Delay < 0 {
		return nil, fmt.Errorf("nfqdelay: negative delay %v", cfg.Delay)
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = 4096
	}
	d := &Delayer{cfg: cfg, fd: -1, held: make(chan held, cfg.MaxQueued), done: make(chan struct{})}
	err := netns.Do(cfg.Namespace, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return fmt.Errorf("nfqdelay: netlink socket: %w", err)
		}
		d.fd = fd
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := d.bind(); err != nil {
		unix.Close(d.fd)
		return nil, err
	}
	d.wg.Add(2)
	go d.receive()
	go d.release()
	return d, nil
}

func (d *Delayer) bind() error {
	// Room for every held packet's message, so the kernel never has to
	// drop one because the socket is full (ENOBUFS would lose its id).
	_ = unix.SetsockoptInt(d.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	if err := unix.Bind(d.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("nfqdelay: bind netlink: %w", err)
	}
	// A receive timeout, so that the reader notices Close.
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(d.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("nfqdelay: receive timeout: %w", err)
	}
	steps := []struct {
		what string
		msg  []byte
	}{
		{"bind queue", d.configMsg(attr(cfgCmd, []byte{cmdBind, 0, 0, 0}))},
		{"copy mode meta", d.configMsg(attr(cfgParams, []byte{0, 0, 0, 0, copyMeta}))},
		{"queue length", d.configMsg(attr(cfgQueueMax, be32(uint32(d.cfg.MaxQueued))))},
	}
	for _, s := range steps {
		if err := d.request(s.msg); err != nil {
			return fmt.Errorf("nfqdelay: queue %d: %s: %w", d.cfg.Queue, s.what, err)
		}
	}
	return nil
}

// configMsg is an NFQNL_MSG_CONFIG request carrying attrs.
func (d *Delayer) configMsg(attrs ...[]byte) []byte {
	return d.message(msgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK, attrs...)
}

// message builds one nfnetlink_queue message for the Delayer's queue.
func (d *Delayer) message(typ uint16, flags uint16, attrs ...[]byte) []byte {
	n := nlmsgHdrLen + nfgenHdrLen
	for _, a := range attrs {
		n += len(a)
	}
	b := make([]byte, n)
	binary.NativeEndian.PutUint32(b[0:], uint32(n))
	binary.NativeEndian.PutUint16(b[4:], unix.NFNL_SUBSYS_QUEUE<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], d.seq.Add(1))
	b[16] = unix.AF_UNSPEC
	b[17] = unix.NFNETLINK_V0
	binary.BigEndian.PutUint16(b[18:], d.cfg.Queue)
	off := nlmsgHdrLen + nfgenHdrLen
	for _, a := range attrs {
		off += copy(b[off:], a)
	}
	return b
}

// attr is one netlink attribute, padded to 4 bytes.
func attr(typ uint16, payload []byte) []byte {
	l := attrHdrLen + len(payload)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[attrHdrLen:], payload)
	return b
}

func be32(v uint32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, v)
	return b
}

// request sends a message and waits for the kernel's acknowledgement
// (before the reader runs: Start only).
func (d *Delayer) request(msg []byte) error {
	if err := unix.Sendto(d.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	seq := binary.NativeEndian.Uint32(msg[8:])
	buf := make([]byte, 8192)
	for range 16 {
		n, _, err := unix.Recvfrom(d.fd, buf, 0)
		if err != nil {
			return fmt.Errorf("waiting for the kernel's answer: %w", err)
		}
		var found bool
		var ackErr error
		walkErr := walk(buf[:n], func(typ uint16, mseq uint32, body []byte) {
			if typ != unix.NLMSG_ERROR || mseq != seq {
				return
			}
			found = true
			ackErr = errnoOf(body)
		})
		if walkErr != nil {
			return walkErr
		}
		if found {
			return ackErr
		}
	}
	return errors.New("no answer from the kernel")
}

// errnoOf reads an NLMSG_ERROR body: 0 is an acknowledgement.
func errnoOf(body []byte) error {
	if len(body) < 4 {
		return errors.New("short netlink error message")
	}
	if e := int32(binary.NativeEndian.Uint32(body)); e != 0 {
		return unix.Errno(-e)
	}
	return nil
}

// walk calls fn for every netlink message in b; it returns an error for a
// malformed buffer (a length that runs past the end or below the header).
func walk(b []byte, fn func(typ uint16, seq uint32, body []byte)) error {
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < nlmsgHdrLen || l > len(b) {
			return fmt.Errorf("netlink message of length %d in %d bytes", l, len(b))
		}
		fn(binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:]), b[nlmsgHdrLen:l])
		al := (l + 3) &^ 3
		if al > len(b) {
			al = len(b)
		}
		b = b[al:]
	}
	return nil
}

// packetID finds the packet id of an NFQNL_MSG_PACKET body (nfgenmsg and
// attributes); ok is false when there is none.
func packetID(body []byte) (id uint32, ok bool) {
	if len(body) < nfgenHdrLen {
		return 0, false
	}
	b := body[nfgenHdrLen:]
	for len(b) >= attrHdrLen {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < attrHdrLen || l > len(b) {
			return 0, false
		}
		if typ == attrPacketHdr && l >= attrHdrLen+packetHdrLen {
			return binary.BigEndian.Uint32(b[attrHdrLen:]), true
		}
		al := (l + 3) &^ 3
		if al > len(b) {
			al = len(b)
		}
		b = b[al:]
	}
	return 0, false
}

// receive reads the kernel's packet messages and queues their ids.
func (d *Delayer) receive() {
	defer d.wg.Done()
	defer close(d.held)
	buf := make([]byte, 1<<16)
	for !d.closing.Load() {
		n, _, err := unix.Recvfrom(d.fd, buf, 0)
		now := monotonic()
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			d.fail(fmt.Errorf("nfqdelay: receive: %w", err))
			continue
		}
		due := now + int64(d.cfg.Delay)
		werr := walk(buf[:n], func(typ uint16, _ uint32, body []byte) {
			if typ != unix.NFNL_SUBSYS_QUEUE<<8|msgPacket {
				return
			}
			id, ok := packetID(body)
			if !ok {
				return
			}
			d.received.Add(1)
			// Never blocks: the kernel holds at most MaxQueued packets
			// that have no verdict, and the channel has that room.
			d.held <- held{id: id, due: due}
		})
		if werr != nil {
			d.fail(fmt.Errorf("nfqdelay: %w", werr))
		}
	}
}

// release gives each held packet its verdict when it is due, in order.
// Packets already due behind the one just released go with it in one
// batch verdict: the kernel accepts every queued id up to the last.
func (d *Delayer) release() {
	defer d.wg.Done()
	// One thread with the finest timer slack (the default lets the kernel
	// wake a sleeper up to 50 µs late, on a busy VM much more).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	defer func() { _ = unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0) }()
	// wake is how late the kernel wakes this thread, on average (a moving
	// average of the latest sleeps): sleeping that much less keeps the
	// release on time on a VM whose timers fire 100 µs late.
	var wake int64
	next, ok := <-d.held
	for ok {
		if !d.closing.Load() {
			target := next.due - wake
			if target > monotonic() {
				sleepUntil(target)
				woke := monotonic() - target
				wake += (min(woke, int64(time.Millisecond)) - wake) / 8
			}
			if late := monotonic() - next.due; late > d.maxLate.Load() {
				d.maxLate.Store(late)
			}
		}
		last, n := next.id, uint64(1)
		var have bool
		next, have, ok = d.drainDue(&last, &n)
		d.verdict(last, n > 1)
		d.accepted.Add(n)
		if ok && !have {
			next, ok = <-d.held
		}
	}
}

// drainDue takes the packets that are due now off the channel, moving last
// and n along. It returns the first one that is not due yet (have), or
// have false when nothing more is waiting; ok is false once the channel
// is closed and empty.
func (d *Delayer) drainDue(last *uint32, n *uint64) (next held, have, ok bool) {
	for {
		select {
		case q, open := <-d.held:
			if !open {
				return held{}, false, false
			}
			if !d.closing.Load() && q.due > monotonic() {
				return q, true, true
			}
			*last, *n = q.id, *n+1
		default:
			return held{}, false, true
		}
	}
}

func (d *Delayer) verdict(id uint32, batch bool) {
	typ := uint16(msgVerdict)
	if batch {
		typ = msgVerdictBatch
	}
	hdr := make([]byte, 8)
	binary.BigEndian.PutUint32(hdr[0:], verdictAccept)
	binary.BigEndian.PutUint32(hdr[4:], id)
	msg := d.message(typ, unix.NLM_F_REQUEST, attr(attrVerdictHdr, hdr))
	if err := unix.Sendto(d.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		d.fail(fmt.Errorf("nfqdelay: verdict for packet %d: %w", id, err))
	}
}

func (d *Delayer) fail(err error) {
	d.errMu.Lock()
	if d.err == nil {
		d.err = err
	}
	d.errMu.Unlock()
}

// Err is the first error the Delayer met while running (nil if none).
func (d *Delayer) Err() error {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	return d.err
}

// Stats returns the counters so far.
func (d *Delayer) Stats() Stats {
	return Stats{Received: d.received.Load(), Accepted: d.accepted.Load(), MaxLate: time.Duration(d.maxLate.Load())}
}

// Close releases every held packet at once, unbinds the queue and closes
// the socket. Remove the iptables rule first.
func (d *Delayer) Close() error {
	if d.closing.Swap(true) {
		return nil
	}
	d.wg.Wait()
	msg := d.message(msgConfig, unix.NLM_F_REQUEST, attr(cfgCmd, []byte{cmdUnbind, 0, 0, 0}))
	_ = unix.Sendto(d.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	unix.Close(d.fd)
	close(d.done)
	return d.Err()
}

func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// sleepUntil sleeps to an absolute CLOCK_MONOTONIC time with the kernel's
// precision (tens of microseconds), not the Go scheduler's millisecond.
func sleepUntil(due int64) {
	ts := unix.NsecToTimespec(due)
	for {
		err := unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil)
		if err != unix.EINTR {
			return
		}
	}
}
