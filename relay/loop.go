package relay

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
)

// loop is the epoll engine: one goroutine, on its own thread while it
// waits (raw system calls: rawsys.go), runs every plain-TCP session of the
// relay with non-blocking sockets and level-triggered epoll, the way
// haproxy does. A probe then costs its reads and writes and
// no goroutine wake-ups, which keeps a hop's round trip at haproxy's.
// Dials (name resolution, handshakes) happen in goroutines and are handed
// back, so a slow next hop never stalls other sessions.
type loop struct {
	s      *Server
	ep     int
	wakeFd int
	events []unix.EpollEvent
	byFd   map[int]*lsession
	timers timerHeap
	// onFail is called (once, from the loop's thread) when epoll itself
	// fails and the loop stops: Serve must stop accepting.
	onFail func()

	mu      sync.Mutex
	inbox   []func()
	stopped bool
	failed  error
	done    chan struct{}
}

func newLoop(s *Server) (*loop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	return &loop{s: s, ep: ep, wakeFd: wake, events: make([]unix.EpollEvent, 256), byFd: map[int]*lsession{}, done: make(chan struct{})}, nil
}

// post runs fn in the loop; false once the loop has stopped.
func (l *loop) post(fn func()) bool {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return false
	}
	l.inbox = append(l.inbox, fn)
	l.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(l.wakeFd, one[:])
	return true
}

// stop makes the loop close every session and return.
func (l *loop) stop() {
	l.post(func() {
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
	})
	<-l.done
}

// failure is why the loop stopped on its own, nil while it runs.
func (l *loop) failure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// run is the event loop; it returns after stop, or when epoll fails.
func (l *loop) run() {
	runningLoops.Add(1)
	defer runningLoops.Add(-1)
	defer close(l.done)
	defer l.shutdown()
	for {
		timeout := -1
		if len(l.timers) > 0 {
			wait := l.timers[0].deadline - l.s.cfg.Clock.Monotonic()
			timeout = int(max(0, (wait+int64(time.Millisecond)-1)/int64(time.Millisecond)))
		}
		n, err := epollWait(l.ep, l.events, timeout, len(l.byFd) > 0)
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.fail(fmt.Errorf("epoll_wait: %w", err))
			return
		}
		for i := 0; i < n; i++ {
			ev := l.events[i]
			fd := int(ev.Fd)
			if fd == l.wakeFd {
				var buf [8]byte
				_, _ = rawRead(l.wakeFd, buf[:])
				continue
			}
			if x := l.byFd[fd]; x != nil {
				x.event(fd, ev.Events)
			}
		}
		if l.drainInbox() {
			return
		}
		l.expire()
	}
}

// fail stops the loop on an error of epoll itself: every session is
// closed (shutdown), and Serve is told to stop accepting.
func (l *loop) fail(err error) {
	l.s.log.Error("relay event loop failed; closing its connections and stopping the relay", "err", err)
	l.mu.Lock()
	l.failed = err
	l.mu.Unlock()
	if l.onFail != nil {
		l.onFail()
	}
}

