// Package rxstamp reads the kernel's software receive timestamp of what a
// socket read returns (SO_TIMESTAMPNS, the control message of recvmsg).
//
// The time between the kernel receiving a frame and the hop reading it is
// the hop's wait: the time it waited to be scheduled, or for its loop to
// come round. Stamping request-in and reply-in at kernel receipt puts that
// wait inside the hop's residence, where it belongs, instead of inside the
// neighbouring segments: a loaded hop is then charged to itself.
//
// Kernel stamps are CLOCK_REALTIME. A Stamp differences the kernel's stamp
// against a realtime reading taken right after the read, and moves it onto
// the caller's monotonic clock; a pair that straddles a step of the
// realtime clock (a negative wait, or one longer than the operation's
// timeout) is dropped and the read time is used instead.
//
// Layering (internal/architecture_test.go): floor 1; it imports only
// internal/host and internal/wire, never internal/config, the source end,
// relay or anything above.
package rxstamp

import (
	"io"
	"net"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Enable turns on kernel receive timestamps for a socket descriptor.
func Enable(fd int) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
}

// Stamp says when the kernel received the data of a read.
type Stamp struct {
	// At is kernel receipt on the caller's monotonic clock (the read time
	// when Kernel is false).
	At int64
	// Wait is kernel receipt → the read returned.
	Wait time.Duration
	// Kernel: the kernel stamped the data and the stamp passed the
	// clock-step checks.
	Kernel bool
}

// Clocks convert kernel stamps to the caller's monotonic clock.
type Clocks struct {
	// Mono is the caller's monotonic clock in nanoseconds.
	Mono func() int64
	// Real is CLOCK_REALTIME in Unix nanoseconds; nil uses the system's.
	// Tests step it to prove that a clock step never yields a negative or
	// huge wait.
	Real func() int64
	// MaxWait is the longest believable wait, the operation's timeout:
	// anything longer is a clock step.
	MaxWait time.Duration
}

func systemReal() int64 { return time.Now().UnixNano() }

// stamp turns the kernel's realtime stamp (0: none) into a Stamp, reading
// the clocks now, right after the read: the realtime clock first, so that
// a pause between the two readings can only make the stamp later, never
// earlier than the receipt (a segment then looks longer by it, never
// negative).
func (c *Clocks) stamp(kernelNs int64) Stamp {
	if kernelNs == 0 {
		return Stamp{At: c.Mono()}
	}
	real := c.Real
	if real == nil {
		real = systemReal
	}
	wait := time.Duration(real() - kernelNs)
	mono := c.Mono()
	if wait < 0 || wait > c.MaxWait {
		return Stamp{At: mono}
	}
	return Stamp{At: mono - int64(wait), Wait: wait, Kernel: true}
}

// oobLen holds one SCM_TIMESTAMPNS control message with room to spare.
const oobLen = 64

// FdReader reads a non-blocking socket descriptor with recvmsg and keeps
// the stamp of the latest read. It does not allocate, and it makes the
// system call raw (the descriptor never blocks): event loops call it per
// frame, and their threads stay out of the Go scheduler's hand-offs.
type FdReader struct {
	Clocks
	// Last is the stamp of the latest read that returned data.
	Last Stamp
	msg  unix.Msghdr
	iov  unix.Iovec
	oob  [oobLen]byte
}

// ErrAgain is a non-blocking socket's "nothing to read now".
var ErrAgain = unix.EAGAIN

// Read reads into p once. It returns unix.EAGAIN when the socket has
// nothing, (0, nil) never for a non-empty p: end of stream is n == 0 with
// a nil error, as read(2) reports it.
func (r *FdReader) Read(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.iov.Base = &p[0]
	r.iov.SetLen(len(p))
	r.msg.Iov = &r.iov
	r.msg.SetIovlen(1)
	r.msg.Control = &r.oob[0]
	r.msg.SetControllen(oobLen)
	r.msg.Flags = 0
	n, err := r.recv(fd)
	// The reader keeps no pointer into p: a buffer its owner released
	// (frame.Reader.Release) must not stay allocated for as long as the
	// connection lives.
	r.iov.Base = nil
	return n, err
}

func (r *FdReader) recv(fd int) (int, error) {
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.msg)), 0)
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		default:
			return 0, errno
		}
		if n > 0 {
			r.Last = r.stamp(r.kernelStamp())
		}
		return int(n), nil
	}
}

