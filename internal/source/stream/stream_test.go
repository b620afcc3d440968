package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/relay"
)

func send(t *testing.T, target string, in []byte, block int, keys frame.Keys) ([]byte, *Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	res, err := Send(ctx, bytes.NewReader(in), &out, Options{ForwardTo: target, Source: "a", BlockSize: block, Timeout: 5 * time.Second, Keys: keys})
	return out.Bytes(), res, err
}

func randomBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestStreamIsByteExact(t *testing.T) { chaintest.ForEachEngine(t, testStreamIsByteExact) }

func testStreamIsByteExact(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "c", "z")
	sizes := []int{0, 1, 511, 512, 513, 4096, 1 << 20, 3<<20 + 17}
	blocks := []int{1, 7, 512, 1000, 8192, 50000}
	for _, size := range sizes {
		for _, block := range blocks {
			if size > 1<<16 && block < 512 {
				continue // millions of frames; covered by the larger blocks
			}
			in := randomBytes(size, uint64(size*31+block))
			out, res, err := send(t, target, in, block, nil)
			if err != nil {
				t.Fatalf("size %d block %d: %v", size, block, err)
			}
			if !bytes.Equal(out, in) {
				t.Fatalf("size %d block %d: output differs from input (%d vs %d bytes)", size, block, len(out), len(in))
			}
			wantFrames := int64((size + block - 1) / block)
			if res.Frames != wantFrames || res.BytesConfirmed != int64(size) || res.BytesSent != int64(size) {
				t.Errorf("size %d block %d: %d frames %d/%d bytes, want %d frames", size, block, res.Frames, res.BytesConfirmed, res.BytesSent, wantFrames)
			}
		}
	}
}

func TestStreamStats(t *testing.T) { chaintest.ForEachEngine(t, testStreamStats) }

func testStreamStats(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{Template: relay.Config{Keys: frame.Keys{[]byte("stream-key-0123456789")}}}, "b", "c", "z")
	in := randomBytes(200000, 9)
	out, res, err := send(t, target, in, 512, frame.Keys{[]byte("stream-key-0123456789")})
	if err != nil || !bytes.Equal(out, in) {
		t.Fatalf("signed stream: %v (equal %v)", err, bytes.Equal(out, in))
	}
	var names []string
	for _, s := range res.Segments {
		names = append(names, s.From+">"+s.To)
		if s.RTT.Count != int(res.Frames) || s.RTT.Median <= 0 || s.P99 < s.RTT.Median {
			t.Errorf("segment %s>%s stats %+v p99 %v over %d frames", s.From, s.To, s.RTT, s.P99, res.Frames)
		}
	}
	if strings.Join(names, ",") != "a>b,b>c,c>z" {
		t.Errorf("segments %v", names)
	}
	var buf bytes.Buffer
	WriteStats(&buf, res)
	for _, want := range []string{"a -> b", "c -> z", "HOP (residence)", "200000 bytes"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("stats output lacks %q:\n%s", want, buf.String())
		}
	}
}

// slowReader hands out its data slowly so the stream is still running when
// the chain breaks.
type slowReader struct {
	data  []byte
	delay time.Duration
}

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	time.Sleep(r.delay)
	n := copy(p, r.data[:min(len(r.data), 1024)])
	r.data = r.data[n:]
	return n, nil
}

func TestStreamReportsConfirmedBytesWhenChainBreaks(t *testing.T) {
	chaintest.ForEachEngine(t, testStreamReportsConfirmedBytesWhenChainBreaks)
}

