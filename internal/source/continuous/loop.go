package continuous

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
)

// The epoll engine of plain-TCP relay entries, after the relay's own
// (relay/loop*.go): one goroutine runs every such entry with non-blocking
// sockets, a level-triggered epoll of its own and a heap of deadlines,
// instead of a goroutine, a timer and the netpoller's hand-offs per
// entry. A probe then costs its write, its recvmsg (with the kernel's
// receive stamp) and a getsockopt(TCP_INFO) — system calls made raw, as
// they never block — and the loop's own clock is read once per turn (a
// request's build time is read for it, the clock's synchronisation once
// per turn).
// What a probe means is the prober's (prober.Exchange: the Session's own
// code), what it records the entry's (recorder): only the I/O is the
// loop's. loop_entry.go is an entry's connection, loop_timer.go the
// deadlines.
//
// The loop waits in Go's netpoller, for its epoll descriptor to become
// readable or the next deadline (the descriptor's read deadline), not in
// epoll_wait: a goroutine in a blocking system call keeps the runtime's
// monitor thread awake (a wake-up every 20 µs to 10 ms, each costing as
// much as a probe at 100 entries), and a process of one P would hand the
// P over and back at every wait. Parked in the netpoller, the loop costs
// nothing while it waits, and shares one P with the rest of the exporter.

// loop runs the plain-TCP entries of a Manager.
type loop struct {
	ep, wakeFd int
	// epf is ep as a file of Go's netpoller: the loop waits for it to be
	// readable (an event of one of its descriptors) with a deadline.
	epf      *os.File
	epc      syscall.RawConn
	waitFn   func(fd uintptr) bool
	ready    int
	readyErr syscall.Errno
	events   []unix.EpollEvent
	byFd     []*tcpEntry
	timers   timerHeap
	moment   moments
	// epoch is the time at moment 0 (deadlines as times); deadline is
	// the epoll file's read deadline as set.
	epoch    time.Time
	deadline time.Time
	log      *slog.Logger

	// the turn: when it began (one clock reading for the loop's own
	// deadlines and the entries' records), and the clock's
	// synchronisation read once for every entry that uses the same clock
	now       time.Time
	mono      int64
	turnClock clock.Clock
	turnSync  clock.Sync
	turnRead  bool

	mu      sync.Mutex
	inbox   []func()
	stopped bool
	done    chan struct{}

	// entries counts the entries on the loop (their early margins).
	entries int

	// turns counts the loop's turns (read in the loop: tests show it
	// turns only for events and deadlines); slotProbes the probes sent
	// for slots, slotTurns the turns that sent any (their batches).
	turns, slotProbes, slotTurns uint64
}

// openLoop makes a loop's descriptors; newLoop also runs it.
func openLoop(origin time.Time, moment moments, log *slog.Logger) (*loop, error) {
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
	// Non-blocking, so that os.NewFile puts it into the netpoller.
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll descriptor: %w", err)
	}
	l := &loop{ep: ep, wakeFd: wake, epf: os.NewFile(uintptr(ep), "continuous-epoll"), events: make([]unix.EpollEvent, 256), moment: moment, epoch: origin, log: log, done: make(chan struct{})}
	rc, err := l.epf.SyscallConn()
	if err != nil {
		l.epf.Close()
		unix.Close(wake)
		return nil, fmt.Errorf("epoll descriptor: %w", err)
	}
	l.epc = rc
	l.waitFn = l.poll
	return l, nil
}

func newLoop(origin time.Time, moment moments, log *slog.Logger) (*loop, error) {
	l, err := openLoop(origin, moment, log)
	if err != nil {
		return nil, err
	}
	go l.run()
	return l, nil
}

// poll takes the events ready now; false (wait) when there are none.
func (l *loop) poll(fd uintptr) bool {
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), 0, 0, 0)
	if errno == unix.EINTR {
		return false
	}
	l.ready, l.readyErr = int(n), errno
	return n > 0 || errno != 0
}

