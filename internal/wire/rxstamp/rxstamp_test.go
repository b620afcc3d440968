package rxstamp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var start = time.Now()

func mono() int64 { return int64(time.Since(start)) }

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// readStamped writes one message from the client after the reader is
// already waiting, and returns the server's stamp of it.
func readStamped(t *testing.T, client net.Conn, server net.Conn, delay time.Duration) (Stamp, int64) {
	t.Helper()
	go func() {
		time.Sleep(delay)
		client.Write([]byte("probe"))
	}()
	buf := make([]byte, 64)
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := server.Read(buf)
	after := mono()
	if err != nil || n != 5 {
		t.Fatalf("read: %d %v", n, err)
	}
	return Of(server).Last(), after
}

func TestConnStampsAreKernelReceipt(t *testing.T) {
	client, server := pair(t)
	conn := Wrap(server, Clocks{Mono: mono, MaxWait: 10 * time.Second})
	if Of(conn) == nil {
		t.Fatal("a TCP connection is not wrapped")
	}
	kernel := 0
	for i := 0; i < 20; i++ {
		st, after := readStamped(t, client, conn, time.Millisecond)
		if st.At > after {
			t.Fatalf("stamp %d after the read returned (%d)", st.At, after)
		}
		if st.Wait < 0 || st.Wait > 10*time.Second {
			t.Fatalf("wait %v out of range", st.Wait)
		}
		if st.Kernel {
			kernel++
		}
	}
	// Enabling timestamps flips a static key in a kernel work item: the
	// first reads may come unstamped, the later ones must not.
	if kernel < 10 {
		t.Fatalf("only %d of 20 reads had a kernel stamp", kernel)
	}
}

// A reader that is busy when data arrives sees the delay as its wait.
func TestWaitCoversTimeBeforeTheRead(t *testing.T) {
	client, server := pair(t)
	conn := Wrap(server, Clocks{Mono: mono, MaxWait: 10 * time.Second})
	readStamped(t, client, conn, 0) // warm the static key
	time.Sleep(50 * time.Millisecond)
	var st Stamp
	for i := 0; i < 5 && !st.Kernel; i++ {
		if _, err := client.Write([]byte("probe")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond) // the "hop" is busy elsewhere
		buf := make([]byte, 64)
		if _, err := conn.Read(buf); err != nil {
			t.Fatal(err)
		}
		st = Of(conn).Last()
	}
	if !st.Kernel {
		t.Skip("no kernel stamps on this kernel")
	}
	// Relation, not a window: the wait holds the whole sleep.
	if st.Wait < 30*time.Millisecond {
		t.Fatalf("wait %v shorter than the 30ms the data sat in the kernel", st.Wait)
	}
}

// A realtime step between the kernel's stamp and the reading after the
// read never becomes a negative or huge wait: the read time is used.
func TestClockStepIsDropped(t *testing.T) {
	for _, step := range []time.Duration{-time.Hour, -time.Second, time.Hour} {
		client, server := pair(t)
		real := func() int64 { return time.Now().UnixNano() + int64(step) }
		conn := Wrap(server, Clocks{Mono: mono, Real: real, MaxWait: 10 * time.Second})
		for i := 0; i < 10; i++ {
			st, after := readStamped(t, client, conn, time.Millisecond)
			if st.Kernel || st.Wait != 0 || st.At > after || after-st.At > int64(time.Second) {
				t.Fatalf("step %v: stamp %+v (read returned at %d): want the read time, no kernel stamp", step, st, after)
			}
		}
	}
}

