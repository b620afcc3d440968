// Package reflector is a relay's STAMP Session-Reflector (RFC 8762, RFC
// 8972): it answers test packets from any STAMP sender (a router, perfSONAR,
// another relay's prober), stateless or stateful, unauthenticated or
// authenticated with the chain's keys, with T2 from the kernel's receive
// stamp, T3 written right before the batch goes out, the Error Estimate
// from the kernel's clock state, and the TLVs of internal/wire/stamp.
//
// It is bounded: sessions (with an idle timeout), packets per second,
// packet size; a reply is never larger than its request. One goroutine
// serves the socket in batches (recvmmsg, sendmmsg) and allocates nothing
// per packet; its counters are read at scrape time.
//
// Layering (internal/architecture_test.go): floor 3, beside relay; it
// imports internal/host and internal/wire, never internal/source,
// internal/config or anything above.
package reflector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"syscall"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/udpmsg"
)

// Defaults of the bounds (flags --stamp.*).
const (
	DefaultMaxSessions = 16384
	// DefaultMaxSessionsPerAddress is a sender's share of the sessions
	// (an IPv4 address, an IPv6 /64): 16 hosts at least fill the table.
	DefaultMaxSessionsPerAddress = 1024
	DefaultSessionTimeout        = 60 * time.Second
	DefaultMaxRate               = 250000
	DefaultMaxPacketBytes        = 4096
	// batchSize is the datagrams one recvmmsg/sendmmsg moves.
	batchSize = 32
)

// Authentication settings of Config.Auth (stamp.ChooseMode).
const (
	AuthAuto = stamp.AuthAuto // authenticated when the relay has a key file
	AuthOn   = stamp.AuthOn
	AuthOff  = stamp.AuthOff
)

// Modes of Config.Mode (RFC 8762 §4).
const (
	ModeStateful  = "stateful"
	ModeStateless = "stateless"
)

// Config describes a reflector.
type Config struct {
	// Address to listen on, host:port (UDP; 862 is STAMP's registered
	// port, which needs CAP_NET_BIND_SERVICE: under systemd in both
	// CapabilityBoundingSet= and AmbientCapabilities=, ExampleDropIn).
	Address string
	// Keys are the chain's keys (--relay.auth-key-file); KeyRing, when
	// set, holds them as a reload rotates them (keys.go).
	Keys    frame.Keys
	KeyRing *frame.KeyRing
	// Auth: AuthAuto (default), AuthOn, AuthOff.
	Auth string
	// Mode: ModeStateful (default) counts per session and numbers its
	// replies itself; ModeStateless copies the sender's numbers.
	Mode string
	// MaxSessions bounds the sessions kept (stateful), and
	// MaxSessionsPerAddress those of one sender (an IPv4 address, an IPv6
	// /64: senderOf); a packet of a new
	// session beyond either is answered statelessly (the sender's
	// sequence number, no counters) and counted.
	MaxSessions           int
	MaxSessionsPerAddress int
	// SessionTimeout forgets a session idle this long.
	SessionTimeout time.Duration
	// MaxRate bounds the packets answered per second (all senders).
	MaxRate int
	// MaxPacketBytes bounds the request size (and so the reply's).
	MaxPacketBytes int
	// Clock gives the Error Estimate's clock state; nil: the system's.
	Clock  clock.Clock
	Logger *slog.Logger
}

