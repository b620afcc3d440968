package trace

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Conn is the connection a trace follows: a *net.TCPConn (the inner
// connection of a *tls.Conn: tls.Conn.NetConn()), or FD(fd) for a socket
// an event loop owns. The trace only reads its addresses and options.
type Conn interface {
	SyscallConn() (syscall.RawConn, error)
}

// ConnOf is the TCP connection under c (a *tls.Conn, a kernel-stamping
// wrapper: anything with NetConn, four layers at most) that a trace
// inspects; nil when there is none.
func ConnOf(c net.Conn) Conn {
	for range 4 {
		switch x := c.(type) {
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		case syscall.Conn:
			return x
		default:
			return nil
		}
	}
	return nil
}

// FD is a Conn for a socket descriptor the caller owns and keeps open for
// the duration of the trace.
func FD(fd int) Conn { return fdConn(fd) }

type fdConn int

func (c fdConn) SyscallConn() (syscall.RawConn, error) { return fdRaw(c), nil }

type fdRaw int

func (r fdRaw) Control(f func(fd uintptr)) error { f(uintptr(r)); return nil }
func (r fdRaw) Read(func(fd uintptr) bool) error {
	return errors.New("trace: a descriptor is read by its owner")
}
func (r fdRaw) Write(func(fd uintptr) bool) error {
	return errors.New("trace: a descriptor is written by its owner")
}

// tcpiOptSACK is TCPI_OPT_SACK of tcpi_options (linux/tcp.h).
const tcpiOptSACK = 2

// connInfo is what a trace needs to know of the connection.
type connInfo struct {
	local, remote netip.AddrPort
	sack          bool
	mark          uint32
	tos           int
}

func (c connInfo) v4() bool { return c.remote.Addr().Is4() }

// ErrNotTCP is returned for a Conn that is not an established TCP
// connection over IPv4 or IPv6.
var ErrNotTCP = errors.New("not an established TCP connection")

// inspect reads the connection's addresses, state and the options its
// probes copy (mark, TOS).
func inspect(c Conn) (connInfo, error) {
	if c == nil {
		return connInfo{}, ErrNotTCP
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return connInfo{}, fmt.Errorf("%w: %w", ErrNotTCP, err)
	}
	var info connInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = inspectFd(int(fd)) }); err != nil {
		return connInfo{}, fmt.Errorf("%w: %w", ErrNotTCP, err)
	}
	return info, ierr
}

func inspectFd(fd int) (connInfo, error) {
	var info connInfo
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_STREAM {
		return info, fmt.Errorf("%w: socket type %d (%v)", ErrNotTCP, typ, err)
	}
	if p, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || p != unix.IPPROTO_TCP {
		return info, fmt.Errorf("%w: protocol %d (%v)", ErrNotTCP, p, err)
	}
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return info, fmt.Errorf("%w: TCP_INFO: %w", ErrNotTCP, err)
	}
	if ti.State != unix.BPF_TCP_ESTABLISHED {
		return info, fmt.Errorf("%w: state %d", ErrNotTCP, ti.State)
	}
	info.sack = ti.Options&tcpiOptSACK != 0
	la, err := unix.Getsockname(fd)
	if err != nil {
		return info, fmt.Errorf("%w: local address: %w", ErrNotTCP, err)
	}
	ra, err := unix.Getpeername(fd)
	if err != nil {
		return info, fmt.Errorf("%w: peer address: %w", ErrNotTCP, err)
	}
	info.local, info.remote = addrPortOf(la), addrPortOf(ra)
	if !info.local.IsValid() || !info.remote.IsValid() || info.local.Addr().Is4() != info.remote.Addr().Is4() {
		return info, fmt.Errorf("%w: addresses %v -> %v", ErrNotTCP, info.local, info.remote)
	}
	if m, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); err == nil {
		info.mark = uint32(m)
	}
	// A dual-stack socket talking IPv4 keeps its TOS in the IPv4 option.
	if tos, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS); err == nil && info.v4() {
		info.tos = tos
	} else if tc, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TCLASS); err == nil && !info.v4() {
		info.tos = tc
	}
	return info, nil
}

// addrPortOf is the address and port of a socket address, IPv4-mapped
// IPv6 addresses unmapped (a dual-stack socket talking IPv4 is traced
// over IPv4).
func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		addr := netip.AddrFrom16(a.Addr)
		if addr.Is4In6() {
			return netip.AddrPortFrom(addr.Unmap(), uint16(a.Port))
		}
		if a.ZoneId != 0 {
			addr = addr.WithZone(strconv.Itoa(int(a.ZoneId)))
		}
		return netip.AddrPortFrom(addr, uint16(a.Port))
	}
	return netip.AddrPort{}
}

// zoneIndex is the interface index of an IPv6 zone (a name or a number).
func zoneIndex(zone string) (uint32, error) {
	if n, err := strconv.Atoi(zone); err == nil {
		return uint32(n), nil
	}
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, err
	}
	return uint32(ifi.Index), nil
}