func testStreamReportsConfirmedBytesWhenChainBreaks(t *testing.T) {
	zCfg := relay.Config{Name: "z"}
	srv := chaintest.New(t, zCfg)
	z := chaintest.FreeAddr(t)
	ln, err := listen(z)
	if err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln) }()
	target := chaintest.Chain(t, chaintest.ChainOptions{Configure: func(name string, cfg *relay.Config) {
		if name == "c" {
			cfg.ForwardTo = z
		}
	}}, "b", "c")
	in := randomBytes(400*1024, 5)
	go func() { time.Sleep(150 * time.Millisecond); cancel() }()
	var out bytes.Buffer
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	res, err := Send(sctx, &slowReader{data: in, delay: time.Millisecond}, &out, Options{ForwardTo: target, Source: "a", BlockSize: 1024, Timeout: 2 * time.Second})
	<-done
	var serr *Error
	if !errors.As(err, &serr) {
		t.Fatalf("stream through a chain whose end died: err %v, want *Error", err)
	}
	if serr.Confirmed != int64(out.Len()) || serr.Confirmed >= int64(len(in)) || !bytes.Equal(out.Bytes(), in[:out.Len()]) {
		t.Errorf("confirmed %d, wrote %d of %d; output must be the confirmed prefix", serr.Confirmed, out.Len(), len(in))
	}
	if !strings.Contains(serr.Error(), "came back confirmed") || res == nil {
		t.Errorf("error %q does not say how much came back", serr.Error())
	}
	t.Logf("%v", serr)
}

func TestStreamOptions(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{ForwardTo: "x", Source: "a", BlockSize: 512, Timeout: time.Second}, "--forward-to"},
		{Options{ForwardTo: "h:1", Source: "a", BlockSize: 0, Timeout: time.Second}, "--stdin-block-size"},
		{Options{ForwardTo: "h:1", Source: "a", BlockSize: 65536, Timeout: time.Second, MaxFrameBytes: 65536}, "--relay.max-frame-bytes 65536"},
		{Options{ForwardTo: "h:1", Source: "a", BlockSize: 16<<20 + 1, Timeout: time.Second}, "at most 16 MiB"},
		{Options{Source: "a", BlockSize: 512, Timeout: time.Second}, "--forward-to is required"},
		{Options{ForwardTo: "h:1", Source: "a", BlockSize: 512}, "--timeout"},
	} {
		if err := tc.o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.o, err, tc.want)
		}
	}
}

func listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// slowWriter is a stdout that keeps pausing, so that backpressure reaches
// back through every relay to the end host: their writes hit EAGAIN.
type slowWriter struct {
	buf bytes.Buffer
}

func (w *slowWriter) Write(p []byte) (int, error) {
	// About 16 MB/s: far slower than the chain.
	time.Sleep(time.Duration(len(p)/16) * time.Microsecond)
	return w.buf.Write(p)
}

func TestStreamUnderBackpressure(t *testing.T) {
	chaintest.ForEachEngine(t, testStreamUnderBackpressure)
}

func testStreamUnderBackpressure(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{SmallBuffers: true}, "b", "c", "z")
	in := randomBytes(12<<20, 77)
	for _, block := range []int{512, 8192} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out := &slowWriter{}
		// Small socket buffers everywhere make the chain's writes stall
		// (EAGAIN) all the way back to the end host.
		_, err := Send(ctx, bytes.NewReader(in), out, Options{ForwardTo: target, Source: "a", BlockSize: block, Timeout: 10 * time.Second, Dial: chaintest.SmallBuffers})
		cancel()
		if err != nil {
			t.Fatalf("block %d: %v", block, err)
		}
		if !bytes.Equal(out.buf.Bytes(), in) {
			t.Fatalf("block %d: output differs from input under backpressure", block)
		}
	}
}