// kernelStamp finds SCM_TIMESTAMPNS in the control data of the latest
// recvmsg; 0 when there is none (not enabled yet, or truncated).
func (r *FdReader) kernelStamp() int64 {
	if r.msg.Flags&unix.MSG_CTRUNC != 0 {
		return 0
	}
	n := int(r.msg.Controllen)
	off := 0
	for off+unix.SizeofCmsghdr <= n {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&r.oob[off]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || off+l > n {
			return 0
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SO_TIMESTAMPNS && l >= unix.SizeofCmsghdr+int(unsafe.Sizeof(unix.Timespec{})) {
			ts := (*unix.Timespec)(unsafe.Pointer(&r.oob[off+unix.SizeofCmsghdr]))
			return ts.Nano()
		}
		off += cmsgAlign(l)
	}
	return 0
}

func cmsgAlign(l int) int {
	const align = int(unsafe.Sizeof(uintptr(0)))
	return (l + align - 1) &^ (align - 1)
}

// Conn is a TCP connection whose reads go through recvmsg (still through
// Go's poller, with its deadlines), so that Last tells when the kernel
// received what the latest read returned. TLS layers over it unchanged.
type Conn struct {
	net.Conn
	tcp    *net.TCPConn
	raw    syscall.RawConn
	rd     FdReader
	p      []byte
	n      int
	err    error
	readFn func(fd uintptr) bool
	// the write in progress, one at a time: what is left of its buffers,
	// the bytes written, and the iovecs built from them (kept, so that a
	// write allocates nothing)
	wmu      sync.Mutex
	one      [1][]byte
	wbufs    [][]byte
	wn       int64
	werr     syscall.Errno
	iov      []unix.Iovec
	writevFn func(fd uintptr) bool
}

// Wrap returns c reading with kernel stamps when it is a TCP connection
// that accepts SO_TIMESTAMPNS; otherwise c itself, for which Of returns
// nil and callers stamp with the read time.
func Wrap(c net.Conn, clocks Clocks) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = Enable(int(fd)) }); err != nil || serr != nil {
		return c
	}
	x := &Conn{Conn: tc, tcp: tc, raw: raw}
	x.rd.Clocks = clocks
	x.readFn = x.read
	x.writevFn = x.writev
	return x
}

func (c *Conn) read(fd uintptr) bool {
	c.n, c.err = c.rd.Read(int(fd), c.p)
	return c.err != unix.EAGAIN
}

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.p = p
	if err := c.raw.Read(c.readFn); err != nil {
		c.p = nil
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	c.p = nil
	n, err := c.n, c.err
	if err != nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write implements net.Conn with a raw write under Go's poller (its
// deadlines and waits stay); see Writev.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.one[0] = p
	n, err := c.writeLocked(c.one[:], "write")
	c.one[0] = nil
	return int(n), err
}

// maxIovecs is the kernel's limit of buffers per writev (UIO_MAXIOV).
const maxIovecs = 1024

// Writev writes every buffer in order, with as few raw writev(2) calls as
// the socket allows, under Go's poller (deadlines and waits stay). Like
// Write, it keeps the runtime's syscall bookkeeping out of the way: a
// writev through net.Buffers wakes Go's monitor thread whenever the
// process comes out of idle, and on a CPU shared with busy processes that
// thread's wake-up preempts the relay and delays the next frame by a
// whole scheduler slice. bufs is consumed.
func (c *Conn) Writev(bufs [][]byte) (int64, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(bufs, "writev")
}

func (c *Conn) writeLocked(bufs [][]byte, op string) (int64, error) {
	c.wbufs, c.wn, c.werr = bufs, 0, 0
	err := c.raw.Write(c.writevFn)
	n, errno := c.wn, c.werr
	c.wbufs = nil
	clear(c.iov[:cap(c.iov)]) // no pointer into the buffers written stays behind, of any round
	switch {
	case err != nil:
		return n, &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case errno != 0:
		return n, &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errno}
	}
	return n, nil
}

func (c *Conn) writev(fd uintptr) bool {
	for {
		for len(c.wbufs) > 0 && len(c.wbufs[0]) == 0 {
			c.wbufs = c.wbufs[1:]
		}
		if len(c.wbufs) == 0 {
			return true
		}
		c.iov = c.iov[:0]
		for _, b := range c.wbufs {
			if len(c.iov) == maxIovecs {
				break
			}
			if len(b) == 0 {
				continue
			}
			v := unix.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			c.iov = append(c.iov, v)
		}
		m, _, errno := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&c.iov[0])), uintptr(len(c.iov)))
		switch errno {
		case 0:
			c.wn += int64(m)
			c.consume(int(m))
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.werr = errno
			return true
		}
	}
}

// consume drops n written bytes from the front of the pending buffers.
func (c *Conn) consume(n int) {
	for n > 0 && len(c.wbufs) > 0 {
		if n < len(c.wbufs[0]) {
			c.wbufs[0] = c.wbufs[0][n:]
			return
		}
		n -= len(c.wbufs[0])
		c.wbufs = c.wbufs[1:]
	}
}

// Unwrap is the TCP connection under the stamping reads.
func (c *Conn) Unwrap() *net.TCPConn { return c.tcp }

// SyscallConn gives the descriptor, for TCP_INFO.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.raw, nil }

// CloseWrite half-closes the connection.
func (c *Conn) CloseWrite() error { return c.tcp.CloseWrite() }

// Last is the stamp of the latest read that returned data.
func (c *Conn) Last() Stamp { return c.rd.Last }

// Of finds the stamping connection under c (a *Conn, or a *tls.Conn over
// one); nil when c does not stamp.
func Of(c net.Conn) *Conn {
	for i := 0; i < 4 && c != nil; i++ {
		switch x := c.(type) {
		case *Conn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}
