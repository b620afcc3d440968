package relay

import (
	"errors"
	"io"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
)

// Reading: frames from the upstream and the downstream, the end of the
// upstream side, and the drain after a session's last answer.

// readFd reads a socket once with recvmsg (keeping the kernel's stamp),
// mapping "nothing now" to errAgain and end of stream to io.EOF.
func readFd(rx *rxstamp.FdReader, fd int, p []byte) (int, error) {
	n, err := rx.Read(fd, p)
	switch {
	case err == unix.EAGAIN:
		return 0, errAgain
	case err != nil:
		return 0, err
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// readTime is when the read that returned rx's data was made: the
// clock reading the stamp was taken with, one less to take.
func readTime(rx rxstamp.Stamp) int64 { return rx.At + int64(rx.Wait) }

// readsPerEvent bounds the reads one readiness event gets, so that a
// large frame (read header first, then body) or a fast stream does not go
// back through epoll_wait for every read, and no session starves others.
const readsPerEvent = 8

func (x *lsession) readUpstream() {
	for i := 0; i < readsPerEvent; i++ {
		if !x.canReadUp() {
			return
		}
		_, err := x.upR.ReadOnce(x.readUp)
		if err == errAgain {
			return
		}
		if err != nil {
			x.upstreamEnded(x.upR.EndError(err))
			return
		}
		if x.upR.Complete() {
			// The next frame's --timeout starts when one is complete:
			// bytes of a partial frame never extend it, so a trickle
			// cannot keep a connection (and its slot) open.
			x.idleUntil = readTime(x.upRx.Last) + int64(x.s.cfg.Timeout)
			x.processUp()
		}
		if x.upR.Drained() {
			return
		}
	}
}

// upstreamEnded handles the end of the upstream side.
func (x *lsession) upstreamEnded(err error) {
	switch r := peer.Classify(err); {
	case errors.Is(err, io.EOF), r == peer.ReasonTimeout, r == peer.ReasonReset:
		x.upEOF = true
		if r == peer.ReasonReset {
			x.close()
			return
		}
		if x.down >= 0 {
			_ = unix.Shutdown(x.down, unix.SHUT_WR)
		}
	case r == peer.ReasonBadFrame || r == peer.ReasonClosed || r == peer.ReasonTooLarge || r == peer.ReasonOverloaded:
		x.answerFatal(x.reject(err))
	default:
		x.s.log.Debug("upstream read failed", "peer", x.upPeer, "err", err)
		x.close()
	}
}

// answerFatal queues an answer after which the session ends: no more
// upstream input is read, and the session closes once the answer is out.
func (x *lsession) answerFatal(ans *localAnswer) {
	x.upStopped = true
	rx := rxstamp.Stamp{At: x.now()}
	if x.echo {
		x.echoes = append(x.echoes, echoReply{e: newEntry(rx), local: ans})
		x.closeAfter = true
		x.flushEcho()
		return
	}
	x.held = append(x.held, heldRequest{e: newEntry(rx), ans: ans})
	x.processUp()
}

// startDrain begins the end of a session whose last answer is written:
// the write side is shut, and upstream input is discarded for a little
// while, so that a peer still sending (a stream) reads the answer instead
// of losing it to a reset.
func (x *lsession) startDrain() {
	if x.upEOF {
		x.close()
		return
	}
	x.draining = true
	x.drainUntil = x.now() + int64(min(x.s.cfg.Timeout, drainTime))
	_ = unix.Shutdown(x.up, unix.SHUT_WR)
	if x.down >= 0 {
		x.dropDown()
	}
	x.stopReadingFrames()
}

// stopReadingFrames gives back the buffers the session read and moved
// frames with, once its last answer is out: the drain reads into a buffer
// of its own. Without this, a reader the budget evicted would keep its
// buffer (up to a frame) through the drain while its charge had already
// left the budget, and connections evicted one after the other would
// hold many times the budget. close releases them again, which does
// nothing.
func (x *lsession) stopReadingFrames() {
	x.upPipe.close() // before the batches forget: nothing to keep in step
	x.downPipe.close()
	if x.downR != nil {
		x.downR.Release()
	}
	x.letGoOfFrames(x.upR)
	x.fresh = heldRequest{}
	clear(x.held[:cap(x.held)])
	x.held = x.held[:0]
}

// Bounds of the drain after a session's last answer.
const (
	drainTime  = 2 * time.Second
	drainBytes = 32 << 20
)

// drain discards what the upstream sends after the last answer.
func (x *lsession) drain() {
	var buf [16 << 10]byte
	for i := 0; i < readsPerEvent; i++ {
		n, err := rawRead(x.up, buf[:])
		if err == unix.EAGAIN || err == unix.EINTR {
			return
		}
		x.drained += max(n, 0)
		if err != nil || n == 0 || x.drained > drainBytes {
			x.close()
			return
		}
	}
}

func (x *lsession) readDownstream() {
	for i := 0; i < readsPerEvent; i++ {
		if !x.canReadDown() {
			return
		}
		_, err := x.downR.ReadOnce(x.readDown)
		if err == errAgain {
			return
		}
		if err != nil {
			x.breakDown(x.downR.EndError(err))
			return
		}
		if x.downR.Complete() {
			x.processDown(x.downRx.Last)
		}
		if x.downR.Drained() {
			return
		}
	}
}
