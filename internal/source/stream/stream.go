// Package stream is the original tool's main mode: it pushes a byte stream
// (stdin) through the chain in blocks, each block carrying the hops'
// performance records, and writes what comes back — byte-identical — to
// stdout, with per-segment timing statistics on the side.
//
// Layering (internal/architecture_test.go): floor 3; it may import timing,
// internal/wire and internal/host, never relay, snmp, collector,
// internal/output or internal/exporter.
package stream

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/source/timing"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/transport"
)

// DefaultBlockSize is the original tool's stdin block size.
const DefaultBlockSize = 512

// Options describe one stream.
type Options struct {
	// ForwardTo is the first hop.
	ForwardTo string
	// Source names this end in the statistics.
	Source    string
	BlockSize int
	// Timeout bounds each operation: the connect, each write, and the wait
	// for the next reply while replies are outstanding.
	Timeout       time.Duration
	MaxFrameBytes int
	Keys          frame.Keys
	Clock         clock.Clock
	// Dial opens the TCP connection to the first hop (nil: plainly); TLS,
	// when set, makes it TLS.
	Dial   func(ctx context.Context, address string) (net.Conn, error)
	TLS    *tls.Config
	Logger *slog.Logger
}

// Validate reports the first bad option.
func (o *Options) Validate() error {
	if o.ForwardTo == "" {
		return errors.New("--forward-to is required: the first hop of the chain, host:port")
	}
	if err := peer.ValidateAddress(o.ForwardTo); err != nil {
		return fmt.Errorf("--forward-to: %w", err)
	}
	if err := peer.ValidateName(o.Source); err != nil {
		return err
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout %v must be positive", o.Timeout)
	}
	maxBlock := min(frame.MaxBlockBytes, o.maxFrame()-frame.Overhead(frame.DefaultMaxHops))
	if o.BlockSize < 1 || o.BlockSize > maxBlock {
		return fmt.Errorf("--stdin-block-size %d out of range: use 1 to %d (at most 16 MiB, and what fits --relay.max-frame-bytes %d with the records of %d hops)",
			o.BlockSize, maxBlock, o.maxFrame(), frame.DefaultMaxHops)
	}
	return nil
}

func (o *Options) maxFrame() int {
	if o.MaxFrameBytes > 0 {
		return o.MaxFrameBytes
	}
	return frame.DefaultMaxFrameBytes
}

// Result is what a stream measured.
type Result struct {
	// BytesSent is what was read from the input and sent.
	BytesSent int64
	// BytesConfirmed is what came back and was written to the output.
	BytesConfirmed int64
	Frames         int64
	Duration       time.Duration
	Hops           []string
	Segments       []SegmentStats
	Residence      []HopStats
	// FromFile: the input was a regular file whose blocks' data went to
	// the socket with sendfile(2), without passing through the process
	// (unsigned streams of blocks from 256 KiB over plain TCP).
	FromFile bool
}

// SegmentStats summarises one segment over the stream's blocks.
type SegmentStats struct {
	From, To string
	RTT      timing.Stats
	P99      time.Duration
}

// HopStats summarises one hop's residence and the part of it frames
// waited in the kernel before the hop read them.
type HopStats struct {
	Name      string
	Residence timing.Stats
	P99       time.Duration
	Wait      timing.Stats
}

// Error is a stream that did not come back whole; it says how much did.
type Error struct {
	Sent, Confirmed int64
	Err             error
}