func (l *loop) drainInbox() (stopped bool) {
	l.mu.Lock()
	work := l.inbox
	l.inbox = nil
	l.mu.Unlock()
	for _, fn := range work {
		fn()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

func (l *loop) expire() {
	now := l.s.cfg.Clock.Monotonic()
	for len(l.timers) > 0 && l.timers[0].deadline <= now {
		l.timers[0].timeout(now)
	}
}

func (l *loop) shutdown() {
	for _, x := range l.byFd {
		x.close()
	}
	l.mu.Lock()
	l.stopped = true
	work := l.inbox
	l.inbox = nil
	l.mu.Unlock()
	for _, fn := range work {
		fn() // dial results close their descriptors when the session is gone
	}
	unix.Close(l.ep)
	unix.Close(l.wakeFd)
}

// adopt moves an accepted connection into the loop. release is called when
// the session ends.
func (l *loop) adopt(conn *net.TCPConn, adm *admission, release func()) error {
	fd, err := detach(conn)
	if err != nil {
		return err
	}
	peerAddr := conn.RemoteAddr().String()
	if !l.post(func() { l.start(fd, peerAddr, adm, release) }) {
		unix.Close(fd)
		return errors.New("relay loop stopped")
	}
	return nil
}

// detach takes the socket out of Go's netpoller: it duplicates the
// descriptor (sharing O_NONBLOCK and TCP_NODELAY) and closes the original.
// The copy receives the kernel's receive timestamps.
func detach(conn syscall.Conn) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(s uintptr) { fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, fmt.Errorf("dup socket: %w", dupErr)
	}
	if c, ok := conn.(io.Closer); ok {
		c.Close()
	}
	// Without stamps the hop falls back to its read time (and says so in
	// its records); that is no reason to refuse the connection.
	_ = rxstamp.Enable(fd)
	return fd, nil
}

func (l *loop) start(fd int, peerAddr string, adm *admission, release func()) {
	x := &lsession{l: l, up: fd, down: -1, connFd: -1, echo: l.s.cfg.ForwardTo == "", release: release, heapIdx: -1}
	x.init(l.s, peerAddr)
	x.adm = adm
	x.upRx.Clocks = l.s.clocks
	x.downRx.Clocks = l.s.clocks
	x.upR = frame.NewReader(nil, l.s.cfg.MaxFrameBytes)
	x.upR.Budget = l.s.budget
	x.readUp = func(p []byte) (int, error) { return readFd(&x.upRx, x.up, p) }
	x.tcp.readUp = func() (tcpinfo.Info, error) { return tcpinfo.ReadFd(x.up, &x.tcpBuf) }
	x.idleUntil = l.s.cfg.Clock.Monotonic() + int64(l.s.cfg.Timeout)
	if err := epollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		// Never registered: the session ends here, once, and an eviction
		// later finds it closed instead of closing a reused descriptor.
		l.s.log.Warn("cannot watch connection", "peer", peerAddr, "err", err)
		x.closed = true
		adm.proven.Store(true)
		x.upR.Release()
		unix.Close(fd)
		release()
		return
	}
	adm.session = x
	x.upEvents, x.upPolled = unix.EPOLLIN, true
	l.byFd[fd] = x
	l.s.metrics.ConnectionOpened()
	x.schedule()
}

