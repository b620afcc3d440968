package relay

import (
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
)

// The epoll engine connects to an address itself: a non-blocking connect
// whose completion the loop sees like any other event. A goroutine's dial
// would wait for a P the loop may hold (GOMAXPROCS 1 on a relay pinned to
// one CPU), and its connect time would hold that wait.

// sockaddrOf is host:port as a socket address when host is an IP address;
// nil for a name (resolved by a goroutine's dial) or anything else.
func sockaddrOf(address string) unix.Sockaddr {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return nil
	}
	ip, zone, _ := cutZone(host)
	addr := net.ParseIP(ip)
	switch {
	case addr == nil:
		return nil
	case addr.To4() != nil:
		sa := &unix.SockaddrInet4{Port: p}
		copy(sa.Addr[:], addr.To4())
		return sa
	default:
		sa := &unix.SockaddrInet6{Port: p}
		copy(sa.Addr[:], addr.To16())
		if zone != "" {
			ifi, err := net.InterfaceByName(zone)
			if err != nil {
				return nil
			}
			sa.ZoneId = uint32(ifi.Index)
		}
		return sa
	}
}

func cutZone(host string) (ip, zone string, ok bool) {
	for i := 0; i < len(host); i++ {
		if host[i] == '%' {
			return host[:i], host[i+1:], true
		}
	}
	return host, "", false
}

// connect starts the downstream connect; dialDone follows.
func (x *lsession) connect(kind frame.Kind, limit time.Duration) {
	s := x.s
	family := unix.AF_INET
	if _, ok := s.downAddr.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		x.connectFailedWith(kind, os.NewSyscallError("socket", err))
		return
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = rxstamp.Enable(fd)
	x.connStart, x.connKind = x.now(), kind
	err = unix.Connect(fd, s.downAddr)
	switch err {
	case nil:
		// Done at once (loopback can be): finish from the loop's inbox,
		// not from inside the processing that asked for the dial.
		connect := max(x.now()-x.connStart, 1)
		x.later(func() { x.dialDone(fd, connect, kind, nil) }, fd)
		return
	case unix.EINPROGRESS:
	default:
		unix.Close(fd)
		x.connectFailedWith(kind, x.dialError(err))
		return
	}
	if err := epollCtl(x.l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		x.connectFailedWith(kind, os.NewSyscallError("epoll_ctl", err))
		return
	}
	x.connFd, x.connUntil = fd, x.connStart+int64(limit)
	x.l.byFd[fd] = x
	x.schedule()
}

// connectReady completes the connect when its socket is writable (or in
// error).
func (x *lsession) connectReady() {
	fd := x.connFd
	serr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && serr != 0 {
		err = unix.Errno(serr)
	}
	connect := max(x.now()-x.connStart, 1)
	if err != nil {
		x.connectFailed(x.dialError(err))
		return
	}
	// Hand the socket over as dialDone expects a fresh one: out of epoll.
	delete(x.l.byFd, fd)
	_ = epollCtl(x.l.ep, unix.EPOLL_CTL_DEL, fd, &unix.EpollEvent{})
	x.connFd = -1
	x.dialDone(fd, connect, x.connKind, nil)
}

// connectFailed ends a connect under way with err.
func (x *lsession) connectFailed(err error) {
	x.dropConnect()
	x.connectFailedWith(x.connKind, err)
}

func (x *lsession) connectFailedWith(kind frame.Kind, err error) {
	x.later(func() { x.dialDone(-1, 0, kind, err) }, -1)
}

// later runs fn from the loop's inbox; fd is closed if the loop stopped.
func (x *lsession) later(fn func(), fd int) {
	if !x.l.post(fn) && fd >= 0 {
		unix.Close(fd)
	}
}

// dropConnect closes a connect under way.
func (x *lsession) dropConnect() {
	if x.connFd < 0 {
		return
	}
	delete(x.l.byFd, x.connFd)
	unix.Close(x.connFd) // closing removes it from epoll
	x.connFd = -1
}

// dialError words a failed connect as Go's dialer does.
func (x *lsession) dialError(err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: dialAddr(x.s.cfg.ForwardTo), Err: os.NewSyscallError("connect", err)}
}

type dialAddr string

func (a dialAddr) Network() string { return "tcp" }
func (a dialAddr) String() string  { return string(a) }