func (e *Error) Error() string {
	return fmt.Sprintf("stream incomplete: %d of %d bytes sent came back confirmed: %v", e.Confirmed, e.Sent, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

type sent struct {
	tBuild, tOut int64
	size         int
}

// Send streams in through the chain and writes what comes back to out. It
// returns an *Error unless every byte came back in order.
func Send(ctx context.Context, in io.Reader, out io.Writer, o Options) (*Result, error) {
	if o.Clock == nil {
		o.Clock = clock.NewSystem()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	dialer := transport.Dialer{Dial: o.Dial, TLS: o.TLS, Clocks: rxstamp.Clocks{Mono: o.Clock.Monotonic, MaxWait: o.Timeout}}
	dctx, cancel := context.WithTimeout(ctx, o.Timeout)
	conn, err := dialer.DialContext(dctx, o.ForwardTo)
	cancel()
	if err != nil {
		return nil, &Error{Err: fmt.Errorf("connect to %s: %w", o.ForwardTo, err)}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	window := min(frame.StreamWindow, max(4, (8<<20)/o.BlockSize))
	s := &streamer{o: &o, conn: conn, rx: rxstamp.Of(conn), id: peer.NewID(), sign: frame.NewSigner(o.Keys), verify: frame.NewSigner(o.Keys), slots: make(chan struct{}, window),
		stamps: make([]sent, window), start: time.Now(), abort: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.send(in); err != nil {
			s.sendFailed(err)
		}
	}()
	if err := s.receive(out); err != nil {
		s.fail(s.explain(err))
	}
	wg.Wait()
	if err := s.sendError(); err != nil {
		s.fail(err)
	}
	res := s.result()
	if s.firstErr != nil {
		return res, &Error{Sent: res.BytesSent, Confirmed: res.BytesConfirmed, Err: s.firstErr}
	}
	return res, nil
}

// sendGrace is how long the receiver still reads after a write failed:
// the chain's answer (an error record saying why a hop refused the
// stream) says more than the write error does.
const sendGrace = 2 * time.Second

// sendFailed records why the sender stopped; the receiver goes on for at
// most sendGrace, then the stream ends with this error unless the chain
// said something better.
func (s *streamer) sendFailed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sendErr == nil {
		s.sendErr, s.sendFailedAt = err, time.Now()
	}
}

func (s *streamer) sendError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sendErr
}

// readDeadline is the receiver's next read deadline.
func (s *streamer) readDeadline() time.Time {
	d := time.Now().Add(s.o.Timeout)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sendErr != nil {
		if g := s.sendFailedAt.Add(sendGrace); g.Before(d) {
			d = g
		}
	}
	return d
}

// explain prefers the sender's error over the receiver's when the
// receiver only ran out of replies because the sender had stopped.
func (s *streamer) explain(err error) error {
	sendErr := s.sendError()
	if sendErr == nil {
		return err
	}
	switch peer.Classify(err) {
	case peer.ReasonTimeout, peer.ReasonClosed, peer.ReasonReset:
		return sendErr
	}
	return err
}

// fail records the first error of either side and stops the other one.
func (s *streamer) fail(err error) {
	s.failOnce.Do(func() {
		s.firstErr = err
		close(s.abort)
		_ = s.conn.SetDeadline(time.Now()) // wakes the other side; closing follows
	})
}

type streamer struct {
	o    *Options
	conn net.Conn
	rx   *rxstamp.Conn
	id   uint64
	// sign signs what send writes, verify checks what receive reads: a
	// Signer keeps hash state and serves one goroutine.
	sign, verify *frame.Signer
	slots        chan struct{}
	abort        chan struct{}
	start        time.Time

	failOnce sync.Once
	firstErr error
	flushErr error  // the sender's, when a write failed while it waited for the window
	stamps   []sent // by seq % window

	sendErr      error // guarded by mu
	sendFailedAt time.Time

	mu        sync.Mutex
	sentBytes int64
	sentN     uint64
	done      bool // the sender reached the end of the input
	fromFile  bool // the data went from the input file with sendfile

	confirmed int64
	frames    int64
	chain     []peer.Hop // hops in chain order as first seen, the source first
	segs      map[[2]uint64]*timing.Accumulator
	segOrder  [][2]uint64
	res       map[uint64]*timing.Accumulator
	waits     map[uint64]*timing.Accumulator
	path      *path
	hops      []timing.Hop // scratch, reused per reply
	ids       []uint64     // scratch, reused per reply
	names     [][]byte     // scratch, reused per reply
	hopWaits  []time.Duration
	rtts      []time.Duration // scratch, reused per reply
}

// send reads blocks from in and writes them as frames, several per write
// when the input has more ready, never more than the window in flight.
func (s *streamer) send(in io.Reader) error {
	if f, tcp, size, ok := s.fileSource(in); ok {
		return s.sendFile(f, tcp, size)
	}
	br := bufio.NewReaderSize(in, max(256<<10, s.o.BlockSize))
	var buf []byte
	window := uint64(len(s.stamps))
	var seq uint64
	pending := 0
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		tOut := s.o.Clock.Monotonic()
		s.mu.Lock()
		for k := 0; k < pending; k++ {
			s.stamps[(seq-uint64(pending)+uint64(k))%window].tOut = tOut
		}
		s.sentN = seq
		s.mu.Unlock()
		pending = 0
		if err := s.conn.SetWriteDeadline(time.Now().Add(s.o.Timeout)); err != nil {
			return err
		}
		_, err := s.conn.Write(buf)
		buf = buf[:0]
		return err
	}
	trailer := frame.PathEntryLen + s.sign.TrailerLen()
	for {
		// A slot first, so that a block read is a block sent: with the
		// window full, what is built goes out, then the block waits.
		if !s.takeSlot(flush) {
			return s.flushErr
		}
		// The block is read straight into its frame; the buffer is
		// reused, never cleared.
		start := len(buf)
		size := frame.MinFrameLen + s.o.BlockSize + trailer
		buf = slices.Grow(buf, size)[:start+frame.MinFrameLen+s.o.BlockSize]
		n, rerr := io.ReadFull(br, buf[start+frame.MinFrameLen:])
		buf = buf[:start+frame.MinFrameLen+n]
		if n == 0 {
			buf = buf[:start]
			<-s.slots
		} else {
			s.mu.Lock()
			s.stamps[seq%window] = sent{tBuild: s.o.Clock.Monotonic(), size: n}
			s.mu.Unlock()
			s.putHead(buf[start:], seq, n, trailer)
			buf = binary.BigEndian.AppendUint64(buf, s.id)
			buf = append(buf, s.sign.Sign(buf[start:])...)
			seq++
			pending++
			s.mu.Lock()
			s.sentBytes += int64(n)
			s.mu.Unlock()
		}
		if rerr != nil && !errors.Is(rerr, io.ErrUnexpectedEOF) && !errors.Is(rerr, io.EOF) {
			// What was read still goes out: nothing read is lost.
			if err := flush(); err != nil {
				return fmt.Errorf("read input: %w (and write to %s: %v)", rerr, s.o.ForwardTo, err)
			}
			return fmt.Errorf("read input: %w", rerr)
		}
		last := rerr != nil
		if last || br.Buffered() < s.o.BlockSize || len(buf) >= 256<<10 {
			if err := flush(); err != nil {
				return fmt.Errorf("write to %s: %w", s.o.ForwardTo, err)
			}
		}
		if last {
			s.mu.Lock()
			s.done = true
			s.mu.Unlock()
			if tc, ok := s.conn.(interface{ CloseWrite() error }); ok {
				return tc.CloseWrite()
			}
			return nil
		}
	}
}

// putHead writes the head of block seq, n bytes of data followed by
// trailer bytes (its path entry and signature), into dst.
func (s *streamer) putHead(dst []byte, seq uint64, n, trailer int) {
	frame.PutHeader(dst, frame.Header{Kind: frame.KindStreamRequest, Flags: s.sign.HeaderFlags(),
		Length: uint32(frame.ProbeHdrLen + n + trailer)})
	frame.PutProbeHeader(dst[frame.HeaderLen:], frame.ProbeHeader{Seq: seq, Count: 1,
		BudgetMicros: uint32(s.o.Timeout / time.Microsecond), DataLen: uint32(n)})
}

// takeSlot takes a place in the window for the next block; when the
// window is full it first sends what is built (flush), then waits. It
// reports false when the stream was aborted (flushErr says why, nil when
// the other side stopped it).
func (s *streamer) takeSlot(flush func() error) bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
	}
	if err := flush(); err != nil {
		s.flushErr = fmt.Errorf("write to %s: %w", s.o.ForwardTo, err)
		return false
	}
	select {
	case s.slots <- struct{}{}:
		return true
	case <-s.abort:
		return false
	}
}