// readFd reads a socket once with recvmsg (keeping the kernel's stamp),
// mapping "nothing now" to errAgain and end of stream to io.EOF.
func readFd(rx *rxstamp.FdReader, fd int, p []byte) (int, error) {
	n, err := rx.Read(fd, p)
	switch {
	case err == unix.EAGAIN:
		return 0, errAgain
	case err != nil:
		return 0, err
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// lsession is one upstream connection driven by the loop.
type lsession struct {
	hopState
	l        *loop
	up, down int
	upR      *frame.Reader
	downR    *frame.Reader
	upRx     rxstamp.FdReader
	downRx   rxstamp.FdReader
	readUp   func([]byte) (int, error)
	readDown func([]byte) (int, error)
	echo     bool
	release  func()

	dialing bool
	// A connect the loop runs itself (connect.go): the socket while its
	// handshake is under way, when it started, and when to give up.
	connFd    int
	connStart int64
	connUntil int64
	connKind  frame.Kind
	// connectPending is the handshake time of the new downstream
	// connection until the first forwarded request carries it.
	connectPending int64
	// held are requests taken from the upstream buffer that wait for the
	// dial or for ring room; the buffer is not read meanwhile.
	held       []heldRequest
	upEOF      bool
	upStopped  bool // a fatal answer is queued: no more upstream input
	broken     *localAnswer
	closeAfter bool // close once the replies are written
	// draining: the last answer is out and the write side shut; what the
	// upstream still sends is read and discarded (so that it gets the
	// answer instead of a reset) until it closes or the drain ends.
	draining   bool
	drainUntil int64
	drained    int
	closed     bool
	tcpBuf     unix.TCPInfo

	// Poll state of each descriptor: the events it is registered for, and
	// whether it is registered at all. A descriptor with no interest is
	// removed from epoll, which otherwise keeps reporting ERR/HUP on it.
	upEvents, downEvents uint32
	upPolled, downPolled bool
	idleUntil            int64
	stallUntil           int64
	deadline             int64
	heapIdx              int
}

type heldRequest struct {
	fr  []byte
	e   inflight
	v   frame.View
	ans *localAnswer
}

func (x *lsession) event(fd int, ev uint32) {
	if x.closed {
		return
	}
	switch fd {
	case x.up:
		if ev&unix.EPOLLOUT != 0 {
			x.writeUp()
		}
		if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !x.closed {
			if x.draining {
				x.drain()
			} else {
				x.readUpstream()
			}
		}
	case x.connFd:
		x.connectReady()
	case x.down:
		if ev&unix.EPOLLOUT != 0 {
			x.writeDown()
		}
		if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !x.closed && x.down >= 0 {
			x.readDownstream()
		}
	}
	x.settle()
}

// A batch that waits for the socket points into a read buffer, which must
// not be read into until the batch is out: requests going downstream point
// into the upstream buffer, replies into the downstream one (the end
// host's replies into the upstream one).
func (x *lsession) upPinned() bool { return x.fwd.pendingWrite() || x.echo && x.ret.pendingWrite() }

func (x *lsession) downPinned() bool { return x.ret.pendingWrite() }

// canReadUp is when the session reads upstream: the same rule decides the
// epoll interest and guards the read, so the loop is never woken for a
// descriptor it then does not read.
func (x *lsession) canReadUp() bool {
	return !x.closed && !x.upEOF && !x.upStopped && !x.dialing && len(x.held) == 0 && !x.upPinned()
}

func (x *lsession) canReadDown() bool { return !x.closed && x.down >= 0 && !x.downPinned() }

// settle brings epoll interest and the deadline in line with the state.
func (x *lsession) settle() {
	if x.closed {
		return
	}
	if x.closeAfter && !x.ret.pendingWrite() && !x.draining {
		x.startDrain()
		if x.closed {
			return
		}
	}
	if !x.draining && (x.upEOF || x.upStopped) && !x.ret.pendingWrite() && len(x.held) == 0 && (x.ring == nil || x.ring.empty()) && x.pending == 0 && !x.dialing {
		x.close()
		return
	}
	var up uint32
	if x.draining || x.canReadUp() {
		up |= unix.EPOLLIN
	}
	if x.ret.pendingWrite() {
		up |= unix.EPOLLOUT
	}
	if !x.watch(x.up, &x.upEvents, &x.upPolled, up) {
		return
	}
	if x.down >= 0 {
		var down uint32
		if x.canReadDown() {
			down |= unix.EPOLLIN
		}
		if x.fwd.pendingWrite() {
			down |= unix.EPOLLOUT
		}
		if !x.watch(x.down, &x.downEvents, &x.downPolled, down) {
			return
		}
	}
	x.schedule()
}

// watch registers fd for want: modified, added back, or removed when want
// is empty. A failed epoll_ctl leaves the state unknown: the session is
// closed, and watch reports false.
func (x *lsession) watch(fd int, cur *uint32, polled *bool, want uint32) bool {
	if *polled && *cur == want || !*polled && want == 0 {
		return true
	}
	var err error
	switch {
	case want == 0:
		err = epollCtl(x.l.ep, unix.EPOLL_CTL_DEL, fd, &unix.EpollEvent{})
	case *polled:
		err = epollCtl(x.l.ep, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: want, Fd: int32(fd)})
	default:
		err = epollCtl(x.l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: want, Fd: int32(fd)})
	}
	if err != nil {
		x.s.log.Warn("epoll_ctl failed; closing the session", "peer", x.upPeer, "err", err)
		x.close()
		return false
	}
	*cur, *polled = want, want != 0
	return true
}

