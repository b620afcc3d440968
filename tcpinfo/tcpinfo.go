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

func (r *Reader) getsockopt(fd uintptr) {
	size := uint32(unix.SizeofTCPInfo)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&r.info)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		r.err = errno
		return
	}
	r.err = nil
}

// Read returns the connection's current TCP_INFO fields.
func (r *Reader) Read() (frame.TCPInfo, error) {
	if err := r.raw.Control(r.read); err != nil {
		return frame.TCPInfo{}, err
	}
	if r.err != nil {
		return frame.TCPInfo{}, r.err
	}
	return frame.TCPInfo{
		RTTMicros:    r.info.Rtt,
		RTTVarMicros: r.info.Rttvar,
		MinRTTMicros: r.info.Min_rtt,
		TotalRetrans: r.info.Total_retrans,
		SndMSS:       r.info.Snd_mss,
		PMTU:         r.info.Pmtu,
		SndCwnd:      r.info.Snd_cwnd,
	}, nil
}