// wait waits for events or the next deadline and returns how many
// events there are. A turn always looks at the events: when the next
// deadline has already passed (the turn before took longer than the gap
// to it) it polls without waiting, since the netpoller would not even
// look — a read past its deadline fails before it tries — and the
// replies and connects that are ready would be left until their own
// deadlines found them, as timeouts.
func (l *loop) wait() (int, error) {
	deadline := time.Time{}
	if len(l.timers) > 0 {
		deadline = l.epoch.Add(time.Duration(l.timers[0].due))
		if !time.Now().Before(deadline) {
			return l.pollNow()
		}
	}
	if !deadline.Equal(l.deadline) {
		if err := l.epf.SetReadDeadline(deadline); err != nil {
			return 0, err
		}
		l.deadline = deadline
	}
	l.ready, l.readyErr = 0, 0
	err := l.epc.Read(l.waitFn)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The deadline came while waiting (or just before): what is
		// ready meanwhile is taken in the same turn.
		return l.pollNow()
	case err != nil:
		return 0, err
	case l.readyErr != 0:
		return 0, l.readyErr
	}
	return l.ready, nil
}

// pollNow takes the events ready now, without waiting.
func (l *loop) pollNow() (int, error) {
	l.ready, l.readyErr = 0, 0
	l.poll(uintptr(l.ep))
	if l.readyErr != 0 {
		return 0, l.readyErr
	}
	return l.ready, nil
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
	one := [8]byte{1}
	_, _ = unix.Write(l.wakeFd, one[:])
	return true
}

// stop closes every entry's connection and ends the loop.
func (l *loop) stop() {
	l.post(func() {
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
	})
	<-l.done
}

// run is the loop: wait for readiness or the next deadline, then handle
// the events, the inbox and the deadlines due, with one reading of the
// clock for the turn.
func (l *loop) run() {
	defer close(l.done)
	defer l.shutdown()
	for {
		n, err := l.wait()
		if err != nil {
			// Not expected of a valid epoll descriptor.
			l.log.Error("continuous probing: the event loop failed; its entries stop (restart the exporter)", "err", err)
			return
		}
		l.turns++
		l.beginTurn()
		for i := 0; i < n; i++ {
			ev := l.events[i]
			fd := int(ev.Fd)
			if fd == l.wakeFd {
				var buf [8]byte
				_, _ = unix.Read(l.wakeFd, buf[:])
				continue
			}
			if fd < len(l.byFd) && l.byFd[fd] != nil {
				l.byFd[fd].event(fd, ev.Events)
			}
		}
		if l.drainInbox() {
			return
		}
		l.expire()
	}
}

// beginTurn reads the clock for the turn.
func (l *loop) beginTurn() {
	l.now = time.Now()
	l.mono = l.moment(l.now)
	l.turnRead = false
}

// turnOf is the prober's clocks for a request an entry using clk builds
// now: the monotonic and wall clocks read for it (a probe late in a
// batch was built when it was, not when the turn began: its time in the
// source is its own), and the clock's synchronisation read once per turn
// for all entries sharing a comparable clock.
func (l *loop) turnOf(clk clock.Clock, share bool) prober.Turn {
	if !share {
		return prober.Turn{Mono: clk.Monotonic(), Wall: clk.Wall(), Sync: clk.Sync()}
	}
	if !l.turnRead || l.turnClock != clk {
		l.turnSync = clk.Sync()
		l.turnClock, l.turnRead = clk, true
	}
	return prober.Turn{Mono: clk.Monotonic(), Wall: clk.Wall(), Sync: l.turnSync}
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
	for _, e := range l.byFd {
		if e != nil {
			e.closeConn()
		}
	}
	l.mu.Lock()
	l.stopped = true
	work := l.inbox
	l.inbox = nil
	l.mu.Unlock()
	for _, fn := range work {
		fn() // removals confirm, resolutions close what they opened
	}
	l.epf.Close()
	unix.Close(l.wakeFd)
}

// add starts an entry on the loop (from the loop's thread).
func (l *loop) add(e *tcpEntry) {
	e.due = e.sched.first(l.moment(time.Now()))
	l.entries++
	l.schedule(e)
}

// remove ends an entry (from the loop's thread).
func (l *loop) remove(e *tcpEntry) {
	e.closeConn()
	e.removed = true
	l.entries--
	l.unschedule(e)
}

// setFd makes the loop dispatch fd's events to e (nil: to nobody).
func (l *loop) setFd(fd int, e *tcpEntry) {
	if fd >= len(l.byFd) {
		l.byFd = append(l.byFd, make([]*tcpEntry, fd+1-len(l.byFd))...)
	}
	l.byFd[fd] = e
}