// schedule puts the session's next deadline into the timer heap.
func (x *lsession) schedule() {
	d := int64(0)
	pick := func(t int64) {
		if t > 0 && (d == 0 || t < d) {
			d = t
		}
	}
	if x.draining {
		pick(x.drainUntil)
	}
	if x.connFd >= 0 {
		pick(x.connUntil)
	}
	if x.fwd.pendingWrite() || x.ret.pendingWrite() {
		pick(x.stallUntil)
	}
	if x.ring != nil && x.broken == nil {
		if e := x.ring.peekReady(); e != nil && e.local == nil {
			pick(e.waitUntil)
		}
	}
	if !x.upEOF && !x.dialing && !x.draining && (x.ring == nil || x.ring.empty()) {
		pick(x.idleUntil)
	}
	x.deadline = d
	h := &x.l.timers
	switch {
	case d == 0 && x.heapIdx >= 0:
		heap.Remove(h, x.heapIdx)
	case d != 0 && x.heapIdx >= 0:
		heap.Fix(h, x.heapIdx)
	case d != 0:
		heap.Push(h, x)
	}
}

// timeout handles the session's deadline.
func (x *lsession) timeout(now int64) {
	switch {
	case x.draining && now >= x.drainUntil:
		x.close()
		return
	case x.connFd >= 0 && now >= x.connUntil:
		x.connectFailed(fmt.Errorf("connect to %s: %w", x.s.cfg.ForwardTo, errTimeout))
	case (x.fwd.pendingWrite() || x.ret.pendingWrite()) && x.stallUntil > 0 && now >= x.stallUntil:
		x.s.log.Debug("peer stopped reading, closing", "peer", x.upPeer, "timeout", x.s.cfg.Timeout)
		if x.fwd.pendingWrite() && x.ring != nil {
			x.breakDown(fmt.Errorf("write to %s: %w", x.s.cfg.ForwardTo, unix.ETIMEDOUT))
		} else {
			x.close()
			return
		}
	case x.ring != nil && x.broken == nil && x.ring.peekReady() != nil && x.ring.peekReady().local == nil && now >= x.ring.peekReady().waitUntil:
		x.breakDown(fmt.Errorf("read from %s: %w", x.s.cfg.ForwardTo, errTimeout))
	case !x.draining && now >= x.idleUntil:
		x.s.log.Debug("upstream idle, closing", "peer", x.upPeer, "timeout", x.s.cfg.Timeout)
		x.upstreamEnded(errTimeout)
	default:
		// The deadline moved meanwhile.
	}
	x.settle()
}

// errTimeout is a deadline the loop enforced.
var errTimeout = timeoutError{}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// readsPerEvent bounds the reads one readiness event gets, so that a
// large frame (read header first, then body) or a fast stream does not go
// back through epoll_wait for every read, and no session starves others.
const readsPerEvent = 8

func (x *lsession) readUpstream() {
	for i := 0; i < readsPerEvent; i++ {
		if !x.canReadUp() {
			return
		}
		_, err := x.upR.ReadOnce(x.readUp)
		if err == errAgain {
			return
		}
		if err != nil {
			x.upstreamEnded(x.upR.EndError(err))
			return
		}
		x.idleUntil = x.now() + int64(x.s.cfg.Timeout)
		if x.upR.Complete() {
			x.processUp()
		}
		if x.upR.Drained() {
			return
		}
	}
}

// upstreamEnded handles the end of the upstream side.
func (x *lsession) upstreamEnded(err error) {
	switch r := peer.Classify(err); {
	case errors.Is(err, io.EOF), r == peer.ReasonTimeout, r == peer.ReasonReset:
		x.upEOF = true
		if r == peer.ReasonReset {
			x.close()
			return
		}
		if x.down >= 0 {
			_ = unix.Shutdown(x.down, unix.SHUT_WR)
		}
	case r == peer.ReasonBadFrame || r == peer.ReasonClosed || r == peer.ReasonTooLarge || r == peer.ReasonOverloaded:
		x.answerFatal(x.reject(err))
	default:
		x.s.log.Debug("upstream read failed", "peer", x.upPeer, "err", err)
		x.close()
	}
}