// Validate fills defaults and checks the bounds; the messages name flags.
func (c *Config) Validate() error {
	if c.Auth == "" {
		c.Auth = AuthAuto
	}
	if c.Mode == "" {
		c.Mode = ModeStateful
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxSessionsPerAddress == 0 {
		c.MaxSessionsPerAddress = min(DefaultMaxSessionsPerAddress, c.MaxSessions)
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = DefaultSessionTimeout
	}
	if c.MaxRate == 0 {
		c.MaxRate = DefaultMaxRate
	}
	if c.MaxPacketBytes == 0 {
		c.MaxPacketBytes = DefaultMaxPacketBytes
	}
	if _, err := stamp.ChooseMode(c.Auth, len(c.Keys) > 0); err != nil {
		return err
	}
	switch {
	case c.Mode != ModeStateful && c.Mode != ModeStateless:
		return fmt.Errorf("--stamp.mode %q: stateful or stateless", c.Mode)
	case c.MaxSessions < 1 || c.MaxSessions > 1<<20:
		return fmt.Errorf("--stamp.max-sessions %d: 1 to %d", c.MaxSessions, 1<<20)
	case c.MaxSessionsPerAddress < 1 || c.MaxSessionsPerAddress > c.MaxSessions:
		return fmt.Errorf("--stamp.max-sessions-per-address %d: 1 to --stamp.max-sessions (%d)", c.MaxSessionsPerAddress, c.MaxSessions)
	case c.SessionTimeout < time.Second:
		return fmt.Errorf("--stamp.session-timeout %s: at least 1s", c.SessionTimeout)
	case c.MaxRate < 1:
		return fmt.Errorf("--stamp.max-packets-per-second %d: at least 1", c.MaxRate)
	case c.MaxPacketBytes < stamp.UnauthBaseLen || c.MaxPacketBytes > stamp.MaxPacketLen:
		return fmt.Errorf("--stamp.max-packet-bytes %d: %d to %d", c.MaxPacketBytes, stamp.UnauthBaseLen, stamp.MaxPacketLen)
	}
	return nil
}

// stampMode is the STAMP mode the configuration answers (valid: Validate
// checked it).
func (c *Config) stampMode() stamp.Mode {
	m, _ := stamp.ChooseMode(c.Auth, len(c.Keys) > 0)
	return m
}

// Reflector is a running STAMP Session-Reflector.
type Reflector struct {
	cfg     Config
	mode    stamp.Mode
	conn    *udpmsg.Conn
	port    uint16
	auth    *stamp.Auth
	clock   clock.Clock
	tai     int32
	batch   *udpmsg.Batch
	stamps  *udpmsg.Batch
	replies [batchSize]stamp.Reply
	sessOf  [batchSize]int32
	req     stamp.Request
	table   *sessions
	bucket  tokenBucket
	// transmit stamps asked for and not yet read, by key
	txRing    []txRecord
	txNext    uint32
	txPending int
	lastSweep int64
	onStamp   func(key uint32, ns int64)
	// send hands a batch's replies to the kernel (the socket's sendmmsg;
	// FuzzReflector reads what it is handed).
	send func(b *udpmsg.Batch, n int) (int, error)
	m    counters
	// keysVersion is the KeyRing's version auth was made from.
	keysVersion uint64
}

// New opens the reflector's socket.
func New(cfg Config) (*Reflector, error) {
	if cfg.KeyRing != nil {
		cfg.Keys = cfg.KeyRing.Current()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	conn, err := udpmsg.Listen(cfg.Address, udpmsg.Config{TxTimestamps: true, ReadBuffer: 4 << 20})
	if err != nil {
		if errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("STAMP reflector: listen on %s: %w: %s", cfg.Address, err, privilegedPortAdvice(boundingHasNetBindService()))
		}
		return nil, fmt.Errorf("STAMP reflector: listen on %s: %w", cfg.Address, err)
	}
	r := &Reflector{cfg: cfg, mode: cfg.stampMode(), conn: conn, port: conn.LocalAddr().Port(), auth: stamp.NewAuth(cfg.Keys),
		clock: cfg.Clock, tai: stamp.KernelTAIOffset(),
		batch: udpmsg.NewBatch(batchSize, cfg.MaxPacketBytes+1), stamps: udpmsg.NewBatch(batchSize, 16),
		txRing: make([]txRecord, 4096), keysVersion: cfg.KeyRing.Version()}
	if r.clock == nil {
		r.clock = clock.NewSystem()
	}
	if cfg.Mode == ModeStateful {
		r.table = newSessions(cfg.MaxSessions, cfg.MaxSessionsPerAddress, int64(cfg.SessionTimeout))
	}
	r.bucket = newTokenBucket(cfg.MaxRate)
	r.onStamp = r.txStamp
	r.send = conn.Send
	r.req = stamp.Request{Mode: r.mode, Auth: r.auth, TAIOffset: r.tai}
	return r, nil
}

// Addr is the address the reflector listens on.
func (r *Reflector) Addr() netip.AddrPort { return r.conn.LocalAddr() }

// Mode is the STAMP mode it answers.
func (r *Reflector) Mode() stamp.Mode { return r.mode }

// Serve answers packets until ctx ends; it closes the socket.
func (r *Reflector) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = r.conn.Close() })
	defer stop()
	defer func() { _ = r.conn.Close() }()
	if r.cfg.Logger != nil {
		r.cfg.Logger.Info("STAMP reflector listening", "address", r.Addr().String(), "mode", r.mode.String(), "sessions", r.cfg.Mode,
			"max_sessions", r.cfg.MaxSessions, "max_sessions_per_address", r.cfg.MaxSessionsPerAddress, "max_packets_per_second", r.cfg.MaxRate, "max_packet_bytes", r.cfg.MaxPacketBytes)
	}
	for {
		n, err := r.conn.Recv(r.batch)
		if err != nil {
			if ctx.Err() != nil || udpmsg.IsClosed(err) {
				return nil
			}
			// ICMP errors of earlier replies surface here
			// (ECONNREFUSED); they are no reason to stop.
			r.m.recvErrors.Add(1)
			continue
		}
		r.handle(n)
	}
}

