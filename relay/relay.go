// Package relay is one hop of a subsegment chain: it listens, forwards each
// frame to its configured next hop (or echoes it when it is the end of the
// chain), and stamps its own timing record into every reply on the way back.
//
// It owns the hop's side of the protocol and its two engines (epoll and
// goroutines). Layering (internal/architecture_test.go): floor 3; it imports
// only internal/host and internal/wire, never the source end, snmp,
// collector, internal/output or internal/exporter; and only
// cmd/subsegment_exporter and internal/exporter import it (a rule another
// package needs belongs in internal/wire).
package relay

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
	"github.com/subsegment/subsegment_exporter/internal/wire/transport"
)

// Defaults of the original tool and of the protocol.
const (
	DefaultTimeout        = 10 * time.Second
	DefaultMaxConnections = 1024
	// In-flight frames per session: a full ring pushes back on the upstream
	// reader. Probe sessions send one probe at a time; stream sessions
	// pipeline blocks and need room for a window of them.
	inflightProbe  = 16
	inflightStream = frame.StreamWindow + 64
)

// Metrics receives what a relay does; the collector package implements it
// for /metrics. Implementations must be safe for concurrent use.
type Metrics interface {
	ConnectionOpened()
	ConnectionClosed()
	// Relayed counts a reply written upstream: ok is false for error replies.
	Relayed(kind frame.Kind, ok bool)
	// Failed counts an error this hop reported, by reason.
	Failed(reason peer.Reason)
	// Residence observes forward + return time spent in this hop.
	Residence(d time.Duration)
	// Wait observes the part of the residence frames spent in the kernel
	// before this hop read them (waiting for a CPU or for the loop).
	Wait(d time.Duration)
	// StreamBytes counts stream-mode payload bytes relayed back upstream.
	StreamBytes(n int)
}

type nopMetrics struct{}

func (nopMetrics) ConnectionOpened()        {}
func (nopMetrics) ConnectionClosed()        {}
func (nopMetrics) Relayed(frame.Kind, bool) {}
func (nopMetrics) Failed(peer.Reason)       {}
func (nopMetrics) Residence(time.Duration)  {}
func (nopMetrics) Wait(time.Duration)       {}
func (nopMetrics) StreamBytes(int)          {}

// Config describes one relay.
type Config struct {
	// Name identifies the hop in records, segment labels and errors.
	Name string
	// ForwardTo is the next hop's address; empty makes this hop the end
	// of the chain, which echoes every request.
	ForwardTo string
	// Timeout bounds every single operation: the wait for the next frame
	// (which must arrive whole within it: bytes of a partial frame do not
	// extend it), a dial, a write, and the wait for a reply.
	Timeout time.Duration
	// RemovePerfHeaders drops the path and records received from beyond
	// this hop in both directions (an administrative boundary).
	RemovePerfHeaders bool
	MaxFrameBytes     int
	MaxHops           int
	// MaxConnections bounds concurrent upstream connections. At the limit
	// the oldest connection that never sent a valid frame is closed to make
	// room (idle scanners cannot starve probes); when every connection has
	// proven itself, the newcomer is answered "overloaded" and closed.
	MaxConnections int
	// Keys, when set, make the relay sign everything it sends and refuse
	// anything not signed with one of them.
	Keys frame.Keys
	// KeyRing, when set, replaces Keys with keys a reload may rotate:
	// each session takes the ring's keys when it opens and keeps them.
	KeyRing *frame.KeyRing
	// Clock stamps frames; tests inject skewed clocks.
	Clock clock.Clock
	// Realtime is CLOCK_REALTIME for converting the kernel's receive
	// stamps; nil reads the system's. Tests step it.
	Realtime func() int64
	// Dial opens the downstream TCP connection; nil dials plainly.
	Dial func(ctx context.Context, address string) (net.Conn, error)
	// TLS, when set, makes upstream connections TLS; DialTLS makes the
	// downstream connection TLS. Either puts the relay on the goroutine
	// engine.
	TLS     *tls.Config
	DialTLS *tls.Config
	// BufferBudget bounds the read buffers over 64 KiB (large stream
	// blocks) of all connections together; 0 uses the default. Buffers
	// grow with bytes that arrived, and connections that have not sent a
	// valid frame yet share at most half of it (frame.BufferBudget).
	BufferBudget int64
	// Annotate returns the local variables attached to records of probes
	// that ask for them (in-band context); nil attaches nothing.
	Annotate func() []frame.Var
	Metrics  Metrics
	// STAMPMetrics counts the test packets of a relay whose next hop is
	// a STAMP reflector (stampnext.go); nil counts nothing.
	STAMPMetrics STAMPMetrics
	Logger       *slog.Logger
	// Engine drives plain-TCP sessions: EngineEpoll (default) or
	// EngineGoroutines. TLS sessions always use goroutines.
	Engine string
	// ID overrides the random hop identity (tests only).
	ID uint64
	// Tracer traces the route to the next hop for requests that ask
	// (ProbeTrace); nil refuses them (their path says disabled). One per
	// process: its rate limit is the process's.
	Tracer *trace.Tracer
	// TraceOptions bound each trace (max TTL, probes per TTL); the
	// deadline comes from the request's budget.
	TraceOptions trace.Options
	// TraceMetrics counts the traces; may be nil.
	TraceMetrics TraceMetrics
}

