package continuous

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/relay"
)

// REVIEW-2 F-G: a turn whose next deadline has already passed must still
// look at the events. The netpoller does not: a read past its deadline
// fails before it calls the poll, so such a turn saw no events at all,
// and ready replies and connects waited until their deadlines made them
// timeouts.
func TestLoopWaitSeesEventsPastItsDeadline(t *testing.T) {
	for _, tc := range []struct {
		name string
		due  time.Duration // the next deadline, from now
	}{
		{"deadline passed", -time.Millisecond},
		{"deadline ahead", time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now()
			l, err := openLoop(now, monotonicSince(now), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.epf.Close(); unix.Close(l.wakeFd) })
			l.timers.push(&tcpEntry{due: int64(tc.due), heapIdx: -1})
			one := [8]byte{1}
			if _, err := unix.Write(l.wakeFd, one[:]); err != nil {
				t.Fatal(err)
			}
			n, err := l.wait()
			if err != nil || n != 1 || int(l.events[0].Fd) != l.wakeFd {
				t.Fatalf("wait: %d events, %v; want the ready eventfd's", n, err)
			}
		})
	}
}

// heldReply is a first hop that answers every request at once but the
// one the test holds: the first (the connection's warm-up). got is
// closed when that request came, and release lets its reply go.
func heldReply(t *testing.T) (target string, got, release chan struct{}) {
	t.Helper()
	got, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	target = chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		once.Do(func() {
			close(got)
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		})
		rec := chaintest.EndRecord("z")
		return chaintest.Reply(v, req, frame.AppendHop(nil, &rec), 1)
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	return target, got, release
}

// inLoop runs fn in the loop's goroutine and waits for it.
func inLoop(t *testing.T, l *loop, fn func()) {
	t.Helper()
	done := make(chan struct{})
	if !l.post(func() { defer close(done); fn() }) {
		t.Fatal("the loop has stopped")
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the loop did not run the function")
	}
}

// waitReadable waits (bounded) until fd has something to read: the
// reply is in the socket's buffer.
func waitReadable(fd int) bool {
	fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds[:], 10000)
	return err == nil && n == 1
}