func TestFdReaderDoesNotAllocate(t *testing.T) {
	client, server := pair(t)
	raw, err := server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	raw.Control(func(f uintptr) { fd, _ = unix.Dup(int(f)) })
	defer unix.Close(fd)
	if err := Enable(fd); err != nil {
		t.Fatal(err)
	}
	r := &FdReader{Clocks: Clocks{Mono: mono, MaxWait: time.Second}}
	buf := make([]byte, 64)
	msg := []byte("x")
	allocs := testing.AllocsPerRun(200, func() {
		client.Write(msg)
		for {
			n, err := r.Read(fd, buf)
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			if err != nil || n == 0 {
				t.Fatalf("read: %d %v", n, err)
			}
			return
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per read", allocs)
	}
}

func TestDeadlineAndEOF(t *testing.T) {
	client, server := pair(t)
	conn := Wrap(server, Clocks{Mono: mono, MaxWait: time.Second})
	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := conn.Read(make([]byte, 8))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("deadline: got %v", err)
	}
	client.Close()
	conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := conn.Read(make([]byte, 8)); err == nil || err.Error() != "EOF" {
		t.Fatalf("closed peer: got %v, want EOF", err)
	}
}

// TestWriteUnderBackpressure: the raw write keeps net.Conn's contract — a
// write larger than the socket buffers waits for the reader, a deadline
// ends it with the bytes written so far, and concurrent writers do not
// interleave their bytes.
func TestWriteUnderBackpressure(t *testing.T) {
	client, server := pair(t)
	if err := client.SetWriteBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	conn := Wrap(client, Clocks{Mono: mono, MaxWait: time.Second})

	big := make([]byte, 8<<20)
	conn.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := conn.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= len(big) {
		t.Fatalf("nobody reading: wrote %d of %d, err %v; want a part and the deadline", n, len(big), err)
	}
	if _, err := io.CopyN(io.Discard, server, int64(n)); err != nil {
		t.Fatal(err)
	}

	conn.SetWriteDeadline(time.Time{})
	const writers, size = 4, 1 << 20
	done := make(chan error, writers)
	for w := range writers {
		go func() {
			msg := bytes.Repeat([]byte{byte('a' + w)}, size)
			n, err := conn.Write(msg)
			if err == nil && n != size {
				err = fmt.Errorf("short write %d", n)
			}
			done <- err
		}()
	}
	got := make([]byte, writers*size)
	server.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	for range writers {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < len(got); i += size {
		if c := bytes.Count(got[i:i+size], got[i:i+1]); c != size {
			t.Fatalf("writes interleaved: block %d holds %d bytes of %q", i/size, c, got[i])
		}
	}

	server.Close()
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	var werr error
	for range 100 {
		if _, werr = conn.Write([]byte("after close")); werr != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if werr == nil {
		t.Fatal("writes to a closed peer kept succeeding")
	}
}

// Writev sends many buffers (more than one writev takes, empty ones among
// them, a large one that fills the socket) byte-exact and in order, waits
// on the poller when the socket is full, and keeps deadlines.
func TestWritevManyBuffersUnderBackpressure(t *testing.T) {
	client, server := pair(t)
	if err := client.SetWriteBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	conn := Wrap(client, Clocks{Mono: mono, MaxWait: time.Second}).(*Conn)

	var want bytes.Buffer
	var bufs [][]byte
	for i := range 3000 {
		b := []byte(fmt.Sprintf("[%d]", i))
		if i%7 == 0 {
			b = nil // empty buffers are skipped
		}
		if i == 1500 {
			b = bytes.Repeat([]byte{'x'}, 4<<20)
		}
		bufs = append(bufs, b)
		want.Write(b)
	}
	got := make(chan []byte, 1)
	go func() {
		server.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, _ := io.ReadAll(io.LimitReader(server, int64(want.Len())))
		got <- b
	}()
	conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
	n, err := conn.Writev(bufs)
	if err != nil || n != int64(want.Len()) {
		t.Fatalf("Writev: %d of %d bytes, %v", n, want.Len(), err)
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("the reader got %d bytes, not the %d written in order", len(b), want.Len())
	}

	// Nobody reading: the deadline ends the wait with what was written.
	conn.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err = conn.Writev([][]byte{make([]byte, 8<<20), []byte("tail")})
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= 8<<20 {
		t.Fatalf("nobody reading: wrote %d, err %v; want a part and the deadline", n, err)
	}
}

// A pause between the two clock readings (the thread preempted on a busy
// CPU) can only make a stamp later than the kernel's receipt, never
// earlier: a segment's rtt may come out longer by it, never shorter, so
// the segment arithmetic's tolerance need not cover preemptions.
func TestPauseBetweenClockReadsNeverMovesTheStampEarlier(t *testing.T) {
	const offset = int64(1e18) // realtime = monotonic + offset
	const pause = int64(3 * time.Millisecond)
	now := int64(1e12)
	tick := func() int64 { v := now; now += pause; return v }
	c := Clocks{Mono: tick, Real: func() int64 { return tick() + offset }, MaxWait: time.Second}
	received := now - int64(time.Millisecond) // on the monotonic clock
	st := c.stamp(received + offset)
	if !st.Kernel || st.At < received {
		t.Fatalf("stamp %+v: before the kernel's receipt at %d by %v", st, received, time.Duration(received-st.At))
	}
}
