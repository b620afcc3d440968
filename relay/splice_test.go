package relay_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/relay"
)

// Large stream blocks take the relays' pipes (splice) on the epoll engine;
// these tests hold them to what the copying path guarantees: every byte
// back in order, every frame checked, every answer where it belongs, and
// nothing left behind when a peer fails in the middle of a block.

// serveChain starts relays names[0] … names[len-1] (the end host) and
// returns the first hop's address and the servers, first hop first. With
// small, every connection between hops has 4 KiB socket buffers, so that
// every splice meets a full socket and moves part of a block.
func serveChain(t *testing.T, small bool, tmpl relay.Config, names ...string) (string, []*relay.Server) {
	t.Helper()
	servers := make([]*relay.Server, len(names))
	next := ""
	for i := len(names) - 1; i >= 0; i-- {
		cfg := tmpl
		cfg.Name, cfg.ForwardTo = names[i], next
		var lc net.ListenConfig
		if small {
			cfg.Dial = chaintest.SmallBuffers
			lc.Control = func(_, _ string, c syscall.RawConn) error {
				return c.Control(func(fd uintptr) {
					_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
					_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096)
				})
			}
		}
		servers[i] = chaintest.New(t, cfg)
		next = serve(t, servers[i], lc)
	}
	return next, servers
}

func serve(t *testing.T, srv *relay.Server, lc net.ListenConfig) string {
	t.Helper()
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("relay %s: %v", srv.Name(), err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("relay %s did not stop", srv.Name())
		}
	})
	return ln.Addr().String()
}

// block is one stream request a test sends: its data and its path.
type block struct {
	data []byte
	path []uint64
}

func randomBlock(size int, seed uint64) block {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return block{data: b, path: []uint64{42}}
}

// streamOptions shape how the test client writes and reads.
type streamOptions struct {
	writeChunk int           // write requests in pieces of this size (0: whole)
	pause      time.Duration // between pieces
	readChunk  int           // read replies in reads of at most this size (0: as the reader does)
	keys       frame.Keys
}

// chunkReader hands out at most n bytes per Read, slowly: a peer that
// reads what the relay splices in small pieces.
type chunkReader struct {
	c     net.Conn
	n     int
	pause time.Duration
}

func (r *chunkReader) Read(p []byte) (int, error) {
	time.Sleep(r.pause)
	return r.c.Read(p[:min(len(p), r.n)])
}

// streamBlocks sends blocks as stream requests (seq 0, 1, …) on one
// connection, from a goroutine, and returns every answer checked: the
// reply frames in order, and for each reply the error record when the
// chain answered with one.
func streamBlocks(t *testing.T, addr string, blocks []block, o streamOptions) ([]frame.View, [][]byte, []*frame.ErrorRecord) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	// A Signer serves one goroutine: the writer signs with its own.
	sign, check := frame.NewSigner(o.keys), frame.NewSigner(o.keys)
	werr := make(chan error, 1)
	go func() {
		var err error
		for i, b := range blocks {
			fr := frame.AppendRequest(nil, frame.KindStreamRequest, frame.ProbeHeader{Seq: uint64(i), BudgetMicros: 30_000_000}, b.data, b.path, sign)
			for len(fr) > 0 && err == nil {
				n := len(fr)
				if o.writeChunk > 0 {
					n = min(n, o.writeChunk)
					time.Sleep(o.pause)
				}
				_, err = c.Write(fr[:n])
				fr = fr[n:]
			}
		}
		werr <- err
	}()
	var src io.Reader = c
	if o.readChunk > 0 {
		src = &chunkReader{c: c, n: o.readChunk, pause: time.Millisecond}
	}
	r := frame.NewReader(src, frame.DefaultMaxFrameBytes)
	defer r.Release()
	var views []frame.View
	var data [][]byte
	var refusals []*frame.ErrorRecord
	for seq := range blocks {
		if r.Buffered() == 0 || !r.Complete() {
			if err := r.Fill(); err != nil {
				t.Fatalf("reply %d: %v", seq, err)
			}
		}
		fr, err := r.Next()
		if err != nil {
			t.Fatalf("reply %d: %v", seq, err)
		}
		rep, err := frame.CheckReply(fr, check, frame.DefaultMaxFrameBytes, frame.Expect{Request: frame.KindStreamRequest, Seq: uint64(seq)})
		if err != nil || rep.Refusal != nil {
			t.Fatalf("reply %d refused: %v %+v", seq, err, rep.Refusal)
		}
		recs, err := frame.ParseRecords(rep.View.Tail(fr), int(rep.View.Probe.Count))
		if err != nil {
			t.Fatalf("reply %d records: %v", seq, err)
		}
		var refusal *frame.ErrorRecord
		if last := recs[len(recs)-1]; last.Kind == frame.RecordError {
			refusal = &last.Err
		}
		views = append(views, rep.View)
		data = append(data, bytes.Clone(rep.View.Data(fr)))
		refusals = append(refusals, refusal)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	return views, data, refusals
}