// answerFatal queues an answer after which the session ends: no more
// upstream input is read, and the session closes once the answer is out.
func (x *lsession) answerFatal(ans *localAnswer) {
	x.upStopped = true
	rx := rxstamp.Stamp{At: x.now()}
	if x.echo {
		x.echoes = append(x.echoes, echoReply{e: newEntry(rx), local: ans})
		x.closeAfter = true
		x.flushEcho()
		return
	}
	x.held = append(x.held, heldRequest{e: newEntry(rx), ans: ans})
	x.processUp()
}

// startDrain begins the end of a session whose last answer is written:
// the write side is shut, and upstream input is discarded for a little
// while, so that a peer still sending (a stream) reads the answer instead
// of losing it to a reset.
func (x *lsession) startDrain() {
	if x.upEOF {
		x.close()
		return
	}
	x.draining = true
	x.drainUntil = x.now() + int64(min(x.s.cfg.Timeout, drainTime))
	_ = unix.Shutdown(x.up, unix.SHUT_WR)
	if x.down >= 0 {
		x.dropDown()
	}
}

// Bounds of the drain after a session's last answer.
const (
	drainTime  = 2 * time.Second
	drainBytes = 32 << 20
)

// drain discards what the upstream sends after the last answer.
func (x *lsession) drain() {
	var buf [16 << 10]byte
	for i := 0; i < readsPerEvent; i++ {
		n, err := rawRead(x.up, buf[:])
		if err == unix.EAGAIN || err == unix.EINTR {
			return
		}
		x.drained += max(n, 0)
		if err != nil || n == 0 || x.drained > drainBytes {
			x.close()
			return
		}
	}
}

// processEcho answers every complete request the end host has buffered.
func (x *lsession) processEcho() {
	if !x.upStopped && x.queueEchoes(x.upR, x.upRx.Last) {
		x.upStopped, x.closeAfter = true, true
	}
	x.flushEcho()
}

// processUp admits held requests, then every complete request buffered,
// and writes what it could admit downstream. The requests were received
// when the latest upstream read was: the kernel's stamp of it.
func (x *lsession) processUp() {
	if x.echo {
		x.processEcho()
		return
	}
	rx, wall, sync := x.upRx.Last, x.s.cfg.Clock.Wall(), x.s.cfg.Clock.Sync()
	for !x.closeAfter {
		if len(x.held) == 0 {
			if x.upStopped {
				break
			}
			fr, err := x.upR.Next()
			if err != nil {
				x.held = append(x.held, heldRequest{e: newEntry(rx), ans: x.reject(err)})
				x.upStopped = true
			} else if fr == nil {
				break
			} else {
				e, v, ans := x.classify(fr, rx, wall, sync)
				x.held = append(x.held, heldRequest{fr: fr, e: e, v: v, ans: ans})
				if ans != nil && ans.fatal {
					x.upStopped = true
				}
			}
		}
		if !x.admit(x.held[0]) {
			break
		}
		// Shift in place: the queue is short, and keeps its capacity.
		n := copy(x.held, x.held[1:])
		x.held[n] = heldRequest{}
		x.held = x.held[:n]
	}
	x.flushForward()
}

// admit forwards a request or queues this hop's answer to it; false when
// it must wait (for the dial, or for room in the ring).
func (x *lsession) admit(r heldRequest) bool {
	if r.ans == nil && x.broken != nil {
		ans := *x.broken
		r.ans = &ans
	}
	if x.ring == nil {
		if r.ans != nil {
			// Nothing in flight yet: answer right away.
			if r.ans.fatal {
				x.upStopped, x.closeAfter = true, true
			}
			x.echoes = append(x.echoes, echoReply{e: r.e, local: r.ans})
			x.flushEcho()
			return true
		}
		if !x.dialing {
			x.dial(r.e)
		}
		return false
	}
	if !x.roomInRing() {
		return false
	}
	if r.ans != nil {
		// A fatal answer closes the session once it reaches the head.
		x.enqueueLocal(r.e, r.ans)
		return true
	}
	if x.connectPending > 0 {
		// The first request forwarded after the dial carries its time.
		r.e.dialed, r.e.connect = true, x.connectPending
		x.connectPending = 0
	}
	x.enqueueForward(r.e, r.fr, &r.v)
	return true
}