// REVIEW-2 F-G: a reply already in the socket when the loop comes to its
// deadline late is taken, not recorded as a timeout: after a turn made
// slow past the deadline (the next turn must look at the events), and
// when the deadline is handled in the very turn the reply came in after
// the turn's events were read (the deadline looks at the socket once
// more).
func TestLoopTakesABufferedReplyAtALateDeadline(t *testing.T) {
	for _, tc := range []struct {
		name string
		// late makes the turn in the loop late for entry e's deadline,
		// once its reply is in the socket (in the loop's goroutine;
		// false: the turn began too late to test it).
		late func(l *loop, e *tcpEntry) bool
	}{
		{"a slow turn passes the deadline", func(l *loop, e *tcpEntry) bool {
			if l.mono >= e.due {
				return false
			}
			for l.moment(time.Now()) <= e.due {
				time.Sleep(time.Millisecond)
			}
			return true
		}},
		{"the deadline is due in the turn the reply came", func(l *loop, e *tcpEntry) bool {
			e.due = l.mono
			l.schedule(e)
			return true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { takesTheReplyLate(t, tc.late) })
	}
}

// takesTheReplyLate runs an entry whose warm-up's reply the test holds,
// makes the loop late for its deadline (late) once the reply is in the
// socket, and checks that the warm-up succeeded.
func takesTheReplyLate(t *testing.T, late func(l *loop, e *tcpEntry) bool) {
	target, got, release := heldReply(t)
	m, reg := newTestManager(t)
	m.Apply(parse(t, fmt.Sprintf(`modules:
  m: {targets: ["127.0.0.1:*"], timeout: 1s}
continuous:
  - {target: %q, module: m, interval: 200ms}
`, target)))
	select {
	case <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("no warm-up request came")
	}
	tested := false
	inLoop(t, m.loop, func() {
		e := connectedEntry(m.loop)
		if e == nil || e.phase != waiting {
			t.Errorf("no entry waiting for its warm-up's reply: %+v", e)
			return
		}
		close(release)
		if !waitReadable(e.fd) {
			t.Error("the reply did not come")
			return
		}
		tested = late(m.loop, e)
	})
	if !tested {
		t.Skip("the machine is too slow: the loop's turn began after the warm-up's deadline")
	}
	labels := map[string]string{"target": target}
	waitFor(t, "the warm-up's outcome", func() bool {
		return value(t, reg, "subsegment_continuous_probes_total", map[string]string{"result": "failure"}) > 0 ||
			value(t, reg, "subsegment_continuous_segment_connect_seconds", labels) > 0
	})
	if f := value(t, reg, "subsegment_continuous_probes_total", map[string]string{"result": "failure"}); f != 0 {
		t.Errorf("the warm-up whose reply was in the socket failed (%v failures): %v", f,
			value(t, reg, "subsegment_continuous_segment_failures_total", map[string]string{"reason": "timeout"}))
	}
}

// connectedEntry is the loop's entry with a connection (the last one;
// in the loop's goroutine).
func connectedEntry(l *loop) *tcpEntry {
	var e *tcpEntry
	for _, x := range l.byFd {
		if x != nil {
			e = x
		}
	}
	return e
}

// earlyByteHop is a first hop that sends one byte on every connection
// and never reads, with a small receive buffer: a big request does not
// go out whole.
func earlyByteHop(t *testing.T) string {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 2048) })
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100 {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			_, _ = c.Write([]byte{0})
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// REVIEW-2 F-D: while a request waits for room in the socket, a first
// hop that sent a byte early (and does not read) must not make the loop
// turn: readability is no event of a request being written. The loop
// turned on the level-triggered EPOLLIN at every turn, a core spinning
// until the request's deadline.
func TestLoopDoesNotSpinWhileARequestWaitsForRoom(t *testing.T) {
	target := earlyByteHop(t)
	reg := prometheus.NewPedanticRegistry()
	m := NewManager(NewMetrics(reg), func(target string, mod *config.Module) prober.Options {
		o := sla.ProbeOptions(mod, target)
		o.Source, o.Timeout, o.Names = "a", time.Duration(mod.Timeout), names
		return o
	}, slog.New(slog.DiscardHandler))
	t.Cleanup(m.Stop)
	// A slot far away: the test opens the connection itself.
	m.Apply(parse(t, fmt.Sprintf(`modules:
  big: {targets: ["127.0.0.1:*"], timeout: 20s, payload_bytes: 65536}
continuous:
  - {target: %q, module: big, interval: 10m}
`, target)))
	l := m.loop
	var e *tcpEntry
	inLoop(t, l, func() {
		if len(l.timers) != 1 || l.timers[0].e.phase != closed {
			return
		}
		// The entry's slot now (as expire hands it), with a send buffer
		// of a few KiB (a slow path's, or lowered tcp_wmem's): the
		// warm-up of 64 KiB does not fit.
		e = l.timers[0].e
		l.unschedule(e)
		e.timeout()
		if e.phase == connecting {
			_ = unix.SetsockoptInt(e.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
		}
	})
	if e == nil {
		t.Skip("the entry's first slot came before the test could open its connection")
	}
	var phase connPhase
	var early bool
	for range 500 {
		inLoop(t, l, func() {
			phase = e.phase
			if phase == sending {
				early = waitReadable(e.fd)
			}
		})
		if phase != connecting {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if phase != sending || !early {
		t.Fatalf("the entry is in phase %d (the hop's early byte in the socket: %v), want sending with the byte readable", phase, early)
	}
	var before, after uint64
	inLoop(t, l, func() { before = l.turns })
	time.Sleep(300 * time.Millisecond)
	inLoop(t, l, func() { after, phase = l.turns, e.phase })
	// Two turns for the two functions the test ran in the loop, no more:
	// nothing happened to the entry meanwhile.
	if turns := after - before; turns > 3 || phase != sending {
		t.Errorf("%d turns of the loop while the request waited for room (the entry in phase %d), want no turn of its own", turns, phase)
	}
}

// REVIEW-2 F-G: a connect that completed before the loop came to its
// deadline is taken, not failed as a timeout: the deadline looks at the
// socket once more.
func TestLoopTakesAConnectAtALateDeadline(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b")
	m, reg := newTestManager(t)
	// A slot far away: the test opens the connection itself.
	m.Apply(parse(t, fmt.Sprintf(`modules:
  m: {targets: ["127.0.0.1:*"], timeout: 5s}
continuous:
  - {target: %q, module: m, interval: 10m}
`, target)))
	l := m.loop
	opened := false
	inLoop(t, l, func() {
		if len(l.timers) != 1 || l.timers[0].e.phase != closed {
			return
		}
		e := l.timers[0].e
		l.unschedule(e)
		e.timeout()
		if e.phase != connecting {
			t.Errorf("the entry is in phase %d after its open, want connecting", e.phase)
			return
		}
		// The connect completes while the turn goes on, and its
		// deadline is due in this turn: its event was not read.
		fds := [1]unix.PollFd{{Fd: int32(e.fd), Events: unix.POLLOUT}}
		if n, err := unix.Poll(fds[:], 10000); n != 1 || err != nil {
			t.Errorf("the connect did not complete: %v", err)
			return
		}
		e.due = l.mono
		l.schedule(e)
		opened = true
	})
	if !opened {
		t.Skip("the entry's first slot came before the test could open its connection")
	}
	waitFor(t, "the warm-up's outcome", func() bool {
		return value(t, reg, "subsegment_continuous_probes_total", map[string]string{"result": "failure"}) > 0 ||
			value(t, reg, "subsegment_continuous_segment_connect_seconds", map[string]string{"to": "b"}) > 0
	})
	if f := value(t, reg, "subsegment_continuous_probes_total", map[string]string{"result": "failure"}); f != 0 {
		t.Errorf("the connect that had completed failed (%v failures): %v", f,
			value(t, reg, "subsegment_continuous_segment_failures_total", map[string]string{"reason": "timeout"}))
	}
}

// Batching: entries whose slots lie close together go out in one turn.
// 40 entries at 200 ms have a slot every 5 ms; with the early margin of
// 40 entries (10 ms) a turn that sends sends about three probes, where
// without batching (2 ms) each went alone. A busy machine only makes
// the batches larger.
func TestLoopBatchesProbes(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	const n = 40
	cfg := "modules:\n"
	for i := range n {
		cfg += fmt.Sprintf("  m%d: {targets: [\"127.0.0.1:*\"], timeout: 2s}\n", i)
	}
	cfg += "continuous:\n"
	for i := range n {
		cfg += fmt.Sprintf("  - {target: %q, module: m%d, interval: 200ms}\n", z, i)
	}
	m, reg := newTestManager(t)
	m.Apply(parse(t, cfg))
	probes := func(result string) float64 {
		return sumOf(t, reg, "subsegment_continuous_probes_total", map[string]string{"result": result})
	}
	waitFor(t, "every entry's first probes", func() bool { return probes("success") >= 2*n })
	var probes0, turns0, probes1, turns1 uint64
	inLoop(t, m.loop, func() { probes0, turns0 = m.loop.slotProbes, m.loop.slotTurns })
	p0 := probes("success")
	waitFor(t, "four rounds of probes", func() bool { return probes("success") >= p0+4*n })
	inLoop(t, m.loop, func() { probes1, turns1 = m.loop.slotProbes, m.loop.slotTurns })
	if f := probes("failure"); f > 0 {
		t.Errorf("%v probes failed", f)
	}
	sent, turns := probes1-probes0, turns1-turns0
	if turns == 0 || float64(sent)/float64(turns) < 2 {
		t.Errorf("%d probes in %d turns that sent any, want at least two per such turn", sent, turns)
	}
}

// What the batching must not do (a pause to read a batch's replies
// together did): make the source look slow. The source's own residence
// (building the request to writing it, the reply's arrival to its
// reading) stays a small part of the interval: a pause of a tenth of it
// showed there whole.
func TestBatchingLeavesTheSourceResidenceAlone(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	const interval = 400 * time.Millisecond
	m, reg := newTestManager(t)
	m.Apply(parse(t, fmt.Sprintf("modules:\n  m: {targets: [\"127.0.0.1:*\"], timeout: 2s}\ncontinuous:\n  - {target: %q, module: m, interval: %v}\n", z, interval)))
	residence := func() (sum float64, count uint64) {
		for _, m := range matching(t, reg, "subsegment_continuous_hop_residence_seconds", map[string]string{"hop": "a"}) {
			sum, count = sum+m.GetHistogram().GetSampleSum(), count+m.GetHistogram().GetSampleCount()
		}
		return sum, count
	}
	waitFor(t, "three probes", func() bool { _, c := residence(); return c >= 3 })
	sum, count := residence()
	if mean := time.Duration(sum / float64(count) * float64(time.Second)); mean > interval/40 {
		t.Errorf("the source's mean residence over %d probes: %v, want well under a tenth of the %v interval", count, mean, interval)
	}
}

// steppingClock advances 1 µs at every reading, and counts the readings
// of its synchronisation.
type steppingClock struct{ now, syncs int64 }

func (c *steppingClock) Monotonic() int64 { c.now += 1000; return c.now }
func (c *steppingClock) Wall() int64      { return c.Monotonic() }
func (c *steppingClock) Sync() clock.Sync { c.syncs++; return clock.Sync{} }

// A probe late in a batch was built when it was, not when the turn
// began: each request gets its own clock readings (its time in the
// source is its own, however many probes went before it in the turn),
// and the clock's synchronisation is read once per turn.
func TestEachProbeOfATurnReadsItsOwnClock(t *testing.T) {
	l := &loop{moment: monotonicSince(time.Now())}
	clk := &steppingClock{}
	l.beginTurn()
	first, second := l.turnOf(clk, true), l.turnOf(clk, true)
	if second.Mono <= first.Mono || second.Wall <= first.Wall {
		t.Errorf("two probes of one turn built at %d and %d (wall %d, %d): want each its own reading", first.Mono, second.Mono, first.Wall, second.Wall)
	}
	if clk.syncs != 1 {
		t.Errorf("%d readings of the synchronisation in one turn, want 1", clk.syncs)
	}
	l.beginTurn()
	l.turnOf(clk, true)
	if clk.syncs != 2 {
		t.Errorf("%d readings of the synchronisation after a second turn, want 2", clk.syncs)
	}
}

// The loop gives an idle entry's probe its slot's earliness (Turn.Early):
// 300 ms after the first hop closed the idle connection, a probe whose
// slot is 900 ms away counts its idle time to that slot and goes again on
// a new connection; the same probe on its slot fails. (The slot is moved
// by hand, far beyond the loop's margin, to test the loop's part alone.)
func TestLoopCountsIdleTimeToTheSlot(t *testing.T) {
	for _, c := range []struct {
		early time.Duration
		works bool
	}{{900 * time.Millisecond, true}, {0, false}} {
		t.Run(c.early.String(), func(t *testing.T) {
			z := chaintest.StartRelay(t, relay.Config{Name: "z"})
			b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: z, Timeout: 150 * time.Millisecond})
			m, reg := newTestManager(t)
			m.Apply(parse(t, fmt.Sprintf("modules:\n  m: {targets: [\"127.0.0.1:*\"], timeout: 2s}\ncontinuous:\n  - {target: %q, module: m, interval: 5s}\n", b)))
			waitFor(t, "the warm-up", func() bool {
				return value(t, reg, "subsegment_continuous_segment_connect_seconds", map[string]string{"target": b}) > 0
			})
			time.Sleep(300 * time.Millisecond) // the relay closes the idle connection after 150 ms
			inLoop(t, m.loop, func() {
				e := connectedEntry(m.loop)
				if e == nil || e.phase != idle {
					t.Errorf("no idle entry: %+v", e)
					return
				}
				m.loop.unschedule(e)
				e.due = m.loop.moment(time.Now()) + int64(c.early)
				e.timeout() // as expire takes it
			})
			result := func(r string) float64 {
				return value(t, reg, "subsegment_continuous_probes_total", map[string]string{"result": r})
			}
			waitFor(t, "the probe's outcome", func() bool { return result("success")+result("failure") > 0 })
			if got := result("success") > 0; got != c.works {
				t.Errorf("sent %v before its slot on a connection closed as idle: success %v, want %v (failures %v)", c.early, got, c.works, result("failure"))
			}
		})
	}
}
