package relay

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The epoll engine's thread makes its system calls raw: without telling the
// Go scheduler (no entersyscall/exitsyscall). Those calls are non-blocking
// (reads, writes, epoll_ctl) but for epoll_wait, which blocks while the
// loop's goroutine keeps its P. That is deliberate: on a CPU shared with
// busy processes, a thread returning from a scheduler-visible blocking
// call finds its P handed off (sysmon retakes it after 20 µs–10 ms) and
// wakes another thread to hand it back, and every such hand-off waits for
// the busy CPU once more. Measured with a hop pinned to a CPU shared with
// four busy processes: 1.7 ms median wait through the scheduler's path,
// 0.09 ms raw — a plain blocking C echo waits 0.08 ms (bench/README.md).
//
// A raw epoll_wait looks to the runtime like a goroutine running without
// pause: sysmon sends it the asynchronous preemption signal every 10 ms,
// and each signal wakes the loop's thread on its busy CPU (1.4 ms median
// wait with raw calls alone). A relay process therefore runs with
// GODEBUG=asyncpreemptoff=1 (internal/lowlatency re-executes it so); the
// garbage collector then stops the loop cooperatively when epoll_wait
// returns, which it does at the next frame, deadline, posted task, or
// after maxWaitMillis. Serve keeps a second P for everything else. (A
// scheduler-visible epoll_wait, even bounded below sysmon's 10 ms retake,
// measured 1.8 ms: it is the hand-offs around entersyscall/exitsyscall.)

// runningLoops counts the epoll loops of the process. A loop waits raw
// only when it is the only one (a relay process): several loops in one
// process (tests run whole chains in one) would each hold a P while they
// wait, and starve the rest.
var runningLoops atomic.Int32

// epollWait waits for events: raw while sessions are open (busy is
// true) in the process's only loop, through the scheduler otherwise: an
// idle relay then sleeps without waking 50 times a second, and only the
// first frame of a new connection (a warm-up probe) pays for the
// scheduler's hand-offs.
func epollWait(ep int, events []unix.EpollEvent, msec int, busy bool) (int, error) {
	var r uintptr
	var e unix.Errno
	if busy && runningLoops.Load() == 1 {
		if msec < 0 || msec > maxWaitMillis {
			msec = maxWaitMillis
		}
		r, _, e = unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	} else {
		r, _, e = unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	}
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// maxWaitMillis bounds each raw epoll_wait. Without async preemption the
// garbage collector's stop-the-world waits for the loop to come back from
// epoll_wait; this bounds that pause (an arriving frame ends it sooner) at
// the cost of 50 idle wake-ups a second.
const maxWaitMillis = 20

func epollCtl(ep, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// rawRead reads a non-blocking descriptor once.
func rawRead(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