// checkEcho fails unless every block came back whole through hops hops.
func checkEcho(t *testing.T, blocks []block, views []frame.View, data [][]byte, refusals []*frame.ErrorRecord, hops int) {
	t.Helper()
	for i, b := range blocks {
		if refusals[i] != nil {
			t.Fatalf("block %d (%d bytes) refused: %+v", i, len(b.data), refusals[i])
		}
		if !bytes.Equal(data[i], b.data) {
			t.Fatalf("block %d (%d bytes) came back with %d bytes, not the same", i, len(b.data), len(data[i]))
		}
		if int(views[i].Probe.Count) != hops {
			t.Fatalf("block %d: %d records, want one per hop (%d)", i, views[i].Probe.Count, hops)
		}
	}
}

func spliced(servers []*relay.Server) int64 {
	var n int64
	for _, s := range servers {
		n += s.SplicedBytes()
	}
	return n
}

// wantSpliced checks that every hop of the epoll engine moved blocks
// through its pipes, and that the goroutine engine copied.
func wantSpliced(t *testing.T, servers []*relay.Server) {
	t.Helper()
	for _, s := range servers {
		switch got := s.SplicedBytes(); {
		case s.Engine() == relay.EngineEpoll && got == 0:
			t.Errorf("%s spliced nothing", s.Name())
		case s.Engine() == relay.EngineGoroutines && got != 0:
			t.Errorf("%s on the goroutine engine spliced %d bytes", s.Name(), got)
		}
	}
}

// Blocks of every size around the splice threshold, up to 16 MiB (more
// than a pipe holds: its start is spliced, the rest read), mixed with
// small ones, come back byte-exact through three relays.
func TestStreamBlocksThroughPipes(t *testing.T) {
	chaintest.ForEachEngine(t, testStreamBlocksThroughPipes)
}

func testStreamBlocksThroughPipes(t *testing.T) {
	addr, servers := serveChain(t, false, relay.Config{}, "b", "c", "z")
	var blocks []block
	for i, size := range []int{200 << 10, 8 << 10, frame.SpliceMinData - 1, frame.SpliceMinData, 100_000, 1 << 20, 3<<20 + 17, 16 << 20, 511, 1<<20 - 1, 4 << 20} {
		blocks = append(blocks, randomBlock(size, uint64(i)))
	}
	views, data, refusals := streamBlocks(t, addr, blocks, streamOptions{})
	checkEcho(t, blocks, views, data, refusals, 3)
	wantSpliced(t, servers)
}

// Partial splices: 4 KiB socket buffers between the hops, a client that
// writes in pieces and reads slowly. Every splice moves part of a block,
// and every block still comes back whole.
func TestPartialSplices(t *testing.T) { chaintest.ForEachEngine(t, testPartialSplices) }

func testPartialSplices(t *testing.T) {
	addr, servers := serveChain(t, true, relay.Config{}, "b", "c", "z")
	var blocks []block
	for i, size := range []int{1 << 20, 300 << 10, 2<<20 + 3, 70 << 10, 1 << 20} {
		blocks = append(blocks, randomBlock(size, uint64(100+i)))
	}
	views, data, refusals := streamBlocks(t, addr, blocks, streamOptions{writeChunk: 5000, pause: 50 * time.Microsecond, readChunk: 3000})
	checkEcho(t, blocks, views, data, refusals, 3)
	wantSpliced(t, servers)
}