// Engines a relay can drive its sessions with.
const (
	// EngineEpoll runs every session on one thread with epoll: a probe
	// costs no goroutine wake-ups, the lowest round trip.
	EngineEpoll = "epoll"
	// EngineGoroutines runs each session with two goroutines over
	// net.Conn; TLS connections always use it.
	EngineGoroutines = "goroutines"
)

// Server is a running relay.
type Server struct {
	cfg      Config
	id       uint64
	idBytes  [8]byte
	metrics  Metrics
	log      *slog.Logger
	slots    chan struct{}
	downName atomic.Pointer[string] // the name the next hop last reported
	budget   *frame.BufferBudget
	dialer   transport.Dialer
	// downAddr is --forward-to as a socket address when it is an IP
	// address (the epoll engine connects to it itself), else nil.
	downAddr unix.Sockaddr
	// stampNext is the session with the STAMP reflector --forward-to
	// names, if it does.
	stampNext *stampLink
	clocks    rxstamp.Clocks
	warned    rateLimit // warnings about peers' bad input
	// spliced counts the stream bytes that went through pipes (pipe.go).
	spliced atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	closed bool

	// Connections that have not sent a valid frame yet, oldest first: at
	// the connection limit the oldest of them is closed to make room.
	unprovenMu sync.Mutex
	unproven   unprovenList
}

// New validates cfg and returns a relay ready to Serve.
func New(cfg Config) (*Server, error) {
	if err := peer.ValidateName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxFrameBytes == 0 {
		cfg.MaxFrameBytes = frame.DefaultMaxFrameBytes
	}
	if cfg.MaxFrameBytes < 1024 || cfg.MaxFrameBytes > frame.MaxFrameBytesLimit {
		return nil, fmt.Errorf("--relay.max-frame-bytes %d out of range: use 1024 to %d", cfg.MaxFrameBytes, frame.MaxFrameBytesLimit)
	}
	if cfg.BufferBudget == 0 {
		cfg.BufferBudget = frame.DefaultBufferBudget
	}
	if cfg.BufferBudget < int64(cfg.MaxFrameBytes) && cfg.MaxFrameBytes > 64<<10 {
		return nil, fmt.Errorf("--relay.buffer-budget-bytes %d is smaller than one frame of --relay.max-frame-bytes %d: raise it, or lower the frame size", cfg.BufferBudget, cfg.MaxFrameBytes)
	}
	if cfg.MaxHops == 0 {
		cfg.MaxHops = frame.DefaultMaxHops
	}
	if cfg.MaxHops < 1 || cfg.MaxHops > frame.MaxHopsLimit {
		return nil, fmt.Errorf("maximum hop count %d out of range: use 1 to %d", cfg.MaxHops, frame.MaxHopsLimit)
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	stampNext, err := stampNextOf(&cfg)
	if err != nil {
		return nil, err
	}
	if cfg.ForwardTo != "" && stampNext == nil {
		if err := peer.ValidateAddress(cfg.ForwardTo); err != nil {
			return nil, fmt.Errorf("--forward-to: %w", err)
		}
	}
	switch cfg.Engine {
	case "":
		cfg.Engine = EngineEpoll
	case EngineEpoll, EngineGoroutines:
	default:
		return nil, fmt.Errorf("relay engine %q unknown: use %s or %s", cfg.Engine, EngineEpoll, EngineGoroutines)
	}
	if cfg.TLS != nil || cfg.DialTLS != nil {
		// The epoll engine owns raw sockets; TLS needs crypto/tls's net.Conn.
		cfg.Engine = EngineGoroutines
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.NewSystem()
	}
	if cfg.KeyRing == nil {
		cfg.KeyRing = frame.NewKeyRing(cfg.Keys)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:     cfg,
		id:      cfg.ID,
		metrics: cfg.Metrics,
		log:     cfg.Logger.With("relay", cfg.Name),
		slots:   make(chan struct{}, cfg.MaxConnections),
		conns:   make(map[net.Conn]struct{}),
		budget:  frame.NewBufferBudget(cfg.BufferBudget, cfg.MaxFrameBytes),
		// stampNext: --forward-to names a STAMP reflector (stampnext.go).
		stampNext: stampNext,
	}
	s.clocks = rxstamp.Clocks{Mono: cfg.Clock.Monotonic, Real: cfg.Realtime, MaxWait: cfg.Timeout}
	s.dialer = transport.Dialer{Dial: cfg.Dial, TLS: cfg.DialTLS, Clocks: s.clocks}
	if cfg.Dial == nil && cfg.DialTLS == nil && stampNext == nil {
		s.downAddr = sockaddrOf(cfg.ForwardTo)
	}
	if s.id == 0 {
		s.id = peer.NewID()
	}
	binary.BigEndian.PutUint64(s.idBytes[:], s.id)
	return s, nil
}

// ID is this hop's identity in probe paths.
func (s *Server) ID() uint64 { return s.id }

// Engine is the engine plain-TCP sessions run on.
func (s *Server) Engine() string { return s.cfg.Engine }

// Name is this hop's name.
func (s *Server) Name() string { return s.cfg.Name }

// SplicedBytes is how many bytes of stream blocks went from socket to
// socket through a pipe instead of through user space (tests, debugging).
func (s *Server) SplicedBytes() int64 { return s.spliced.Load() }

// Serve accepts connections on ln until ctx ends, then closes every
// connection and waits for their goroutines.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer s.shutdown()
	var ev *loop
	if s.cfg.Engine == EngineEpoll {
		var err error
		if ev, err = newLoop(s); err != nil {
			return fmt.Errorf("relay %s: %w", s.cfg.Name, err)
		}
		// A loop that fails stops accepting too: the process reports the
		// error instead of accepting connections nobody serves.
		ev.onFail = func() { ln.Close() }
		go ev.run()
		defer ev.stop()
	}
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ev != nil && ev.failure() != nil {
				return fmt.Errorf("relay %s: event loop failed: %w", s.cfg.Name, ev.failure())
			}
			if ctx.Err() != nil {
				return nil
			}
			if !s.retryAccept(err, &backoff) {
				return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
			}
			continue
		}
		backoff = 0
		if !s.slot() {
			s.refuseOverloaded(conn)
			continue
		}
		if tc, ok := conn.(*net.TCPConn); ok && ev != nil {
			s.serveInLoop(ev, tc)
			continue
		}
		s.serveInGoroutines(ctx, conn)
	}
}