// receive reads replies in order and writes their data to out; what came
// back confirmed reaches out even when the stream fails.
func (s *streamer) receive(out io.Writer) error {
	bw := bufio.NewWriterSize(out, 256<<10)
	err := s.receiveInto(bw)
	if ferr := bw.Flush(); ferr != nil && err == nil {
		err = fmt.Errorf("write output: %w", ferr)
	}
	return err
}

// receiveInto reads replies until every block sent came back, the
// stream is aborted, or the chain fails.
func (s *streamer) receiveInto(bw *bufio.Writer) error {
	rd := frame.NewReader(s.conn, s.o.maxFrame())
	defer rd.Release()
	var next uint64
	for {
		if s.allBack(next) {
			// Everything came back; the chain closes behind us.
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
			return nil
		}
		select {
		case <-s.abort:
			return nil
		default:
		}
		// Always a deadline: the sender may put blocks in flight while
		// this waits; an expiry with nothing outstanding just goes round.
		_ = s.conn.SetReadDeadline(s.readDeadline())
		if err := rd.Fill(); err != nil {
			if errors.Is(err, io.EOF) && s.allBack(next) {
				return bw.Flush()
			}
			if isDeadline(err) && s.outstanding(next) == 0 {
				continue
			}
			return s.readError(err, next)
		}
		tIn := s.o.Clock.Monotonic()
		if s.rx != nil {
			tIn = s.rx.Last().At
		}
		var err error
		if next, err = s.takeReplies(rd, bw, next, tIn); err != nil {
			return err
		}
	}
}