// FuzzStreamReply feeds arbitrary replies to the stream receiver: it must
// refuse what is not the expected block, never panic.
func FuzzStreamReply(f *testing.F) {
	h := frame.HopRecord{Name: "b", Flags: frame.RecEnd}
	f.Add(frame.AppendReply(nil, frame.KindStreamReply, frame.ProbeHeader{Seq: 0}, []byte("data"), frame.AppendHop(nil, &h), 1, nil))
	f.Add(frame.AppendErrorFrame(nil, &frame.ErrorRecord{Name: "c", Message: "m"}, nil))
	f.Add([]byte("SSEG"))
	// A hop claiming a day inside itself, around a round trip of 98 ns.
	b := frame.HopRecord{ID: 1, Name: "b", Forward: 12 * time.Hour, Downstream: time.Microsecond, Return: 12 * time.Hour}
	f.Add(frame.AppendReply(nil, frame.KindStreamReply, frame.ProbeHeader{Seq: 0}, []byte("data"), frame.AppendHop(frame.AppendHop(nil, &b), &h), 2, nil))
	f.Fuzz(func(t *testing.T, fr []byte) {
		s := &streamer{o: &Options{Source: "a", ForwardTo: "b:1", MaxFrameBytes: frame.DefaultMaxFrameBytes}, sign: frame.NewSigner(nil)}
		data, err := s.reply(fr, 0, 100, &sent{tBuild: 1, tOut: 2, size: 4})
		if err == nil && len(data) != 4 {
			t.Fatalf("accepted a reply with %d bytes for a 4-byte block", len(data))
		}
		// No hop claims more than its neighbour measured around it, so
		// no segment is negative and no residence over a day.
		res := s.result()
		for _, seg := range res.Segments {
			if seg.RTT.Min < 0 || seg.RTT.Max > 24*time.Hour {
				t.Fatalf("segment %s -> %s: %+v", seg.From, seg.To, seg.RTT)
			}
		}
		for _, h := range res.Residence {
			if h.Residence.Min < 0 || h.Residence.Max > 24*time.Hour {
				t.Fatalf("residence of %s: %+v", h.Name, h.Residence)
			}
		}
	})
}

// Blocks large enough to take the relays' pipes (frame.SpliceMinData and
// up, 16 MiB the largest) come back byte-exact through three relays, as
// the smaller ones do.
func TestStreamLargeBlocksByteExact(t *testing.T) {
	chaintest.ForEachEngine(t, testStreamLargeBlocksByteExact)
}

func testStreamLargeBlocksByteExact(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "c", "z")
	for _, tc := range []struct{ size, block int }{
		{1<<20 + 5, frame.SpliceMinData},
		{3<<20 + 17, 1 << 20},
		{17 << 20, 16 << 20},
		{100, 1 << 20},
	} {
		in := randomBytes(tc.size, uint64(tc.size))
		out, res, err := send(t, target, in, tc.block, nil)
		if err != nil {
			t.Fatalf("size %d block %d: %v", tc.size, tc.block, err)
		}
		if !bytes.Equal(out, in) || res.BytesConfirmed != int64(tc.size) {
			t.Fatalf("size %d block %d: output differs from input (%d vs %d bytes)", tc.size, tc.block, len(out), len(in))
		}
	}
}

// A signed stream signs on the sending goroutine and verifies on the
// receiving one at the same time: each has its own signer (one signer
// shared by both corrupted its hash state: a panic or a bad signature
// after a few hundred blocks).
func TestSignedStreamSendsAndReceivesAtOnce(t *testing.T) {
	keys := frame.Keys{[]byte("stream-key-0123456789")}
	target := chaintest.Chain(t, chaintest.ChainOptions{Template: relay.Config{Keys: keys}}, "b", "z")
	in := randomBytes(8<<20, 77)
	out, _, err := send(t, target, in, 8192, keys)
	if err != nil || !bytes.Equal(out, in) {
		t.Fatalf("signed stream of 8 MiB in 8 KiB blocks: %v (equal %v)", err, bytes.Equal(out, in))
	}
}

// An unsigned stream whose input is a regular file sends its large
// blocks' data with sendfile: byte-exact from wherever the file's offset
// stood, and the ordinary way where sendfile cannot serve (small blocks,
// signed streams, files with less than a large block left, pseudo-files
// whose size says nothing of their contents).
func TestStreamFromFile(t *testing.T) { chaintest.ForEachEngine(t, testStreamFromFile) }

