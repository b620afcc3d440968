package relay

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// The downstream connection: dialled when the first request needs it,
// given up when it fails.

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
	// The downstream is this hop's own --forward-to, dialled for a session
	// that sent a valid frame: its reader is proven from the start.
	x.downR.Prove()
	if x.upR.Sink != nil {
		x.downPipe = newPipe(fd, &x.s.spliced)
		x.downR.Sink = &x.downPipe
		x.ret.pipe = &x.downPipe
	}
	x.readDown = func(p []byte) (int, error) { return readFd(&x.downRx, x.down, p) }
	x.tcp.readDown = func() (tcpinfo.Info, error) { return tcpinfo.ReadFd(x.down, &x.tcpBuf) }
	x.downTarget = func() (trace.Target, error) { return trace.Inspect(trace.FD(x.down)) }
	x.startRing(kind)
	x.connectPending = max(connect, 1)
	x.processUp()
	x.settle()
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
	x.downPipe.src = -1 // what it holds still goes up; nothing more comes in
	x.tcp.dropDown()
	x.downTarget = nil
}