// allBack: the sender is done and every block it sent came back.
func (s *streamer) allBack(next uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done && next == s.sentN
}

// readError says why reading replies failed, with next the first block
// not yet back.
func (s *streamer) readError(err error, next uint64) error {
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%s closed the connection with %d blocks outstanding: %w", s.o.ForwardTo, s.outstanding(next), err)
	case isDeadline(err):
		return fmt.Errorf("no reply from the chain within %s (--timeout): %w", s.o.Timeout, err)
	}
	return fmt.Errorf("read from %s: %w", s.o.ForwardTo, err)
}

// takeReplies checks every whole reply rd holds, received at tIn, and
// writes its data to bw; it returns the next block expected.
func (s *streamer) takeReplies(rd *frame.Reader, bw *bufio.Writer, next uint64, tIn int64) (uint64, error) {
	window := uint64(len(s.stamps))
	for {
		fr, err := rd.Next()
		if err != nil {
			return next, fmt.Errorf("reply from %s: %w", s.o.ForwardTo, err)
		}
		if fr == nil {
			return next, nil
		}
		s.mu.Lock()
		st := s.stamps[next%window]
		s.mu.Unlock()
		data, err := s.reply(fr, next, tIn, &st)
		if err != nil {
			return next, err
		}
		if _, err := bw.Write(data); err != nil {
			return next, fmt.Errorf("write output: %w", err)
		}
		s.mu.Lock()
		s.confirmed += int64(len(data))
		s.mu.Unlock()
		s.frames++
		next++
		<-s.slots
	}
}

func (s *streamer) outstanding(next uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sentN - next
}