// retryAccept waits before the next accept after a temporary failure (a
// timeout, or out of descriptors); false for an error that stops Serve.
func (s *Server) retryAccept(err error, backoff *time.Duration) bool {
	var ne net.Error
	temporary := errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
	if !temporary {
		return false
	}
	*backoff = min(max(2*(*backoff), 5*time.Millisecond), time.Second)
	s.log.Warn("accept failed, retrying", "err", err, "backoff", *backoff)
	time.Sleep(*backoff)
	return true
}

// serveInLoop hands an accepted connection, which holds a slot, to the
// epoll engine.
func (s *Server) serveInLoop(ev *loop, tc *net.TCPConn) {
	adm := s.admit(nil)
	adm.evict = func() {
		ev.post(func() {
			if x := adm.session; x != nil && !adm.proven.Load() {
				x.close()
			}
		})
	}
	if err := ev.adopt(tc, adm, func() { <-s.slots }); err != nil {
		s.log.Warn("cannot serve connection", "peer", tc.RemoteAddr().String(), "err", err)
		s.settle(adm)
		<-s.slots
		_ = tc.Close()
	}
}

// serveInGoroutines serves an accepted connection, which holds a slot,
// with the goroutine engine (TLS, or --relay.engine=goroutines).
func (s *Server) serveInGoroutines(ctx context.Context, conn net.Conn) {
	conn = transport.Accept(conn, s.cfg.TLS, s.clocks)
	if !s.track(conn) {
		<-s.slots
		conn.Close()
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.slots }()
		defer s.untrack(conn)
		s.metrics.ConnectionOpened()
		defer s.metrics.ConnectionClosed()
		adm := s.admit(func() { conn.Close() })
		defer s.settle(adm) // gone: nothing left to evict
		s.serveConn(ctx, conn, adm)
	}()
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

func (s *Server) shutdown() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// refuseOverloaded answers a connection over the limit with an error frame,
// without waiting for it to send anything, and closes it.
func (s *Server) refuseOverloaded(conn net.Conn) {
	s.metrics.Failed(peer.ReasonOverloaded)
	e := frame.ErrorRecord{ID: s.id, Name: s.cfg.Name, Peer: conn.RemoteAddr().String(), Reason: peer.ReasonOverloaded, Side: frame.SideUpstream,
		Message: fmt.Sprintf("%s has reached its limit of %d connections (--relay.max-connections)", s.cfg.Name, s.cfg.MaxConnections)}
	buf := frame.AppendErrorFrame(nil, &e, frame.NewSigner(s.cfg.KeyRing.Current()))
	_ = conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = conn.Write(buf)
	conn.Close()
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn, adm *admission) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if s.stampNext != nil {
		s.serveSTAMPNext(ctx, conn, adm)
		return
	}
	if s.cfg.ForwardTo == "" {
		x := newEcho(s, conn)
		x.adm = adm
		x.run()
		return
	}
	f := newForwarder(s, conn)
	f.adm = adm
	f.run(ctx)
}

// rateLimit lets one event through per interval: warnings about what
// peers send are worth a log line, a flood of them is not.
type rateLimit struct{ last atomic.Int64 }

func (r *rateLimit) allow(interval time.Duration) bool {
	now := time.Now().UnixNano()
	last := r.last.Load()
	return now-last >= int64(interval) && r.last.CompareAndSwap(last, now)
}