// dial opens the downstream connection: in the loop itself for an address
// (connect.go), so that its time is the handshake's however busy the
// process is; in a goroutine when a name must be resolved or a test dials
// its own way.
func (x *lsession) dial(e inflight) {
	x.dialing = true
	s := x.s
	limit := min(e.budget*7/8, s.cfg.Timeout)
	kind := e.kind
	if s.downAddr != nil {
		x.connect(kind, limit)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		start := s.cfg.Clock.Monotonic()
		conn, err := s.dialer.DialContext(ctx, s.cfg.ForwardTo)
		connect := s.cfg.Clock.Monotonic() - start
		fd := -1
		if err == nil {
			sc, ok := conn.(syscall.Conn)
			if !ok {
				conn.Close()
				err = errors.New("dialled connection has no descriptor")
			} else if fd, err = detach(sc); err != nil {
				conn.Close()
			}
		}
		if !x.l.post(func() { x.dialDone(fd, connect, kind, err) }) && fd >= 0 {
			unix.Close(fd)
		}
	}()
}

func (x *lsession) dialDone(fd int, connect int64, kind frame.Kind, err error) {
	if x.closed || x.l.isStopped() {
		if fd >= 0 {
			unix.Close(fd)
		}
		return
	}
	x.dialing = false
	if err == nil {
		if err = epollCtl(x.l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			unix.Close(fd)
			err = fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	if err != nil {
		ans := x.dialFailed(err)
		if len(x.held) > 0 {
			x.held[0].ans = ans
		}
		x.processUp()
		x.closeAfter = true
		x.settle()
		return
	}
	x.down, x.downEvents, x.downPolled = fd, unix.EPOLLIN, true
	x.l.byFd[fd] = x
	x.downR = frame.NewReader(nil, x.s.cfg.MaxFrameBytes)
	x.downR.Budget = x.s.budget
	x.readDown = func(p []byte) (int, error) { return readFd(&x.downRx, x.down, p) }
	x.tcp.readDown = func() (tcpinfo.Info, error) { return tcpinfo.ReadFd(x.down, &x.tcpBuf) }
	x.startRing(kind)
	x.connectPending = max(connect, 1)
	x.processUp()
	x.settle()
}

func (l *loop) isStopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

// flushForward publishes the batch and writes it downstream.
func (x *lsession) flushForward() {
	if x.ring == nil {
		return
	}
	_, local, _ := x.publish()
	if x.fwd.pendingWrite() && x.down >= 0 {
		x.writeDown()
	}
	if local {
		x.processDown(x.downRx.Last)
	}
}

func (x *lsession) writeDown() {
	if !x.fwd.pendingWrite() {
		return
	}
	if x.down < 0 {
		x.fwd.reset()
		return
	}
	done, err := x.fwd.writeFd(x.down)
	if err != nil {
		x.fwd.reset()
		x.breakDown(fmt.Errorf("write to %s: %w", x.s.cfg.ForwardTo, err))
		return
	}
	if !done {
		x.stallUntil = x.now() + int64(x.s.cfg.Timeout)
		return
	}
	// The batch is out: requests buffered meanwhile may go on.
	if x.upR.Complete() || len(x.held) > 0 {
		x.processUp()
	}
}

func (x *lsession) readDownstream() {
	for i := 0; i < readsPerEvent; i++ {
		if !x.canReadDown() {
			return
		}
		_, err := x.downR.ReadOnce(x.readDown)
		if err == errAgain {
			return
		}
		if err != nil {
			x.breakDown(x.downR.EndError(err))
			return
		}
		if x.downR.Complete() {
			x.processDown(x.downRx.Last)
		}
		if x.downR.Drained() {
			return
		}
	}
}

// processDown answers entries from the ring head: with the replies
// buffered from downstream (received at rx, the stamp of the latest
// downstream read), or by this hop itself.
func (x *lsession) processDown(rx rxstamp.Stamp) {
	for x.ring != nil {
		e := x.ring.peekReady()
		if e != nil && (e.local != nil || x.broken != nil) {
			if x.takeHead(e, x.broken) {
				x.closeAfter = true
			}
			continue
		}
		if x.down < 0 {
			break
		}
		fr, err := x.downR.Next()
		if err == nil && fr != nil && e == nil {
			err = fmt.Errorf("%w: a frame from downstream that answers no request", frame.ErrMalformed)
		}
		if err != nil {
			x.breakDown(err)
			return
		}
		if fr == nil {
			break
		}
		if ans := x.takeReply(e, fr, rx); ans != nil {
			x.setBroken(ans)
		}
	}
	x.flushReturn()
	if x.ring != nil && (x.upR.Complete() || len(x.held) > 0) && !x.fwd.pendingWrite() {
		x.processUp() // replies freed ring room
	}
}

// breakDown gives up on the downstream: every entry in flight, and every
// request from now on, gets this hop's answer.
func (x *lsession) breakDown(err error) {
	if x.broken != nil {
		return
	}
	x.setBroken(x.downstreamFailure(err, x.ring.peekReady()))
	x.processDown(rxstamp.Stamp{At: x.now()})
}

func (x *lsession) setBroken(ans *localAnswer) {
	x.broken = ans
	x.dropDown()
	x.fwd.reset()
}

// dropDown closes the downstream connection (its buffer stays until the
// session ends: replies pinned in it may still be on their way up).
func (x *lsession) dropDown() {
	if x.down < 0 {
		return
	}
	delete(x.l.byFd, x.down)
	unix.Close(x.down) // closing removes it from epoll
	x.down, x.downPolled, x.downEvents = -1, false, 0
	x.tcp.readDown, x.tcp.hasDown = nil, false
}

// flushReturn writes the replies upstream.
func (x *lsession) flushReturn() {
	if x.buildReplies() == 0 && !x.ret.pendingWrite() {
		return
	}
	x.writeUp()
}

func (x *lsession) flushEcho() {
	if x.buildEchoes() == 0 && !x.ret.pendingWrite() {
		return
	}
	x.writeUp()
}

func (x *lsession) writeUp() {
	if !x.ret.pendingWrite() {
		return
	}
	done, err := x.ret.writeFd(x.up)
	if err != nil {
		x.s.log.Debug("cannot write replies upstream", "peer", x.upPeer, "err", err)
		x.close()
		return
	}
	if !done {
		x.stallUntil = x.now() + int64(x.s.cfg.Timeout)
		return
	}
	if x.down >= 0 {
		// Replies buffered meanwhile may go on.
		if x.downR.Complete() {
			x.processDown(x.downRx.Last)
		}
	} else if x.echo && x.upR.Complete() && !x.upStopped {
		x.processUp()
	}
}

func (x *lsession) close() {
	if x.closed {
		return
	}
	x.closed = true
	x.dropConnect()
	delete(x.l.byFd, x.up)
	unix.Close(x.up)
	x.dropDown()
	if x.heapIdx >= 0 {
		heap.Remove(&x.l.timers, x.heapIdx)
	}
	x.upR.Release()
	if x.downR != nil {
		x.downR.Release()
	}
	x.fwd.reset()
	x.ret.reset()
	x.s.metrics.ConnectionClosed()
	x.adm.proven.Store(true) // gone: nothing left to evict
	x.release()
}

// timerHeap orders sessions by deadline.
type timerHeap []*lsession

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].deadline < h[j].deadline }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *timerHeap) Push(v any) {
	x := v.(*lsession)
	x.heapIdx = len(*h)
	*h = append(*h, x)
}
func (h *timerHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	x.heapIdx = -1
	return x
}