// reply checks one reply, by the rules every receiver of replies applies
// (frame.CheckReply), and records its timing; it returns the data.
func (s *streamer) reply(fr []byte, seq uint64, tIn int64, st *sent) ([]byte, error) {
	rep, err := frame.CheckReply(fr, s.verify, s.o.maxFrame(), frame.Expect{Request: frame.KindStreamRequest, Seq: seq})
	if rec := rep.Refusal; rec != nil {
		if rep.Unverified {
			return nil, fmt.Errorf("reply from %s: %w; the unverified error frame from %s said: %s", s.o.ForwardTo, err, rec.Name, rec.Message)
		}
		return nil, fmt.Errorf("%s refused the stream (%s): %s", rec.Name, rec.Reason, rec.Message)
	}
	if err != nil {
		return nil, fmt.Errorf("reply from %s: %w", s.o.ForwardTo, err)
	}
	v := rep.View
	// The source's own times, then every hop's, read in place.
	tIn = max(tIn, st.tOut)
	hops := append(s.hops[:0], timing.Hop{Forward: time.Duration(st.tOut - st.tBuild), Downstream: time.Duration(tIn - st.tOut)})
	s.ids, s.names, s.hopWaits = append(s.ids[:0], s.id), append(s.names[:0], nil), append(s.hopWaits[:0], 0)
	it := frame.NewRecordIter(v.Tail(fr))
	stripped := false
	for {
		kind, rec, ok := it.Next()
		if !ok {
			break
		}
		if kind == frame.RecordError {
			recs, _ := frame.ParseRecords(v.Tail(fr), int(v.Probe.Count))
			e := recs[len(recs)-1].Err
			return nil, fmt.Errorf("segment %s -> %s failed (%s): %s", e.Name, e.Peer, e.Reason, e.Message)
		}
		ht := frame.ReadHopTimes(rec)
		hops = append(hops, timing.Hop{Forward: ht.Forward, Downstream: ht.Downstream, Return: ht.Return})
		s.ids = append(s.ids, ht.ID)
		s.names = append(s.names, ht.Name)
		s.hopWaits = append(s.hopWaits, ht.WaitForward+ht.WaitReturn)
		stripped = ht.Flags&frame.RecStripped != 0
	}
	if stripped {
		hops = append(hops, timing.Hop{})
		s.ids = append(s.ids, 0)
		s.names = append(s.names, hiddenName)
		s.hopWaits = append(s.hopWaits, 0)
	}
	s.hops = hops
	if int(v.Probe.DataLen) != st.size {
		return nil, fmt.Errorf("block %d came back with %d bytes, %d sent", seq, v.Probe.DataLen, st.size)
	}
	// Every segment is checked (timing.SegmentRTT: no hop claims more
	// than its near neighbour measured around it) before any is recorded,
	// then held hop by hop to what encloses it, as every output counts
	// it (timing.Hold).
	for i := 0; i+1 < len(hops); i++ {
		if _, err := timing.SegmentRTT(hops[i], hops[i+1]); err != nil {
			return nil, s.overclaimed(seq, i+1, err)
		}
	}
	rtts := s.rtts[:0]
	for i := 0; i+1 < len(hops); i++ {
		var rtt time.Duration
		hops[i+1], rtt = timing.Hold(hops[i], hops[i+1])
		rtts = append(rtts, rtt)
	}
	s.rtts = rtts
	p := s.pathFor(s.ids, s.names)
	for i, rtt := range rtts {
		p.segs[i].Add(rtt)
	}
	if seq > 0 {
		// The first block opened the downstream connections: its
		// residences include the dials.
		for i, h := range hops {
			p.res[i].Add(h.Residence())
			p.waits[i].Add(s.hopWaits[i])
		}
	}
	return v.Data(fr), nil
}

var hiddenName = []byte("hidden")

// errBadFrame classifies a reply refused by the source (peer.Classify).
var errBadFrame = peer.NewError(peer.ReasonBadFrame, peer.ReasonBadFrame.String())

// overclaimed is the stream's end when the record of the hop at position
// far claims more time than its near neighbour measured around it:
// bad_frame, naming the hop.
func (s *streamer) overclaimed(seq uint64, far int, err error) error {
	var oc *timing.Overclaim
	if errors.As(err, &oc) {
		oc.Far, oc.Name, oc.Near = far, string(s.names[far]), string(s.names[far-1])
		if far == 1 {
			oc.Near = s.o.Source
		}
	}
	return fmt.Errorf("%w: reply to block %d from %s: the record of hop %d (%s) was refused: %w", errBadFrame, seq, s.o.ForwardTo, far, s.names[far], err)
}

// path is the chain as the replies identify it, with its accumulators by
// position, so that a reply from the same chain costs no map lookups.
type path struct {
	ids   []uint64 // hop identities, the source first
	segs  []*timing.Accumulator
	res   []*timing.Accumulator
	waits []*timing.Accumulator
}

