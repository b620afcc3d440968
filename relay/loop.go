package relay

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
)

// The epoll engine's loop: its thread, its inbox, and the dispatch of
// readiness events to sessions, whose epoll interest settle keeps in line
// with their state. The session's other concerns live beside it:
// loop_admit.go (a connection in and out), loop_read.go (reading frames),
// loop_write.go (queueing and writing batches), loop_dial.go (the
// downstream connection; connect.go runs its handshake), loop_timer.go
// (deadlines).

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
	now := l.s.cfg.Clock.Monotonic()
	for {
		timeout := -1
		if len(l.timers) > 0 {
			// now is expire's: nothing ran since.
			wait := l.timers[0].deadline - now
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
		now = l.expire()
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
	// dial or for ring room; the buffer is not read meanwhile. fresh is
	// the request just taken, admitted without a copy into held.
	held       []heldRequest
	fresh      heldRequest
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
	// The pipes large stream blocks take (pipe.go): upPipe holds what the
	// upstream sends (on to the downstream, or back, at the end host),
	// downPipe what the downstream sends back.
	upPipe, downPipe pipe

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

func (l *loop) isStopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}