// A signed chain reads every block: the signature covers the data.
func TestSignedBlocksAreCopied(t *testing.T) {
	keys := frame.Keys{[]byte("splice-test-key-0123456789")}
	addr, servers := serveChain(t, false, relay.Config{Keys: keys}, "b", "z")
	blocks := []block{randomBlock(300<<10, 1), randomBlock(2<<20, 2)}
	views, data, refusals := streamBlocks(t, addr, blocks, streamOptions{keys: keys})
	checkEcho(t, blocks, views, data, refusals, 2)
	if n := spliced(servers); n != 0 {
		t.Errorf("a signed chain spliced %d bytes", n)
	}
}

// A block that a hop answers itself (here: a forwarding loop, its path
// holds the hop) is not passed on, and its data leaves the pipe: the
// blocks before and after it come back whole.
func TestSplicedBlockAnsweredByTheHop(t *testing.T) {
	const bID = 0xb0b
	addr, servers := serveChainWithID(t, bID)
	looping := randomBlock(1<<20, 7)
	looping.path = []uint64{42, bID}
	blocks := []block{randomBlock(200<<10, 6), randomBlock(1<<20, 8), looping, randomBlock(1<<20, 9), randomBlock(500<<10, 10)}
	views, data, refusals := streamBlocks(t, addr, blocks, streamOptions{})
	for i := range blocks {
		if i == 2 {
			if refusals[i] == nil || refusals[i].Reason != peer.ReasonLoop || len(data[i]) != 0 {
				t.Fatalf("looping block: refusal %+v, %d data bytes", refusals[i], len(data[i]))
			}
			continue
		}
		checkEcho(t, blocks[i:i+1], views[i:i+1], data[i:i+1], refusals[i:i+1], 2)
	}
	wantSpliced(t, servers)
}

func serveChainWithID(t *testing.T, bID uint64) (string, []*relay.Server) {
	t.Helper()
	z := chaintest.New(t, relay.Config{Name: "z", Engine: relay.EngineEpoll})
	zAddr := serve(t, z, net.ListenConfig{})
	b := chaintest.New(t, relay.Config{Name: "b", ForwardTo: zAddr, ID: bID, Engine: relay.EngineEpoll})
	return serve(t, b, net.ListenConfig{}), []*relay.Server{b, z}
}

// openFDs counts this process's sockets and pipes: what a session holds
// (the process-wide /dev/null pipes drop into, the runtime's files, do
// not count).
func openFDs(t *testing.T) (int, []string) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	n := 0
	var all []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if strings.HasPrefix(l, "socket:") || strings.HasPrefix(l, "pipe:") {
			n++
			all = append(all, l)
		}
	}
	return n, all
}

