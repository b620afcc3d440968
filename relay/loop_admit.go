package relay

import (
	"container/heap"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
)

// A connection's way into the loop and out of it: adopted from Serve's
// accept, registered with epoll, and closed once.

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
	x.upR.OnEvict = x
	x.upReader = x.upR
	x.readUp = func(p []byte) (int, error) { return readFd(&x.upRx, x.up, p) }
	x.upPipe, x.downPipe = newPipe(fd, &l.s.spliced), newPipe(-1, &l.s.spliced)
	if !x.fwdSign.Enabled() {
		// Unsigned blocks take the pipe; a signature covers the data,
		// which must then be read (frame.Sink).
		x.upR.Sink = &x.upPipe
		if x.echo {
			x.ret.pipe = &x.upPipe
		} else {
			x.fwd.pipe = &x.upPipe
		}
	}
	x.tcp.readUp = func() (tcpinfo.Info, error) { return tcpinfo.ReadFd(x.up, &x.tcpBuf) }
	x.traceWake = func() {
		x.later(func() {
			if !x.closed {
				x.processDown(x.downRx.Last)
				x.settle()
			}
		}, -1)
	}
	x.idleUntil = l.s.cfg.Clock.Monotonic() + int64(l.s.cfg.Timeout)
	if err := epollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		// Never registered: the session ends here, once, and an eviction
		// later finds it closed instead of closing a reused descriptor.
		l.s.log.Warn("cannot watch connection", "peer", peerAddr, "err", err)
		x.closed = true
		l.s.settle(adm)
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

// BufferEvicted is the budget giving the buffer of this session, which
// has not sent a valid frame yet, to a newer connection
// (frame.BufferBudget): the session answers overloaded and ends, on the
// loop's thread. The goroutine engine's blocked reads are woken by the
// frame reader itself (a read deadline in the past).
func (x *lsession) BufferEvicted() {
	x.l.post(func() {
		if !x.closed && !x.upStopped && !x.draining {
			x.upstreamEnded(frame.ErrEvicted)
			x.settle()
		}
	})
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
	x.upPipe.close() // before the batches' reset: nothing to keep in step
	x.downPipe.close()
	x.upR.Release()
	if x.downR != nil {
		x.downR.Release()
	}
	x.fwd.reset()
	x.ret.reset()
	x.s.metrics.ConnectionClosed()
	x.s.settle(x.adm) // gone: nothing left to evict
	x.adm.session = nil
	x.release()
}