// handle answers one batch: T3 is written per packet in a last pass, right
// before the one sendmmsg.
func (r *Reflector) handle(n int) {
	if r.txPending > 0 {
		_, _ = r.conn.ReadTxStamps(r.stamps, r.onStamp)
	}
	mono := monotonic()
	r.bucket.refill(mono)
	r.req.Sync = r.clock.Sync()
	r.followKeys()
	msgs := r.batch.Msgs[:n]
	var reflected uint64
	for i := range msgs {
		if r.process(i, &msgs[i], mono) {
			reflected++
		}
	}
	for i := range msgs {
		m := &msgs[i]
		if !m.Send {
			continue
		}
		rep := &r.replies[i]
		t3 := time.Now().UnixNano()
		stamp.Finish(m.Buf[:m.N], rep, t3)
		r.m.residence.observe(t3 - r.rxTime(m))
		if s := r.sessOf[i]; s >= 0 {
			r.table.list[s].prev = stamp.PrevReflected{Valid: true, Seq: rep.Seq, Time: t3}
		}
	}
	if reflected > 0 {
		sent, err := r.send(r.batch, n)
		if err != nil && !udpmsg.IsClosed(err) {
			r.m.sendErrors.Add(1)
		}
		r.noteTx(msgs, sent)
		r.m.reflected.Add(uint64(sent))
	}
	if r.table != nil && mono-r.lastSweep >= int64(time.Second) {
		r.table.sweep(mono)
		r.lastSweep = mono
		r.m.sessions.Store(int64(r.table.live()))
	}
}

func (r *Reflector) rxTime(m *udpmsg.Message) int64 {
	if m.RxTime != 0 {
		return m.RxTime
	}
	return time.Now().UnixNano()
}