func testStreamFromFile(t *testing.T) {
	keys := frame.Keys{[]byte("stream-key-0123456789")}
	plain := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "c", "z")
	signed := chaintest.Chain(t, chaintest.ChainOptions{Template: relay.Config{Keys: keys}}, "b", "z")
	for _, tc := range []struct {
		name         string
		size, skip   int // file size; bytes read off the file before the stream
		block        int
		keys         frame.Keys
		path         string // a file to send instead of a fresh one
		wantFromFile bool
	}{
		{name: "blocks of 256 KiB", size: 1<<20 + 5, block: fileSourceMin, wantFromFile: true},
		{name: "1 MiB blocks", size: 3<<20 + 17, block: 1 << 20, wantFromFile: true},
		{name: "smaller than a block", size: fileSourceMin + 100, block: 1 << 20, wantFromFile: true},
		{name: "less than a large block copies", size: fileSourceMin - 1, block: 1 << 20},
		{name: "from the file's offset", size: 2<<20 + 3, skip: 12345, block: 1 << 20, wantFromFile: true},
		{name: "small blocks copy", size: 1 << 20, block: 8192},
		{name: "signed copies", size: 2 << 20, block: 1 << 20, keys: keys},
		{name: "pseudo-file copies", path: "/proc/self/cmdline", block: 1 << 20},
		{name: "a sysfs file (4096 bytes said, a few there) copies", path: "/sys/class/net/lo/address", block: 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if _, err := os.Stat(path); path != "" && err != nil {
				t.Skipf("no %s here: %v", path, err)
			}
			if path == "" {
				path = t.TempDir() + "/in"
				if err := os.WriteFile(path, randomBytes(tc.size, uint64(tc.size)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			target := plain
			if tc.keys != nil {
				target = signed
			}
			res := sendFileChecked(t, target, path, tc.skip, tc.block, tc.keys)
			if res.FromFile != tc.wantFromFile {
				t.Errorf("FromFile %v, want %v", res.FromFile, tc.wantFromFile)
			}
		})
	}
}

// sendFileChecked streams the file at path, from byte skip on, and
// checks that what came back is byte-exact.
func sendFileChecked(t *testing.T, target, path string, skip, block int, keys frame.Keys) *Result {
	t.Helper()
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.ReadFull(f, make([]byte, skip)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	res, err := Send(ctx, f, &out, Options{ForwardTo: target, Source: "a", BlockSize: block, Timeout: 5 * time.Second, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	want := whole[skip:]
	if !bytes.Equal(out.Bytes(), want) || res.BytesSent != int64(len(want)) || res.BytesConfirmed != int64(len(want)) {
		t.Fatalf("output differs from the input: %d bytes back, %d sent, want %d", out.Len(), res.BytesSent, len(want))
	}
	if wantFrames := int64((len(want) + block - 1) / block); res.Frames != wantFrames {
		t.Errorf("%d frames, want %d", res.Frames, wantFrames)
	}
	return res
}

// A file that is shorter than its size said when its block was sent
// ends the stream with an error that says so, never with a short block.
func TestStreamFromShrinkingFile(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "z")
	path := t.TempDir() + "/in"
	if err := os.WriteFile(path, randomBytes(4<<20, 5), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := &streamer{o: &Options{ForwardTo: target, BlockSize: 1 << 20, Timeout: 5 * time.Second, Clock: clock.NewSystem()}}
	// The size taken when the stream starts, then the file shrinks.
	size := int64(4 << 20)
	if err := os.Truncate(path, 3<<20+100); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() { _, _ = io.Copy(io.Discard, conn) }() // the replies, so that the chain never stalls
	s.conn, s.sign, s.slots, s.stamps, s.abort = conn, frame.NewSigner(nil), make(chan struct{}, 8), make([]sent, 8), make(chan struct{})
	err = s.sendFile(f, conn.(*net.TCPConn), size)
	if err == nil || !strings.Contains(err.Error(), "ended 1048476 bytes early") {
		t.Fatalf("err %v, want the input ending early", err)
	}
	if s.sentBytes != 4<<20 {
		t.Errorf("%d bytes announced, want 4 MiB", s.sentBytes)
	}
}

// Files on /proc and /sys are never sent with sendfile, whatever size
// they claim; a file on an ordinary filesystem may be.
func TestOnPseudoFS(t *testing.T) {
	regular := t.TempDir() + "/f"
	if err := os.WriteFile(regular, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{"/proc/self/status": true, "/sys/class/net/lo/address": true, regular: false} {
		f, err := os.Open(path)
		if err != nil {
			t.Logf("skipped %s: %v", path, err)
			continue
		}
		if got := onPseudoFS(f); got != want {
			t.Errorf("%s on a pseudo-filesystem: %v, want %v", path, got, want)
		}
		f.Close()
	}
}
