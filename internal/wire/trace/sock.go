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

// packet is one read: its bytes, who sent it, and the kernel's receive
// time (CLOCK_REALTIME ns, 0 when there was none).
type packet struct {
	n        int
	from     netip.Addr
	kernelNs int64
	// ee is the extended error of an error-queue read.
	ee    extErr
	hasEE bool
}

// read waits for one message (from the error queue with errQueue) into buf
// and oob. It returns an error only when the socket was closed or broke.
func (s *sock) read(buf, oob []byte, errQueue bool) (packet, error) {
	var p packet
	var rerr error
	flags := 0
	if errQueue {
		flags = unix.MSG_ERRQUEUE
	}
	err := s.rc.Read(func(fd uintptr) bool {
		n, oobn, _, from, err := unix.Recvmsg(int(fd), buf, oob, flags)
		if err == unix.EAGAIN || err == unix.EINTR {
			return false
		}
		if err != nil {
			rerr = err
			return true
		}
		p.n = n
		p.from = addrOf(from)
		p.kernelNs, p.ee, p.hasEE = parseControl(oob[:oobn])
		return true
	})
	if err != nil {
		return p, err
	}
	return p, rerr
}

// addrOf is the address of a socket address (zero for others).
func addrOf(sa unix.Sockaddr) netip.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr)
	case *unix.SockaddrInet6:
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
