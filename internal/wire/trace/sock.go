package trace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sock is a non-blocking socket under Go's poller: reads wait without a
// thread, and closing it ends a read in progress.
type sock struct {
	fd int
	f  *os.File
	rc syscall.RawConn
}

// openSock opens a socket on the calling thread (so in its network
// namespace) and hands it to the poller.
func openSock(domain, typ, proto int, name string) (*sock, error) {
	fd, err := unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &sock{fd: fd, f: f, rc: rc}, nil
}

func (s *sock) close() {
	if s != nil {
		s.f.Close()
	}
}

// setInt sets an integer socket option, naming it in the error.
func (s *sock) setInt(level, opt, value int, what string) error {
	if err := unix.SetsockoptInt(s.fd, level, opt, value); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// packet is one read: its length, who sent it, and the kernel's receive
// time (CLOCK_REALTIME ns, 0 when there was none).
type packet struct {
	n        int
	from     netip.Addr
	kernelNs int64
	// ee is the extended error of an error-queue read.
	ee    extErr
	hasEE bool
}

// reader reads one socket with recvmsg into its own buffers, without
// allocating: a flood of packets costs no memory, only the time to drop
// them.
type reader struct {
	s    *sock
	buf  []byte
	oob  []byte
	msg  unix.Msghdr
	iov  unix.Iovec
	from unix.RawSockaddrAny
	// flags are tried in turn on every attempt (the error queue, then the
	// socket's data); got is the index of the flags that read something.
	flags []int
	got   int
	n     int
	err   error
	fn    func(fd uintptr) bool
}

func newReader(s *sock, size int, flags ...int) *reader {
	r := &reader{s: s, buf: make([]byte, size), oob: make([]byte, 512), flags: flags}
	r.fn = r.attempt
	return r
}

// attempt is one round of recvmsg calls under the poller: false when
// nothing is there yet.
func (r *reader) attempt(fd uintptr) bool {
	for i, flags := range r.flags {
		r.iov.Base = &r.buf[0]
		r.iov.SetLen(len(r.buf))
		r.msg = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&r.from)), Namelen: unix.SizeofSockaddrAny,
			Iov: &r.iov, Control: &r.oob[0]}
		r.msg.SetIovlen(1)
		r.msg.SetControllen(len(r.oob))
		n, _, errno := unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&r.msg)), uintptr(flags|unix.MSG_DONTWAIT))
		switch {
		case errno == unix.EAGAIN || errno == unix.EINTR:
			continue
		case errno != 0 && i > 0 && pendingICMP(errno):
			// A pending ICMP error reported by a data read: the error
			// queue holds its details.
			continue
		case errno != 0:
			r.err = errno
			return true
		}
		r.n, r.got, r.err = int(n), i, nil
		return true
	}
	return false
}

// read waits for one message. It returns an error only when the socket
// was closed or broke; the data is r.buf[:p.n].
func (r *reader) read() (packet, error) {
	if err := r.s.rc.Read(r.fn); err != nil {
		return packet{}, err
	}
	if r.err != nil {
		return packet{}, r.err
	}
	p := packet{n: r.n, from: rawAddr(&r.from)}
	p.kernelNs, p.ee, p.hasEE = parseControl(r.oob[:r.msg.Controllen])
	return p, nil
}

// rawAddr is the address of a raw socket address (zero for others).
func rawAddr(sa *unix.RawSockaddrAny) netip.Addr {
	switch sa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrFrom4(a.Addr)
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrFrom16(a.Addr).Unmap()
	}
	return netip.Addr{}
}

// sockaddr is the socket address of ap (port 0 for raw sockets).
func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	a := ap.Addr()
	if a.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	if a.Zone() != "" {
		if ifi, err := zoneIndex(a.Zone()); err == nil {
			sa.ZoneId = ifi
		}
	}
	return sa
}

// extErr is struct sock_extended_err and its offender (linux/errqueue.h):
// an ICMP error the kernel matched to a socket with IP_RECVERR.
type extErr struct {
	errno    uint32
	origin   uint8
	icmpType uint8
	code     uint8
	offender netip.Addr
}

const (
	eeOriginICMP  = 2
	eeOriginICMP6 = 3
	sizeofExtErr  = 16
)

// parseControl reads the control messages of one recvmsg: the kernel's
// receive timestamp and an extended error. It never reads past b.
func parseControl(b []byte) (kernelNs int64, ee extErr, hasEE bool) {
	for len(b) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(b) {
			return kernelNs, ee, hasEE
		}
		data := b[unix.SizeofCmsghdr:l]
		switch {
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_TIMESTAMPNS && len(data) >= 16:
			sec := int64(binary.NativeEndian.Uint64(data[0:]))
			nsec := int64(binary.NativeEndian.Uint64(data[8:]))
			kernelNs = sec*1e9 + nsec
		case (h.Level == unix.SOL_IP && h.Type == unix.IP_RECVERR) ||
			(h.Level == unix.SOL_IPV6 && h.Type == unix.IPV6_RECVERR):
			ee, hasEE = parseExtErr(data)
		}
		next := cmsgAlign(l)
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return kernelNs, ee, hasEE
}

// parseExtErr reads sock_extended_err followed by the offender's
// sockaddr (SO_EE_OFFENDER).
func parseExtErr(d []byte) (extErr, bool) {
	if len(d) < sizeofExtErr {
		return extErr{}, false
	}
	e := extErr{
		errno:    binary.NativeEndian.Uint32(d[0:]),
		origin:   d[4],
		icmpType: d[5],
		code:     d[6],
	}
	off := d[sizeofExtErr:]
	if len(off) >= 2 {
		switch binary.NativeEndian.Uint16(off[0:]) {
		case unix.AF_INET:
			if len(off) >= 8 {
				e.offender = netip.AddrFrom4([4]byte(off[4:8]))
			}
		case unix.AF_INET6:
			if len(off) >= 24 {
				e.offender = netip.AddrFrom16([16]byte(off[8:24])).Unmap()
			}
		}
	}
	return e, true
}

func cmsgAlign(l int) int {
	const align = int(unsafe.Sizeof(uintptr(0)))
	return (l + align - 1) &^ (align - 1)
}

// isPermission tells a missing privilege from other failures.
func isPermission(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
}