// pathFor returns the accumulators for a reply whose hops are ids (names
// label them; the source's name is the stream's).
func (s *streamer) pathFor(ids []uint64, names [][]byte) *path {
	if p := s.path; p != nil && slices.Equal(p.ids, ids) {
		return p
	}
	p := &path{ids: slices.Clone(ids)}
	if s.segs == nil {
		s.segs = map[[2]uint64]*timing.Accumulator{}
		s.res = map[uint64]*timing.Accumulator{}
		s.waits = map[uint64]*timing.Accumulator{}
	}
	for i, id := range ids {
		name := s.o.Source
		if i > 0 {
			name = string(names[i])
		}
		acc := s.res[id]
		if acc == nil {
			acc = &timing.Accumulator{}
			s.res[id] = acc
			s.waits[id] = &timing.Accumulator{}
			s.chain = append(s.chain, peer.Hop{ID: id, Name: name})
		}
		p.res = append(p.res, acc)
		p.waits = append(p.waits, s.waits[id])
		if i == 0 {
			continue
		}
		key := [2]uint64{ids[i-1], id}
		seg := s.segs[key]
		if seg == nil {
			seg = &timing.Accumulator{}
			s.segs[key] = seg
			s.segOrder = append(s.segOrder, key)
		}
		p.segs = append(p.segs, seg)
	}
	s.path = p
	return p
}

func (s *streamer) result() *Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &Result{BytesSent: s.sentBytes, BytesConfirmed: s.confirmed, Frames: s.frames, Duration: time.Since(s.start), FromFile: s.fromFile}
	labels, _ := peer.Labels(s.chain)
	label := make(map[uint64]string, len(labels))
	for i, h := range s.chain {
		label[h.ID] = labels[i]
	}
	r.Hops = labels
	for _, key := range s.segOrder {
		acc := s.segs[key]
		r.Segments = append(r.Segments, SegmentStats{From: label[key[0]], To: label[key[1]], RTT: acc.Stats(), P99: acc.Quantile(0.99)})
	}
	for i, h := range s.chain {
		if acc := s.res[h.ID]; acc != nil {
			w := s.waits[h.ID]
			r.Residence = append(r.Residence, HopStats{Name: labels[i], Residence: acc.Stats(), P99: acc.Quantile(0.99), Wait: w.Stats()})
		}
	}
	return r
}

