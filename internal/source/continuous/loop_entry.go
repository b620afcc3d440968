package continuous

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// phase of a loop entry's connection
type connPhase uint8

const (
	// closed: no connection; the next slot opens one.
	closed connPhase = iota
	// resolving: a goroutine looks the first hop's name up.
	resolving
	// connecting: the connect is under way.
	connecting
	// idle: connected, waiting for the next slot.
	idle
	// sending: a request is being written.
	sending
	// waiting: the request is out, its reply not yet in.
	waiting
)

// tcpEntry is a plain-TCP relay entry on the loop: its connection to the
// first hop, driven through the prober's Exchange, and its schedule.
type tcpEntry struct {
	*recorder
	l     *loop
	x     *prober.Exchange
	o     *prober.Options
	sched schedule
	phase connPhase
	due   int64
	// heapIdx is the entry's place in the loop's heap (-1: none).
	heapIdx int
	removed bool

	// the connection
	fd          int
	literal     bool
	shareClock  bool
	addrs       []netip.AddrPort
	next        int // the address connected to, or to try next
	local, peer net.Addr
	connStart   int64
	polled      uint32
	inEpoll     bool
	rd          *frame.Reader
	rx          rxstamp.FdReader
	readFn      func([]byte) (int, error)
	tcp         fdTCPInfo
	out         []byte
	conn        uint64
	traces      traceSchedule

	// context reads run in goroutines: ctx ends them when the entry is
	// removed, and wg waits for them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// gone is closed once the loop removed the entry (stop, once).
	gone     chan struct{}
	stopOnce sync.Once
}

func newTCPEntry(l *loop, rec *recorder, opts prober.Options, sched schedule, parent context.Context) *tcpEntry {
	opts.Logger = rec.log
	x := prober.NewExchange(opts)
	e := &tcpEntry{recorder: rec, l: l, x: x, o: x.Options(), sched: sched, heapIdx: -1, fd: -1, gone: make(chan struct{})}
	e.ctx, e.cancel = context.WithCancel(parent)
	e.rx.Clocks = rxstamp.Clocks{Mono: e.o.Clock.Monotonic, Real: e.o.Realtime, MaxWait: e.o.Timeout}
	e.readFn = e.read
	if ap, err := netip.ParseAddrPort(e.o.Target); err == nil {
		e.addrs, e.literal = []netip.AddrPort{ap}, true
	}
	// The clock's synchronisation is read once per turn for the entries
	// that share a clock (the exporter's one): comparable clocks only.
	e.shareClock = reflect.TypeOf(e.o.Clock).Comparable()
	return e
}

// stop ends the entry without waiting: its context reads are cancelled,
// and the loop closes its connection.
func (e *tcpEntry) stop() {
	e.stopOnce.Do(func() {
		e.cancel()
		l := e.l
		if !l.post(func() {
			if !e.removed {
				l.remove(e)
			}
			close(e.gone)
		}) {
			close(e.gone)
		}
	})
}

// wait waits until the loop removed the entry and its context reads
// ended.
func (e *tcpEntry) wait() {
	<-e.gone
	e.wg.Wait()
}

// onLoop says whether an entry with these options runs on the loop: a
// relay chain over plain TCP, dialled as the loop dials (TLS, HTTP and
// STAMP chains and a test's own dialer run on a runner).
func onLoop(o prober.Options) bool {
	return o.HTTP == nil && o.STAMP == nil && o.TLS == nil && o.Dial == nil
}

// fdTCPInfo reads TCP_INFO of the entry's socket for the exchange.
type fdTCPInfo struct {
	fd  int
	buf unix.TCPInfo
}

func (t *fdTCPInfo) Read() (tcpinfo.Info, error) { return tcpinfo.ReadFd(t.fd, &t.buf) }

// timeout handles the entry's deadline (expire took it out of the heap).
// A connect or a reply that is ready when its deadline is handled is
// taken, not failed: the loop may come to the deadline late, after the
// socket became ready, and it looks at the socket once more, as a
// blocking read that raced its deadline would have returned the reply.
func (e *tcpEntry) timeout() {
	switch e.phase {
	case closed:
		e.sched.take(e.due)
		e.open()
	case idle:
		e.sched.take(e.due)
		e.probe()
	case connecting:
		if e.writable() {
			e.connectReady()
		}
		// still connecting on this deadline (not on a next address's)
		if e.phase == connecting && e.heapIdx < 0 {
			e.connectFailed(timeoutError{})
		}
	case sending:
		e.step(e.x.WriteFailed(e.opError("write", timeoutError{})))
	case waiting:
		e.readReply()
		// still waiting for this request (a reply taken may have sent
		// the next one, with a deadline of its own)
		if e.phase == waiting && e.heapIdx < 0 {
			e.step(e.x.ReadFailed(e.opError("read", timeoutError{})))
		}
	case resolving:
		// the resolution's own deadline ends it
	}
}

