package relay_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/relay"
)

// readError reads the answer to a bad frame: an error frame, then EOF.
func readError(t *testing.T, c net.Conn) frame.ErrorRecord {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
	if err := r.Fill(); err != nil {
		t.Fatalf("no error frame: %v", err)
	}
	fr, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	rec, err := frame.ParseErrorFrame(fr, frame.DefaultMaxFrameBytes)
	if err != nil {
		t.Fatalf("answer is not an error frame: %v", err)
	}
	if err := r.Fill(); !errors.Is(err, io.EOF) {
		t.Errorf("connection not closed after the error frame: %v", err)
	}
	return rec
}

// expectReplyThenError reads the answers to a valid probe followed by
// garbage: the probe's reply first, in order, then an error frame.
func expectReplyThenError(t *testing.T, c net.Conn, reason peer.Reason) {
	t.Helper()
	r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := r.Fill(); err != nil {
		t.Fatal(err)
	}
	fr, _ := r.Next()
	if v, err := frame.Parse(fr, frame.DefaultMaxFrameBytes, 255); err != nil || v.Header.Kind != frame.KindProbeReply {
		t.Fatalf("first answer %v %v, want the probe's reply", v.Header.Kind, err)
	}
	fr, err := r.Next()
	if fr == nil && err == nil {
		if err := r.Fill(); err != nil {
			t.Fatal(err)
		}
		fr, err = r.Next()
	}
	rec, perr := frame.ParseErrorFrame(fr, frame.DefaultMaxFrameBytes)
	if err != nil || perr != nil || rec.Reason != reason {
		t.Fatalf("second answer %+v (%v %v), want an error frame", rec, err, perr)
	}
}

func TestGarbageGetsAnErrorFrame(t *testing.T) {
	chaintest.ForEachEngine(t, testGarbageGetsAnErrorFrame)
}

func testGarbageGetsAnErrorFrame(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: z})
	valid := frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: 1}, nil, []uint64{1}, nil)
	for _, target := range []struct{ name, addr string }{{"end host", z}, {"forwarding hop", b}} {
		for _, tc := range []struct {
			name   string
			input  []byte
			reason peer.Reason
		}{
			{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), peer.ReasonBadFrame},
			{"oversized frame", append([]byte("SSEG\x01\x01\x00\x00\x7f\xff\xff\xff"), make([]byte, 20)...), peer.ReasonBadFrame},
			{"reply sent upstream-to-downstream", frame.AppendReply(nil, frame.KindProbeReply, frame.ProbeHeader{Seq: 1}, nil, nil, 0, nil), peer.ReasonBadFrame},
			{"valid then garbage", append(append([]byte{}, valid...), "garbage!garbage!"...), peer.ReasonBadFrame},
			{"signed frame to a keyless hop", frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: 1}, nil, []uint64{1},
				frame.NewSigner(frame.Keys{[]byte("0123456789abcdef")})), peer.ReasonAuth},
		} {
			t.Run(target.name+"/"+tc.name, func(t *testing.T) {
				c, err := net.Dial("tcp", target.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := c.Write(tc.input); err != nil {
					t.Fatal(err)
				}
				if tc.name == "valid then garbage" {
					expectReplyThenError(t, c, tc.reason)
					return
				}
				rec := readError(t, c)
				if rec.Reason != tc.reason || rec.Side != frame.SideUpstream || rec.Name == "" || rec.Message == "" {
					t.Errorf("error record %+v, want reason %s from the hop, with a message", rec, tc.reason)
				}
			})
		}
	}
	// The relay still serves probes after all that.
	c, err := net.Dial("tcp", b)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(valid); err != nil {
		t.Fatal(err)
	}
	r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
	if err := r.Fill(); err != nil {
		t.Fatalf("relay stopped answering after garbage: %v", err)
	}
}

func TestFrameMustArriveWithinTimeout(t *testing.T) {
	chaintest.ForEachEngine(t, testFrameMustArriveWithinTimeout)
}

