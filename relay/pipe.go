package relay

import (
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// pipe moves the data of large stream blocks from one socket to the next
// inside the kernel: splice(2) from the receiving socket into the pipe,
// and from the pipe into the sending socket, page references instead of
// copies. The frame's head and tail (path, records) are still read, checked
// and rewritten in user space (frame.Sink says how); only the block's
// bytes take this way. A session has at most one pipe per direction; it is
// opened by the first block that takes it, from a connection that proved
// itself, and closed with the session. Its capacity beyond the kernel's
// default 64 KiB is counted against the buffer budget by the reader that
// fills it, and it grows only as a read buffer does: with bytes that
// arrived.
//
// All its system calls are raw and non-blocking, made from the epoll
// loop's thread (rawsys.go says why).
type pipe struct {
	r, w int // -1 until opened
	size int
	// src is the socket Take splices from.
	src int
	// failed: the pipe could not be opened, or fell out of step with what
	// the session expects of it; it is never used again.
	failed bool
	// idle: the last Take found nothing to move. A second one in a row,
	// after the loop was woken for the socket, means the pipe is full.
	idle bool
	// spliced counts the bytes spliced out to a socket.
	spliced *atomic.Int64
}

func newPipe(src int, spliced *atomic.Int64) pipe {
	return pipe{r: -1, w: -1, src: src, spliced: spliced}
}

// errPipeOutOfStep is a pipe that does not hold what the session put in:
// the session ends rather than send wrong bytes.
var errPipeOutOfStep = errors.New("splice pipe out of step")

const (
	spliceMove     = 0x1 // SPLICE_F_MOVE
	spliceNonblock = 0x2 // SPLICE_F_NONBLOCK
	spliceMore     = 0x4 // SPLICE_F_MORE
)

// Ready opens the pipe at its first use.
func (p *pipe) Ready() bool {
	if p.r >= 0 {
		return true
	}
	if p.failed || p.src < 0 {
		return false
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		p.failed = true
		return false
	}
	p.r, p.w = fds[0], fds[1]
	size, _, e := unix.RawSyscall(unix.SYS_FCNTL, uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	p.size = 64 << 10
	if e == 0 {
		p.size = int(size)
	}
	return true
}

func (p *pipe) open() bool { return p.r >= 0 && !p.failed }

// close closes the pipe and whatever it still holds.
func (p *pipe) close() {
	if p.r >= 0 {
		unix.Close(p.r)
		unix.Close(p.w)
	}
	p.r, p.w, p.src = -1, -1, -1
}

// Take splices up to n of the source socket's bytes into the pipe.
// Splice moves less than asked, or says "try again", both when the socket
// has nothing more and when the pipe has no room: after a short move the
// socket's queue tells which (the pipe full with bytes waiting: it must
// grow, or the block goes on the ordinary way); after "try again" that
// repeats once the loop was woken for the socket (level-triggered: it has
// bytes), the pipe was full.
func (p *pipe) Take(n int) (int, error) {
	if !p.open() {
		return 0, errPipeOutOfStep
	}
	for {
		m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(p.src), 0, uintptr(p.w), 0, uintptr(n), spliceMove|spliceNonblock)
		switch e {
		case 0:
			p.idle = false
			switch {
			case m == 0:
				return 0, io.EOF
			case int(m) < n && p.srcHasData():
				return int(m), frame.ErrSinkFull
			}
			return int(m), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if p.idle && p.srcHasData() {
				p.idle = false
				return 0, frame.ErrSinkFull
			}
			p.idle = true
			return 0, errAgain
		default:
			return 0, e
		}
	}
}

// srcHasData reports whether the source socket has bytes waiting.
func (p *pipe) srcHasData() bool {
	var n int32
	_, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(p.src), unix.SIOCINQ, uintptr(unsafe.Pointer(&n)))
	return e == 0 && n > 0
}

// Put copies b into the pipe.
func (p *pipe) Put(b []byte) (int, error) {
	if !p.open() || len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(p.w), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		default:
			return 0, e
		}
	}
}

// Drop discards n bytes from the front of the pipe.
func (p *pipe) Drop(n int) error {
	if !p.open() {
		return nil // closed: nothing to keep in step
	}
	null := devNull()
	for n > 0 {
		var m uintptr
		var e unix.Errno
		if null >= 0 {
			m, _, e = unix.RawSyscall6(unix.SYS_SPLICE, uintptr(p.r), 0, uintptr(null), 0, uintptr(n), spliceMove|spliceNonblock)
		} else {
			var buf [4096]byte
			k, err := rawRead(p.r, buf[:min(n, len(buf))])
			m = uintptr(max(k, 0))
			if errno, ok := err.(unix.Errno); ok {
				e = errno
			}
		}
		switch {
		case e == unix.EINTR:
			continue
		case e != 0 || m == 0:
			p.failed = true
			return errPipeOutOfStep
		}
		n -= int(m)
	}
	return nil
}

// out splices up to n bytes from the pipe into the socket fd; more says
// that the frame goes on after them (its tail), so that the kernel fills
// segments instead of pushing a short one.
func (p *pipe) out(fd, n int) (int, error) {
	if !p.open() {
		return 0, errPipeOutOfStep
	}
	for {
		m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(p.r), 0, uintptr(fd), 0, uintptr(n), spliceMove|spliceNonblock|spliceMore)
		switch e {
		case 0:
			if m == 0 {
				p.failed = true
				return 0, errPipeOutOfStep
			}
			p.spliced.Add(int64(m))
			return int(m), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, errAgain
		default:
			return 0, e
		}
	}
}

// Size is the pipe's capacity in bytes.
func (p *pipe) Size() int { return p.size }

// Grow sets the pipe's capacity to size bytes, within the system's
// pipe-max-size (also for a privileged process).
func (p *pipe) Grow(size int) (int, error) {
	if !p.open() {
		return p.size, errPipeOutOfStep
	}
	size = min(size, pipeMaxSize())
	if size <= p.size {
		return p.size, unix.EPERM
	}
	got, _, e := unix.RawSyscall(unix.SYS_FCNTL, uintptr(p.w), unix.F_SETPIPE_SZ, uintptr(size))
	if e != 0 {
		return p.size, e
	}
	p.size = int(got)
	return p.size, nil
}

var (
	nullOnce sync.Once
	nullFd   = -1
	maxOnce  sync.Once
	maxPipe  = 1 << 20
)

// devNull is a descriptor of /dev/null to splice discarded bytes into; -1
// when it cannot be opened (Drop then reads them).
func devNull() int {
	nullOnce.Do(func() {
		if fd, err := unix.Open(os.DevNull, unix.O_WRONLY|unix.O_CLOEXEC, 0); err == nil {
			nullFd = fd
		}
	})
	return nullFd
}

// pipeMaxSize is /proc/sys/fs/pipe-max-size, the largest pipe an
// unprivileged process may ask for (1 MiB unless an administrator says
// otherwise).
func pipeMaxSize() int {
	maxOnce.Do(func() {
		if b, err := os.ReadFile("/proc/sys/fs/pipe-max-size"); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
				maxPipe = n
			}
		}
	})
	return maxPipe
}