// waitFDs waits (bounded) until the process holds at most want sockets
// and pipes: sessions, their pipes included, end a little after their
// peers do.
func waitFDs(t *testing.T, want int) {
	t.Helper()
	var got int
	var all []string
	for i := 0; i < 100; i++ {
		if got, all = openFDs(t); got <= want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%d sockets and pipes open, %d before: sessions or pipes left behind: %v", got, want, all)
}

// An upstream that dies in the middle of a spliced block, again and
// again, leaves no descriptor, pipe or budget behind: a small budget that
// leaked would refuse the stream that follows.
func TestUpstreamDiesMidBlock(t *testing.T) {
	tmpl := relay.Config{MaxFrameBytes: 2 << 20, BufferBudget: 8 << 20}
	addr, servers := serveChain(t, false, tmpl, "b", "c", "z")
	fds, _ := openFDs(t)
	first, cut := randomBlock(200<<10, 1), randomBlock(1<<20, 2)
	for i := 0; i < 12; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(frame.AppendRequest(nil, frame.KindStreamRequest, frame.ProbeHeader{Seq: 0, BudgetMicros: 5_000_000}, first.data, first.path, nil)); err != nil {
			t.Fatal(err)
		}
		r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
		if err := r.Fill(); err != nil {
			t.Fatalf("round %d: first block's reply: %v", i, err)
		}
		r.Release()
		fr := frame.AppendRequest(nil, frame.KindStreamRequest, frame.ProbeHeader{Seq: 1, BudgetMicros: 5_000_000}, cut.data, cut.path, nil)
		if _, err := c.Write(fr[:len(fr)/2]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		if i%2 == 0 {
			_ = c.(*net.TCPConn).SetLinger(0) // a reset, every other time
		}
		c.Close()
	}
	blocks := []block{randomBlock(300<<10, 3), randomBlock(1<<20, 4), randomBlock(1<<20, 5)}
	views, data, refusals := streamBlocks(t, addr, blocks, streamOptions{})
	checkEcho(t, blocks, views, data, refusals, 3)
	wantSpliced(t, servers)
	waitFDs(t, fds)
}

// halfEnd is an end host that answers the first frame of a connection,
// then reads part of the next one and resets the connection: a next hop
// that dies while a relay splices a block into it.
func halfEnd(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
			if r.Fill() == nil {
				if fr, err := r.Next(); err == nil && fr != nil {
					if v, err := frame.Parse(fr, frame.DefaultMaxFrameBytes, frame.MaxHopsLimit); err == nil {
						rec := chaintest.EndRecord("z")
						_, _ = c.Write(chaintest.Reply(v, fr, frame.AppendHop(nil, &rec), 1))
					}
				}
			}
			// Its reply has time to reach the relay, then the block
			// being spliced in is cut.
			time.Sleep(50 * time.Millisecond)
			_, _ = io.CopyN(io.Discard, c, 100<<10)
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			r.Release()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// A next hop that dies while a block is spliced into it: the block is
// answered by the relay, naming the segment that failed, and the relay
// keeps nothing of the session.
func TestDownstreamDiesMidBlock(t *testing.T) { chaintest.ForEachEngine(t, testDownstreamDiesMidBlock) }

func testDownstreamDiesMidBlock(t *testing.T) {
	b := chaintest.New(t, relay.Config{Name: "b", ForwardTo: halfEnd(t)})
	addr := serve(t, b, net.ListenConfig{})
	fds, _ := openFDs(t)
	for round := 0; round < 3; round++ {
		blocks := []block{randomBlock(200<<10, 11), randomBlock(1<<20, 12), randomBlock(1<<20, 13)}
		views, data, refusals := streamBlocks(t, addr, blocks, streamOptions{})
		checkEcho(t, blocks[:1], views[:1], data[:1], refusals[:1], 2)
		for i := 1; i < len(blocks); i++ {
			r := refusals[i]
			if r == nil || r.Name != "b" || r.Side != frame.SideDownstream || len(data[i]) != 0 {
				t.Fatalf("round %d block %d: refusal %+v with %d data bytes, want b's answer about its downstream", round, i, r, len(data[i]))
			}
			if r.Reason != peer.ReasonReset && r.Reason != peer.ReasonClosed {
				t.Errorf("round %d block %d: reason %s, want reset or closed", round, i, r.Reason)
			}
		}
	}
	if b.Engine() == relay.EngineEpoll && b.SplicedBytes() == 0 {
		t.Error("b spliced nothing: the downstream died outside a splice")
	}
	waitFDs(t, fds)
}

// A reply whose records a relay refuses, after its block went into the
// relay's pipe: the block's data is dropped, the relay answers for the
// segment after it, and the blocks that follow get its answer too, never
// a byte of someone else's data.
func TestRefusedSplicedReply(t *testing.T) {
	end := chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		rec := chaintest.EndRecord("z")
		if v.Probe.Seq == 1 {
			rec.WaitForward = rec.Forward + time.Microsecond // a wait longer than its time: refused
		}
		return chaintest.Reply(v, req, frame.AppendHop(nil, &rec), 1)
	})
	b := chaintest.New(t, relay.Config{Name: "b", ForwardTo: end, Engine: relay.EngineEpoll})
	addr := serve(t, b, net.ListenConfig{})
	blocks := []block{randomBlock(200<<10, 21), randomBlock(1<<20, 22), randomBlock(1<<20, 23), randomBlock(100<<10, 24)}
	views, data, refusals := streamBlocks(t, addr, blocks, streamOptions{})
	checkEcho(t, blocks[:1], views[:1], data[:1], refusals[:1], 2)
	for i := 1; i < len(blocks); i++ {
		r := refusals[i]
		if r == nil || r.Name != "b" || r.Side != frame.SideDownstream || r.Reason != peer.ReasonBadFrame || len(data[i]) != 0 {
			t.Fatalf("block %d: refusal %+v with %d data bytes, want b refusing its next hop's reply", i, r, len(data[i]))
		}
	}
	if b.SplicedBytes() == 0 {
		t.Error("b spliced nothing")
	}
}