// A frame must arrive whole within --timeout: a connection that trickles
// one byte at a time is closed after it, however often bytes come; one
// that sends whole probes more often than --timeout stays open.
func testFrameMustArriveWithinTimeout(t *testing.T) {
	const timeout = time.Second
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: z, Timeout: timeout})
	trickler, err := net.Dial("tcp", b)
	if err != nil {
		t.Fatal(err)
	}
	defer trickler.Close()
	opened := time.Now()
	fr := frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: 1}, make([]byte, 200), []uint64{1}, nil)
	closed := make(chan time.Duration, 1)
	go func() {
		io.Copy(io.Discard, trickler)
		closed <- time.Since(opened)
	}()
	prober, err := net.Dial("tcp", b)
	if err != nil {
		t.Fatal(err)
	}
	defer prober.Close()
	var lived time.Duration
	for i := 0; time.Since(opened) < 3*timeout; i++ {
		if lived == 0 && i < len(fr)-1 {
			trickler.Write(fr[i : i+1])
		}
		if i%2 == 0 && !probeOnce(t, prober, uint64(i)) {
			t.Fatalf("the connection sending a whole probe every %v was not answered at %v", 2*50*time.Millisecond, time.Since(opened))
		}
		select {
		case lived = <-closed:
		case <-time.After(50 * time.Millisecond):
		}
	}
	if lived == 0 || lived > 2*timeout {
		t.Fatalf("trickling connection lived %v (0: still open after %v), want closed within 2 × --timeout %v", lived, time.Since(opened), timeout)
	}
}

func TestConnectionLimit(t *testing.T) { chaintest.ForEachEngine(t, testConnectionLimit) }

// probeOnce sends one probe on c and reports whether a reply (not an error
// frame) came back.
func probeOnce(t *testing.T, c net.Conn, seq uint64) bool {
	t.Helper()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: seq}, nil, []uint64{1}, nil)); err != nil {
		return false
	}
	r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
	if r.Fill() != nil {
		return false
	}
	fr, _ := r.Next()
	v, err := frame.Parse(fr, frame.DefaultMaxFrameBytes, 255)
	return err == nil && v.Header.Kind == frame.KindProbeReply
}

