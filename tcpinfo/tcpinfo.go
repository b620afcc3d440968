// Package tcpinfo reads the kernel's view of a TCP connection (TCP_INFO),
// which tells a segment's network rtt apart from the time spent in the
// hops' user space, and exposes retransmissions and path MTU.
package tcpinfo

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/frame"
)

// ErrUnsupported is returned for connections that are not TCP sockets.
var ErrUnsupported = errors.New("tcpinfo: not a TCP socket")

// Reader reads TCP_INFO of one connection repeatedly without allocating:
// the kernel writes into the Reader's own buffer.
type Reader struct {
	raw  syscall.RawConn
	info unix.TCPInfo
	err  error
	read func(fd uintptr)
}

// NewReader prepares reads of conn's TCP_INFO; conn may be a *net.TCPConn
// or a *tls.Conn over one.
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
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(into)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// Read returns the connection's current TCP_INFO fields.
func (r *Reader) Read() (frame.TCPInfo, error) {
	if err := r.raw.Control(r.read); err != nil {
		return frame.TCPInfo{}, err
	}
	if r.err != nil {
		return frame.TCPInfo{}, r.err
	}
	return convert(&r.info), nil
}

// ReadFd reads TCP_INFO of a socket descriptor into buf, for event loops
// that own their descriptors.
func ReadFd(fd int, buf *unix.TCPInfo) (frame.TCPInfo, error) {
	if err := getsockopt(fd, buf); err != nil {
		return frame.TCPInfo{}, err
	}
	return convert(buf), nil
}

func convert(info *unix.TCPInfo) frame.TCPInfo {
	return frame.TCPInfo{
		RTTMicros:    info.Rtt,
		RTTVarMicros: info.Rttvar,
		MinRTTMicros: info.Min_rtt,
		TotalRetrans: info.Total_retrans,
		SndMSS:       info.Snd_mss,
		PMTU:         info.Pmtu,
		SndCwnd:      info.Snd_cwnd,
	}
}
