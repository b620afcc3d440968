// Package tcpinfo reads the kernel's view of a TCP connection (TCP_INFO),
// which tells a segment's network rtt apart from the time spent in the
// hops' user space, and exposes retransmissions and path MTU.
//
// Layering (internal/architecture_test.go): floor 1; it imports only
// internal/host and internal/wire, never internal/config, the source end,
// relay or anything above.
package tcpinfo

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnsupported is returned for connections that are not TCP sockets.
var ErrUnsupported = errors.New("tcpinfo: not a TCP socket")

// Info is the subset of TCP_INFO that explains a segment's delay:
// smoothed rtt and its variance, the lowest rtt seen, retransmissions, and
// the sizes that reveal an MTU black hole. It travels in hop records.
type Info struct {
	RTTMicros    uint32
	RTTVarMicros uint32
	MinRTTMicros uint32
	TotalRetrans uint32
	SndMSS       uint32
	PMTU         uint32
	SndCwnd      uint32
}

// Reader reads TCP_INFO of one connection repeatedly without allocating:
// the kernel writes into the Reader's own buffer.
type Reader struct {
	raw  syscall.RawConn
	info unix.TCPInfo
	err  error
	read func(fd uintptr)
}

// NewReader prepares reads of conn's TCP_INFO; conn may be a *net.TCPConn,
// a *tls.Conn over one, or any connection that gives its syscall.Conn.
func NewReader(conn net.Conn) (*Reader, error) {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, ErrUnsupported
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &Reader{raw: raw}
	r.read = r.getsockopt
	return r, nil
}

func (r *Reader) getsockopt(fd uintptr) { r.err = getsockopt(int(fd), &r.info) }

func getsockopt(fd int, into *unix.TCPInfo) error {
	size := uint32(unix.SizeofTCPInfo)
	// getsockopt(TCP_INFO) never blocks: raw, like the event loop's calls.
	_, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(into)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// Read returns the connection's current TCP_INFO fields.
func (r *Reader) Read() (Info, error) {
	if err := r.raw.Control(r.read); err != nil {
		return Info{}, err
	}
	if r.err != nil {
		return Info{}, r.err
	}
	return convert(&r.info), nil
}

// ReadFd reads TCP_INFO of a socket descriptor into buf, for event loops
// that own their descriptors.
func ReadFd(fd int, buf *unix.TCPInfo) (Info, error) {
	if err := getsockopt(fd, buf); err != nil {
		return Info{}, err
	}
	return convert(buf), nil
}

func convert(info *unix.TCPInfo) Info {
	return Info{
		RTTMicros:    info.Rtt,
		RTTVarMicros: info.Rttvar,
		MinRTTMicros: info.Min_rtt,
		TotalRetrans: info.Total_retrans,
		SndMSS:       info.Snd_mss,
		PMTU:         info.Pmtu,
		SndCwnd:      info.Snd_cwnd,
	}
}