func testConnectionLimit(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z", MaxConnections: 2})
	dial := func() net.Conn {
		c, err := net.Dial("tcp", z)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// Two connections that proved themselves (sent a valid probe) are never
	// evicted: a third is refused.
	p1, p2 := dial(), dial()
	if !probeOnce(t, p1, 1) || !probeOnce(t, p2, 2) {
		t.Fatal("probes on the first two connections failed")
	}
	time.Sleep(150 * time.Millisecond)
	if rec := readError(t, dial()); rec.Reason != peer.ReasonOverloaded || !strings.Contains(rec.Message, "limit of 2") {
		t.Errorf("third connection got %+v, want overloaded", rec)
	}
	p1.Close()
	p2.Close()

	// Two idle connections that never sent a frame: once they are old
	// enough, a new connection evicts the oldest and is served.
	var idle []net.Conn
	for i := 0; i < 2; i++ {
		var c net.Conn
		ok := false
		for try := 0; try < 50 && !ok; try++ { // the closed ones free their slots shortly
			c = dial()
			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			ok = errors.Is(err, os.ErrDeadlineExceeded) // not refused
			if !ok {
				c.Close()
				time.Sleep(20 * time.Millisecond)
			}
		}
		if !ok {
			t.Fatal("no slot came free after the proven connections closed")
		}
		idle = append(idle, c)
	}
	time.Sleep(150 * time.Millisecond)
	fresh := dial()
	if !probeOnce(t, fresh, 3) {
		t.Fatal("a new connection at the limit was not served: the oldest idle one should have been evicted")
	}
	idle[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle[0].Read(make([]byte, 16)); err == nil {
		t.Error("the oldest idle connection was not closed")
	}
	idle[1].SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := idle[1].Read(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the younger idle connection was closed too: %v", err)
	}
}

func TestIdleSessionsClose(t *testing.T) { chaintest.ForEachEngine(t, testIdleSessionsClose) }

func testIdleSessionsClose(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z", Timeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", z)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: %v, want EOF", err)
	}
	// EOF (not our 5 s deadline) says the relay closed it; not before its
	// 200 ms timeout (less the time the dial took).
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Errorf("idle connection closed after %v, before the 200ms timeout", took)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg  relay.Config
		want string
	}{
		{relay.Config{}, "relay name is empty"},
		{relay.Config{Name: "b c"}, "use letters"},
		{relay.Config{Name: strings.Repeat("x", 65)}, "at most 64"},
		{relay.Config{Name: "b", ForwardTo: "nohost"}, "--forward-to"},
		{relay.Config{Name: "b", MaxFrameBytes: 10}, "--relay.max-frame-bytes 10 out of range"},
		{relay.Config{Name: "b", MaxHops: 300}, "maximum hop count"},
		{relay.Config{Name: "b", Engine: "threads"}, "relay engine"},
		{relay.Config{Name: "b", ForwardTo: "stamp://10.0.0.1:862?dscp=3"}, "--forward-to: STAMP reflector \"stamp://10.0.0.1:862?dscp=3\": unknown parameter"},
		{relay.Config{Name: "b", ForwardTo: "stamp://10.0.0.1:862", DialTLS: &tls.Config{}}, "a STAMP reflector is reached over UDP"},
	} {
		if _, err := relay.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

func TestListenAddress(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"*:9000", ":9000", ""},
		{"127.0.0.1:9000", "127.0.0.1:9000", ""},
		{"[::1]:9000", "[::1]:9000", ""},
		{"9000", "", "listen address"},
	} {
		got, err := peer.ListenAddress(tc.in)
		if got != tc.want || (err == nil) != (tc.err == "") {
			t.Errorf("ListenAddress(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestClassify(t *testing.T) {
	var dnsErr error = &net.DNSError{Err: "no such host", Name: "x"}
	for _, tc := range []struct {
		err  error
		want peer.Reason
	}{
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), peer.ReasonRefused},
		{fmt.Errorf("read: %w", os.ErrDeadlineExceeded), peer.ReasonTimeout},
		{context.DeadlineExceeded, peer.ReasonTimeout},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), peer.ReasonReset},
		{syscall.EPIPE, peer.ReasonReset},
		{io.EOF, peer.ReasonClosed},
		{frame.ErrPartialFrame, peer.ReasonClosed},
		{dnsErr, peer.ReasonUnreachable},
		{syscall.EHOSTUNREACH, peer.ReasonUnreachable},
		{fmt.Errorf("x: %w", frame.ErrAuth), peer.ReasonAuth},
		{frame.ErrBadMagic, peer.ReasonBadFrame},
		{frame.ErrTooManyHops, peer.ReasonTooManyHops},
		{errors.New("something else"), peer.ReasonUnknown},
	} {
		if got := peer.Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

// BenchmarkProbeThroughRelay measures a probe's round trip through one
// relay and an end host in this process, and what the relays allocate.
func BenchmarkProbeThroughRelay(b *testing.B) {
	for _, engine := range []string{relay.EngineEpoll, relay.EngineGoroutines} {
		b.Run(engine, func(b *testing.B) {
			z := chaintest.StartRelay(b, relay.Config{Name: "z", Engine: engine})
			r1 := chaintest.StartRelay(b, relay.Config{Name: "b", ForwardTo: z, Engine: engine})
			c, err := net.Dial("tcp", r1)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			rd := frame.NewReader(c, frame.DefaultMaxFrameBytes)
			var req []byte
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req = frame.AppendZeroRequest(req[:0], frame.KindProbeRequest, frame.ProbeHeader{Seq: uint64(i), BudgetMicros: 5_000_000}, 0, []uint64{42}, nil)
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if err := rd.Fill(); err != nil {
					b.Fatal(err)
				}
				if _, err := rd.Next(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStreamBlockThroughRelay measures a stream block's round trip
// through one relay and an end host in this process: 256 KiB blocks take
// the large-frame path (budgeted buffers, read header first then body),
// 1 MiB blocks the relays' pipes on the epoll engine (splice); both must
// stay allocation-free per block.
func BenchmarkStreamBlockThroughRelay(b *testing.B) {
	for _, block := range []int{256 << 10, 1 << 20} {
		for _, engine := range []string{relay.EngineEpoll, relay.EngineGoroutines} {
			b.Run(fmt.Sprintf("%dKiB/%s", block>>10, engine), func(b *testing.B) {
				z := chaintest.StartRelay(b, relay.Config{Name: "z", Engine: engine})
				r1 := chaintest.StartRelay(b, relay.Config{Name: "b", ForwardTo: z, Engine: engine})
				c, err := net.Dial("tcp", r1)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				rd := frame.NewReader(c, frame.DefaultMaxFrameBytes)
				var req []byte
				b.SetBytes(int64(block))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					req = frame.AppendZeroRequest(req[:0], frame.KindStreamRequest, frame.ProbeHeader{Seq: uint64(i), BudgetMicros: 5_000_000, DataLen: uint32(block)}, block, []uint64{42}, nil)
					if _, err := c.Write(req); err != nil {
						b.Fatal(err)
					}
					if err := rd.Fill(); err != nil {
						b.Fatal(err)
					}
					if _, err := rd.Next(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// dialRecorder is a relay's Dial that remembers every address dialled.
type dialRecorder struct {
	mu    sync.Mutex
	addrs map[string]int
}

func (d *dialRecorder) dial(ctx context.Context, addr string) (net.Conn, error) {
	d.mu.Lock()
	if d.addrs == nil {
		d.addrs = map[string]int{}
	}
	d.addrs[addr]++
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", addr)
}

func (d *dialRecorder) others(allowed string) map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int{}
	for a, n := range d.addrs {
		if a != allowed {
			out[a] = n
		}
	}
	return out
}

// sendAndDrain writes input to a relay and reads until it closes (bounded).
func sendAndDrain(addr string, input []byte) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	c.Write(input)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	io.Copy(io.Discard, c)
}

func TestRelayDialsOnlyItsNextHop(t *testing.T) {
	chaintest.ForEachEngine(t, testRelayDialsOnlyItsNextHop)
}

func testRelayDialsOnlyItsNextHop(t *testing.T) {
	z := chaintest.StartRelay(t, relay.Config{Name: "z"})
	rec := &dialRecorder{}
	b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: z, Dial: rec.dial})
	// Frames whose every field, data included, names other places.
	for i, data := range []string{"127.0.0.1:22", "[::1]:9000", "forward-to 10.0.0.1:80", "\x00\x01evil.example:443"} {
		for _, kind := range []frame.Kind{frame.KindProbeRequest, frame.KindStreamRequest} {
			fr := frame.AppendRequest(nil, kind, frame.ProbeHeader{Seq: uint64(i)}, []byte(data), []uint64{uint64(i + 1)}, nil)
			sendAndDrain(b, fr)
			sendAndDrain(b, append(fr, []byte(data)...))
		}
	}
	if others := rec.others(z); len(others) > 0 {
		t.Errorf("relay dialled %v besides its --forward-to %s", others, z)
	}
	if rec.addrs[z] == 0 {
		t.Error("relay never dialled its next hop: the test sent nothing it forwards")
	}
}

// FuzzRelayInput throws arbitrary bytes at live relays (both engines):
// they must not crash, and must dial nothing but their next hop.
func FuzzRelayInput(f *testing.F) {
	f.Add(frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: 1}, []byte("x"), []uint64{9}, nil))
	f.Add(frame.AppendRequest(nil, frame.KindStreamRequest, frame.ProbeHeader{Seq: 2, BudgetMicros: 1}, nil, []uint64{9, 8}, nil))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Add([]byte("SSEG\x01\x01\x00\x00\x00\x00\x00\x14"))
	z := chaintest.StartRelay(f, relay.Config{Name: "z"})
	rec := &dialRecorder{}
	targets := []string{
		chaintest.StartRelay(f, relay.Config{Name: "b", ForwardTo: z, Dial: rec.dial, Engine: relay.EngineEpoll, Timeout: time.Second}),
		chaintest.StartRelay(f, relay.Config{Name: "b2", ForwardTo: z, Dial: rec.dial, Engine: relay.EngineGoroutines, Timeout: time.Second}),
		z,
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		for _, addr := range targets {
			sendAndDrain(addr, input)
		}
		if others := rec.others(z); len(others) > 0 {
			t.Fatalf("relay dialled %v besides %s", others, z)
		}
	})
}

// A relay whose key ring is rotated (a reload) verifies and signs every
// session with the new keys from its next frame on, the sessions opened
// before the reload included (REVIEW-2 F-B): a rollover (both keys, then
// the new one first) keeps an open session going, and dropping a key
// revokes it on the connections already open, at the hop that dropped it
// and at a hop further down the chain.
func TestSessionsFollowKeyRotation(t *testing.T) {
	chaintest.ForEachEngine(t, testSessionsFollowKeyRotation)
}

func testSessionsFollowKeyRotation(t *testing.T) {
	oldKey, newKey := []byte("old-0123456789abcdef"), []byte("new-0123456789abcdef")
	probe := func(c net.Conn, r *frame.Reader, keys frame.Keys, seq uint64) error {
		sign := frame.NewSigner(keys)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: seq, BudgetMicros: 2_000_000}, nil, []uint64{1}, sign)); err != nil {
			return err
		}
		if err := r.Fill(); err != nil {
			return err
		}
		fr, err := r.Next()
		if err != nil {
			return err
		}
		rep, err := frame.CheckReply(fr, sign, frame.DefaultMaxFrameBytes, frame.Expect{Request: frame.KindProbeRequest, Seq: seq})
		if rep.Refusal != nil {
			return fmt.Errorf("refused (%s) by %s: %s", rep.Refusal.Reason, rep.Refusal.Name, rep.Refusal.Message)
		}
		if err != nil {
			return err
		}
		// A hop that answers for the one after it: its record, then the
		// error record.
		recs, err := frame.ParseRecords(rep.View.Tail(fr), int(rep.View.Probe.Count))
		if err != nil {
			return err
		}
		if last := recs[len(recs)-1]; last.Kind == frame.RecordError {
			return fmt.Errorf("answered (%s) by %s for %s: %s", last.Err.Reason, last.Err.Name, last.Err.Peer, last.Err.Message)
		}
		return nil
	}
	dial := func(addr string) (net.Conn, *frame.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
		t.Cleanup(func() { c.Close(); r.Release() })
		return c, r
	}
	chain := func() (b string, ringB, ringZ *frame.KeyRing) {
		ringB, ringZ = frame.NewKeyRing(frame.Keys{oldKey}), frame.NewKeyRing(frame.Keys{oldKey})
		z := chaintest.StartRelay(t, relay.Config{Name: "z", KeyRing: ringZ})
		return chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: z, KeyRing: ringB}), ringB, ringZ
	}
	both := func(rings ...*frame.KeyRing) func(keys ...[]byte) {
		return func(keys ...[]byte) {
			for _, r := range rings {
				r.Set(frame.Keys(keys))
			}
		}
	}
	oldOnly, oldFirst, newFirst := frame.Keys{oldKey}, frame.Keys{oldKey, newKey}, frame.Keys{newKey, oldKey}

	b, ringB, ringZ := chain()
	set := both(ringB, ringZ)
	kept, keptR := dial(b)
	if err := probe(kept, keptR, oldOnly, 1); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}
	// The rollover: the new key added second, then moved first. The
	// session opened before goes on; new sessions sign with either key.
	set(oldKey, newKey)
	if err := probe(kept, keptR, oldOnly, 2); err != nil {
		t.Errorf("rollover, both keys (old first): the session opened before: %v", err)
	}
	if c, r := dial(b); probe(c, r, newFirst, 1) != nil {
		t.Errorf("rollover, both keys (old first): a new session signed with the new key: %v", probe(c, r, newFirst, 2))
	}
	set(newKey, oldKey)
	if err := probe(kept, keptR, oldFirst, 3); err != nil {
		t.Errorf("rollover, both keys (new first): the session opened before: %v", err)
	}
	// The old key dropped: refused on the session opened before it too,
	// and on new ones; the new key passes.
	set(newKey)
	if err := probe(kept, keptR, oldFirst, 4); err == nil || !strings.Contains(err.Error(), "(auth) by b") {
		t.Errorf("the old key dropped: the session opened before, signed with it: %v, want refused (auth) by b", err)
	}
	if c, r := dial(b); probe(c, r, oldFirst, 1) == nil {
		t.Errorf("the old key dropped: a new session signed with it was answered")
	}
	if c, r := dial(b); probe(c, r, frame.Keys{newKey}, 1) != nil {
		t.Errorf("the old key dropped: a new session signed with the new key: %v", probe(c, r, frame.Keys{newKey}, 2))
	}

	// Only the hop further down drops the key b still signs with: b's
	// downstream session, open since before, is refused there.
	b, _, ringZ = chain()
	kept, keptR = dial(b)
	if err := probe(kept, keptR, oldOnly, 1); err != nil {
		t.Fatalf("second chain, before the rotation: %v", err)
	}
	ringZ.Set(frame.Keys{newKey})
	if err := probe(kept, keptR, oldOnly, 2); err == nil || !strings.Contains(err.Error(), "answered (auth) by b for z") {
		t.Errorf("z dropped the key b signs with: a probe on the session b opened before: %v, want answered (auth) by b for z", err)
	}
}