// WriteStats prints the per-segment and per-hop statistics as a table.
func WriteStats(w io.Writer, r *Result) error {
	var b strings.Builder
	secs := r.Duration.Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(r.BytesConfirmed) / secs / 1e6
	}
	fmt.Fprintf(&b, "stream: %d bytes in %d blocks, %d confirmed, %.3fs, %.1f MB/s\n", r.BytesSent, r.Frames, r.BytesConfirmed, secs, rate)
	if len(r.Segments) > 0 {
		fmt.Fprintf(&b, "%-24s %10s %10s %10s %10s %10s %10s\n", "SEGMENT", "BLOCKS", "MIN", "MEDIAN", "P99", "MAX", "JITTER")
		for _, s := range r.Segments {
			fmt.Fprintf(&b, "%-24s %10d %10s %10s %10s %10s %10s\n", s.From+" -> "+s.To, s.RTT.Count,
				ms(s.RTT.Min), ms(s.RTT.Median), ms(s.P99), ms(s.RTT.Max), ms(s.RTT.Jitter))
		}
		fmt.Fprintf(&b, "%-24s %10s %10s %10s %10s %10s %10s\n", "HOP (residence)", "BLOCKS", "MIN", "MEDIAN", "P99", "MAX", "WAIT")
		for _, h := range r.Residence {
			fmt.Fprintf(&b, "%-24s %10d %10s %10s %10s %10s %10s\n", h.Name, h.Residence.Count, ms(h.Residence.Min), ms(h.Residence.Median), ms(h.P99), ms(h.Residence.Max), ms(h.Wait.Median))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3fms", float64(d)/1e6) }

func isDeadline(err error) bool { return peer.Classify(err) == peer.ReasonTimeout }

// fileSourceMin is the block size from which an unsigned stream whose input
// is a regular file sends its blocks' data with sendfile(2): the kernel
// passes the file's pages to the socket instead of copying them twice
// (into the process, then into the socket). Below it the extra system
// calls per block (head, data, tail) cost more than the copies.
const fileSourceMin = 256 << 10

// fileSource reports whether the stream's blocks can be sent from in with
// sendfile: in is a regular file, the stream unsigned (a signature must
// read the data) and the connection plain TCP (TLS encrypts in the
// process). size is the file's size now; a file that grows while it is
// sent is sent as far as it reaches when the last block before its old
// end is out, and one that shrinks ends the stream with an error (a
// block's length is in its head, written before its data).
func (s *streamer) fileSource(in io.Reader) (*os.File, *net.TCPConn, int64, bool) {
	f, ok := in.(*os.File)
	if !ok || s.o.BlockSize < fileSourceMin || s.sign.TrailerLen() != 0 {
		return nil, nil, 0, false
	}
	rx := rxstamp.Of(s.conn)
	if rx == nil || s.conn != net.Conn(rx) {
		return nil, nil, 0, false
	}
	// A pseudo-file's size says nothing of what a read returns (/proc:
	// 0, /sys: 4096 for a few bytes): only files with at least a large
	// block left go by sendfile, the rest is read the ordinary way.
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil, nil, 0, false
	}
	if pos, err := f.Seek(0, io.SeekCurrent); err != nil || st.Size()-pos < fileSourceMin || onPseudoFS(f) {
		return nil, nil, 0, false
	}
	return f, rx.Unwrap(), st.Size(), true
}

// sendFile is send for a regular file (fileSource): each block's head is
// written with the previous block's tail, then its data goes from the
// file to the socket with sendfile; the window rules are send's.
func (s *streamer) sendFile(f *os.File, tcp *net.TCPConn, size int64) error {
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("read input: %w", err)
	}
	window := uint64(len(s.stamps))
	var seq uint64
	small := make([]byte, 0, 2*frame.MinFrameLen)
	flush := func() error {
		if len(small) == 0 {
			return nil
		}
		if err := s.conn.SetWriteDeadline(time.Now().Add(s.o.Timeout)); err != nil {
			return err
		}
		_, err := s.conn.Write(small)
		small = small[:0]
		return err
	}
	lr := &io.LimitedReader{R: f}
	s.mu.Lock()
	s.fromFile = true
	s.mu.Unlock()
	for {
		if !s.takeSlot(flush) {
			return s.flushErr
		}
		if pos >= size {
			// The file may have grown since.
			if st, err := f.Stat(); err == nil {
				size = st.Size()
			}
		}
		n := min(int64(s.o.BlockSize), size-pos)
		if n <= 0 {
			<-s.slots
			if err := flush(); err != nil {
				return fmt.Errorf("write to %s: %w", s.o.ForwardTo, err)
			}
			s.mu.Lock()
			s.done = true
			s.mu.Unlock()
			return tcp.CloseWrite()
		}
		tOut := s.o.Clock.Monotonic()
		s.mu.Lock()
		s.stamps[seq%window] = sent{tBuild: tOut, tOut: tOut, size: int(n)}
		s.sentN = seq + 1
		s.sentBytes += n
		s.mu.Unlock()
		start := len(small)
		small = small[:start+frame.MinFrameLen]
		s.putHead(small[start:], seq, int(n), frame.PathEntryLen)
		if err := flush(); err != nil {
			return fmt.Errorf("write to %s: %w", s.o.ForwardTo, err)
		}
		if err := tcp.SetWriteDeadline(time.Now().Add(s.o.Timeout)); err != nil {
			return err
		}
		lr.N = n
		m, err := tcp.ReadFrom(lr)
		if err == nil && m < n {
			err = fmt.Errorf("the input file ended %d bytes early (shortened while being read)", n-m)
		}
		if err != nil {
			return fmt.Errorf("send input to %s: %w", s.o.ForwardTo, err)
		}
		pos += n
		small = binary.BigEndian.AppendUint64(small, s.id)
		seq++
	}
}

// onPseudoFS says whether f is on a filesystem whose files' sizes say
// nothing of their contents (/proc/kcore, a PCI device's rom in /sys):
// such a file is read, never sent with sendfile; true when unknown.
func onPseudoFS(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return true
	}
	var st unix.Statfs_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstatfs(int(fd), &st) }); err != nil || serr != nil {
		return true
	}
	switch int64(st.Type) {
	case unix.PROC_SUPER_MAGIC, unix.SYSFS_MAGIC, unix.DEBUGFS_MAGIC, unix.TRACEFS_MAGIC, unix.SECURITYFS_MAGIC:
		return true
	}
	return false
}