// process decides one request and turns it into its reply; false when it
// is refused (and counted by reason).
func (r *Reflector) process(i int, m *udpmsg.Message, mono int64) bool {
	m.Send = false
	r.sessOf[i] = -1
	switch {
	case m.Truncated || m.N > r.cfg.MaxPacketBytes:
		r.m.refused[refusedTooLarge].Add(1)
		return false
	case m.N < r.mode.BaseLen():
		r.m.refused[refusedShort].Add(1)
		return false
	case !r.bucket.take():
		r.m.refused[refusedRate].Add(1)
		return false
	}
	pkt := m.Buf[:m.N]
	req := &r.req
	req.Verified, req.KeyIndex = false, 0
	if r.mode == stamp.Authenticated {
		// Before any state is made for it: forged packets create no
		// sessions.
		k, err := r.auth.Verify(pkt)
		if err != nil {
			r.m.refused[refusedAuth].Add(1)
			return false
		}
		req.Verified, req.KeyIndex = true, k
	}
	req.RxTime, req.RxKernel = m.RxTime, m.RxTime != 0
	if !req.RxKernel {
		req.RxTime = time.Now().UnixNano()
	}
	req.TTL, req.TOS = m.TTL, m.TOS
	req.Src, req.Dst = m.Addr, netip.AddrPortFrom(m.Local, r.port)
	req.ReflectorSeq, req.RxCount, req.TxCount, req.Prev = 0, 0, 0, stamp.PrevReflected{}
	req.Stateful = false
	if r.table != nil {
		s, why := r.table.get(m.Addr, stamp.PeekSSID(pkt, r.mode), mono)
		if s < 0 {
			// No session for it: answered as a stateless reflector
			// would, never left without a reply.
			r.m.stateless[why].Add(1)
			return r.reflect(i, m, pkt, req)
		}
		req.Stateful = true
		st := &r.table.list[s]
		st.rx++
		st.tx++
		req.ReflectorSeq, req.RxCount, req.TxCount, req.Prev = st.nextSeq, st.rx, st.tx, st.prev
		st.nextSeq++
		r.sessOf[i] = s
	}
	return r.reflect(i, m, pkt, req)
}

// reflect turns a request into its reply in place and marks it for the
// batch's send; false when it is refused (counted by reason).
func (r *Reflector) reflect(i int, m *udpmsg.Message, pkt []byte, req *stamp.Request) bool {
	rep := &r.replies[i]
	if err := stamp.Reflect(pkt, req, rep); err != nil {
		r.m.refused[refusedReason(err)].Add(1)
		return false
	}
	r.m.flagged[flagUnrecognized].Add(uint64(rep.Unrecognized))
	r.m.flagged[flagMalformed].Add(uint64(rep.Malformed))
	r.m.flagged[flagIntegrity].Add(uint64(rep.Integrity))
	m.Send, m.SetTOS, m.SendTOS, m.TxStamp = true, true, rep.TOS, rep.FollowUp && r.table != nil
	return true
}

func refusedReason(err error) int {
	switch {
	case errors.Is(err, stamp.ErrAuth), errors.Is(err, stamp.ErrNoKey):
		return refusedAuth
	case errors.Is(err, stamp.ErrShort):
		return refusedShort
	case errors.Is(err, stamp.ErrTooLong):
		return refusedTooLarge
	}
	return refusedShort
}

// txRecord maps a transmit stamp's key to the reply it stamps.
type txRecord struct {
	sess int32
	gen  uint32
	seq  uint32
}

// noteTx records the replies sent with a transmit stamp request, in the
// order the kernel numbers them.
func (r *Reflector) noteTx(msgs []udpmsg.Message, sent int) {
	k := 0
	for i := range msgs {
		if !msgs[i].Send {
			continue
		}
		if k >= sent {
			return
		}
		k++
		if !msgs[i].TxStamp || r.sessOf[i] < 0 {
			continue
		}
		s := r.sessOf[i]
		r.txRing[r.txNext%uint32(len(r.txRing))] = txRecord{sess: s, gen: r.table.list[s].gen, seq: r.replies[i].Seq}
		r.txNext++
		r.txPending++
	}
}

// txStamp replaces a session's last T3 by the kernel's transmit stamp,
// for the Follow-up Telemetry of the session's next reply.
func (r *Reflector) txStamp(key uint32, ns int64) {
	if r.txPending > 0 {
		r.txPending--
	}
	if r.txNext-key > uint32(len(r.txRing)) {
		return // too old: its slot was reused
	}
	rec := r.txRing[key%uint32(len(r.txRing))]
	if rec.sess < 0 || int(rec.sess) >= len(r.table.list) {
		return
	}
	st := &r.table.list[rec.sess]
	if st.gen == rec.gen && st.prev.Valid && st.prev.Seq == rec.seq {
		st.prev.Time, st.prev.Kernel = ns, true
	}
}

var epoch = time.Now()

func monotonic() int64 { return int64(time.Since(epoch)) }