// writable says whether the socket is writable or in error now (its
// connect ended), without waiting.
func (e *tcpEntry) writable() bool {
	fds := [1]unix.PollFd{{Fd: int32(e.fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(fds[:], 0)
	return err == nil && n > 0 && fds[0].Revents != 0
}

// open opens the connection for the entry's next probes (Open).
func (e *tcpEntry) open() {
	if res := e.x.Invalid(); res != nil {
		e.observe(res, true, e.conn, e.l.now)
		e.due = e.sched.retry(e.l.mono)
		e.l.schedule(e)
		return
	}
	e.dial()
}

// dial connects to the first hop: at once to an address, after a lookup
// in a goroutine to a name (looked up again for every connection, as
// Go's dialer does).
func (e *tcpEntry) dial() {
	e.connStart = e.o.Clock.Monotonic()
	e.next = 0
	if e.literal {
		e.connect()
		return
	}
	e.phase = resolving
	e.resolve()
}

// resolve looks the first hop's name up within the connect's budget,
// and connects to its addresses in order.
func (e *tcpEntry) resolve() {
	target, budget := e.o.Target, e.x.Budget()
	ctx := e.ctx
	go func() {
		host, port, err := net.SplitHostPort(target)
		var addrs []netip.AddrPort
		if err == nil {
			var p int
			p, err = strconv.Atoi(port)
			if err == nil {
				rctx, cancel := context.WithTimeout(ctx, budget)
				var ips []netip.Addr
				ips, err = net.DefaultResolver.LookupNetIP(rctx, "ip", host)
				cancel()
				for _, ip := range ips {
					addrs = append(addrs, netip.AddrPortFrom(ip.Unmap(), uint16(p)))
				}
			}
		}
		if err != nil {
			err = &net.OpError{Op: "dial", Net: "tcp", Err: err}
		}
		e.l.post(func() {
			if e.removed || e.phase != resolving {
				return
			}
			if err != nil {
				e.dialFailed(err)
				return
			}
			e.addrs, e.next = addrs, 0
			e.connect()
		})
	}()
}

// connect starts a non-blocking connect to e.addrs[e.next].
func (e *tcpEntry) connect() {
	ap := e.addrs[e.next]
	family, sa := sockaddr(ap)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		e.dialFailed(e.dialError(os.NewSyscallError("socket", err)))
		return
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = rxstamp.Enable(fd)
	e.fd, e.phase = fd, connecting
	e.l.setFd(fd, e)
	err = unix.Connect(fd, sa)
	if err != nil && err != unix.EINPROGRESS {
		e.connectFailed(os.NewSyscallError("connect", err))
		return
	}
	if !e.watch(unix.EPOLLOUT) {
		return
	}
	e.due = e.l.mono + int64(e.x.Budget())
	e.l.schedule(e)
}

// connectReady completes the connect when its socket is writable (or in
// error).
func (e *tcpEntry) connectReady() {
	serr, err := unix.GetsockoptInt(e.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && serr != 0 {
		err = unix.Errno(serr)
	}
	if err == unix.EINPROGRESS || err == unix.EALREADY {
		return
	}
	if err != nil {
		e.connectFailed(os.NewSyscallError("connect", err))
		return
	}
	connect := time.Duration(e.o.Clock.Monotonic() - e.connStart)
	e.peer = net.TCPAddrFromAddrPort(e.addrs[e.next])
	if sa, err := unix.Getsockname(e.fd); err == nil {
		e.local = tcpAddrOf(sa)
	}
	maxFrame := e.o.MaxFrameBytes
	if maxFrame <= 0 {
		maxFrame = frame.DefaultMaxFrameBytes
	}
	e.rd = frame.NewSmallReader(nil, maxFrame)
	e.rx.Last = rxstamp.Stamp{}
	e.tcp.fd = e.fd
	if !e.watch(unix.EPOLLIN) {
		return
	}
	e.send(e.x.Connected(connect, &e.tcp, e.l.turnOf(e.o.Clock, e.shareClock)))
	e.conn = e.x.Connections()
}

// connectFailed ends a connect that failed with err: the next address
// is tried, else the dial failed (with the first address's error, as
// Go's dialer reports it).
func (e *tcpEntry) connectFailed(err error) {
	e.closeConn()
	if e.next+1 < len(e.addrs) && !isTimeout(err) {
		e.next++
		e.connect()
		return
	}
	e.dialFailed(e.dialError(err))
}

// dialFailed records a failed connect (Open's, or a probe's reopening).
func (e *tcpEntry) dialFailed(err error) {
	e.phase = closed
	e.step(e.x.DialFailed(err))
}

// probe sends the probe of the slot at e.due on the open connection
// (early, within the loop's margin, or late).
func (e *tcpEntry) probe() {
	if !e.inEpoll && !e.watch(unix.EPOLLIN) {
		return
	}
	e.l.slotProbes++
	t := e.l.turnOf(e.o.Clock, e.shareClock)
	t.Early = time.Duration(e.due - e.l.moment(time.Now()))
	e.send(e.x.Begin(t))
}

// send writes a request; what the socket does not take now is written
// when it can.
func (e *tcpEntry) send(req []byte) {
	e.phase = sending
	e.x.Sent(e.o.Clock.Monotonic())
	e.due = e.l.mono + int64(e.x.Budget())
	e.l.schedule(e)
	e.out = req
	e.write()
}

// write writes what is left of the request.
func (e *tcpEntry) write() {
	for len(e.out) > 0 {
		n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(e.fd), uintptr(unsafe.Pointer(&e.out[0])), uintptr(len(e.out)))
		switch errno {
		case 0:
			e.out = e.out[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			// Writable only: no reply is due before the request is
			// out, and a first hop that sent something early and
			// does not read would keep a level-triggered EPOLLIN
			// ready, the loop spinning until the deadline. What it
			// sent is read as the reply (a Session writes, then
			// reads, alike).
			e.watch(unix.EPOLLOUT)
			return
		default:
			e.step(e.x.WriteFailed(e.opError("write", errno)))
			return
		}
	}
	e.phase = waiting
	if e.polled != unix.EPOLLIN {
		e.watch(unix.EPOLLIN)
	}
}

// event handles readiness of the entry's socket.
func (e *tcpEntry) event(fd int, ev uint32) {
	if fd != e.fd {
		return
	}
	switch e.phase {
	case connecting:
		e.connectReady()
	case sending:
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			e.write()
		}
	case waiting:
		e.readReply()
	case idle:
		// Something came while no probe was out (the first hop closed
		// the idle connection, or sent what it should not): it is left
		// for the next probe to find, as a Session finds it.
		e.unwatch()
	}
}

// readsPerEvent bounds the reads of one readiness event.
const readsPerEvent = 8

// readReply reads the reply of the request in flight.
func (e *tcpEntry) readReply() {
	for range readsPerEvent {
		if e.phase != waiting {
			return
		}
		_, err := e.rd.ReadOnce(e.readFn)
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			e.step(e.x.ReadFailed(e.rd.EndError(err)))
			return
		}
		if e.rd.Complete() {
			fr, err := e.rd.Next()
			if err != nil {
				e.step(e.x.ReadFailed(err))
			} else {
				e.step(e.x.Reply(fr, e.rx.Last))
			}
			return
		}
		if e.rd.Drained() {
			return
		}
	}
}

// read is the frame reader's read of the socket, with the kernel's
// receive stamp, and errors as a Session's connection reports them.
func (e *tcpEntry) read(p []byte) (int, error) {
	n, err := e.rx.Read(e.fd, p)
	switch {
	case err == unix.EAGAIN:
		return 0, unix.EAGAIN
	case err != nil:
		return 0, e.opError("read", err)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// step does what the exchange says after one of its steps.
func (e *tcpEntry) step(s prober.Step) {
	if s.Trace {
		e.traceDone(s)
		return
	}
	opened := s.Warmup
	if s.Result != nil {
		e.record(s.Result, s.Warmup)
	}
	switch {
	case s.Reconnect:
		e.closeConn()
		e.dial()
	case s.Close:
		e.closeConn()
		if opened {
			e.due = e.sched.retry(e.l.mono)
		} else {
			e.due = e.sched.next(e.l.mono)
		}
		e.l.schedule(e)
	case s.Write != nil:
		e.send(s.Write)
	default:
		e.idle()
		if !opened {
			e.traceStep()
		}
	}
}

// idle waits for the entry's next slot on the open connection.
func (e *tcpEntry) idle() {
	e.phase = idle
	e.due = e.sched.next(e.l.mono)
	e.l.schedule(e)
}

// traceStep starts or collects the entry's trace when it is due, after a
// probe that left the connection open (a runner's traceStep).
func (e *tcpEntry) traceStep() {
	switch e.traces.step(e.recorder, e.o.Trace != nil, e.l.now) {
	case traceStart:
		// What the trace needs of the connection, read here: the trace
		// itself runs elsewhere and never touches the descriptor.
		target, err := trace.Inspect(trace.FD(e.fd))
		e.send(e.x.TraceStart(e.ctx, e.l.turnOf(e.o.Clock, e.shareClock), target, err))
	case traceCollect:
		if req := e.x.TracePaths(e.l.turnOf(e.o.Clock, e.shareClock)); req != nil {
			e.send(req)
		}
	}
}

// traceDone records what a trace request found, and waits for the next
// slot; the connection stays, as a Session's does.
func (e *tcpEntry) traceDone(s prober.Step) {
	if s.Paths != nil {
		e.observePaths(s.Paths)
	} else {
		e.traces.started(e.recorder, s.TraceStarted, e.l.now)
	}
	if e.phase == sending || e.phase == waiting {
		e.idle()
	}
}

// record records a result, and reads the hops' context in the background
// when it shows the chain out of its SLA (the result is kept as a copy:
// the exchange renews it at the next probe).
func (e *tcpEntry) record(res *prober.Result, warmup bool) {
	if c := e.x.Connections(); c > 0 {
		e.conn = c
	}
	if warmup {
		e.traces.reopened()
	}
	e.observe(res, warmup, e.conn, e.l.now)
	if warmup || !e.contextWanted(res, e.l.now) {
		return
	}
	kept := res.Clone()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.readContext(e.ctx, kept)
	}()
}

// watch registers the socket for events; false (the entry's dial or
// probe failed) when epoll refuses it.
func (e *tcpEntry) watch(events uint32) bool {
	if e.inEpoll && e.polled == events {
		return true
	}
	op := unix.EPOLL_CTL_MOD
	if !e.inEpoll {
		op = unix.EPOLL_CTL_ADD
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(e.fd)}
	_, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(e.l.ep), uintptr(op), uintptr(e.fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	if errno != 0 {
		err := os.NewSyscallError("epoll_ctl", errno)
		if e.phase == connecting {
			e.connectFailed(err)
		} else {
			e.step(e.x.WriteFailed(err))
		}
		return false
	}
	e.polled, e.inEpoll = events, true
	return true
}

// unwatch takes the socket out of epoll until the next probe.
func (e *tcpEntry) unwatch() {
	if e.inEpoll {
		_, _, _ = unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(e.l.ep), uintptr(unix.EPOLL_CTL_DEL), uintptr(e.fd), 0, 0, 0)
		e.inEpoll, e.polled = false, 0
	}
}

// closeConn closes the connection (closing takes it out of epoll).
func (e *tcpEntry) closeConn() {
	if e.fd >= 0 {
		e.l.setFd(e.fd, nil)
		unix.Close(e.fd)
		e.fd = -1
	}
	if e.rd != nil {
		e.rd.Release()
		e.rd = nil
	}
	e.inEpoll, e.polled, e.out = false, 0, nil
	e.phase = closed
}

// opError is an error of the connection as a net.Conn reports it.
func (e *tcpEntry) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: e.local, Addr: e.peer, Err: err}
}

// dialError is a failed connect as Go's dialer reports it.
func (e *tcpEntry) dialError(err error) error {
	var addr net.Addr
	if e.next < len(e.addrs) {
		addr = net.TCPAddrFromAddrPort(e.addrs[e.next])
	}
	return &net.OpError{Op: "dial", Net: "tcp", Addr: addr, Err: err}
}

// timeoutError is a deadline the loop enforced ("i/o timeout", as Go's
// deadlines say).
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

func sockaddr(ap netip.AddrPort) (int, unix.Sockaddr) {
	ip := ap.Addr()
	if ip.Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()}
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ip.As16()}
	if z := ip.Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	return unix.AF_INET6, sa
}

func tcpAddrOf(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return nil
}
