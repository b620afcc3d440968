// Package chaintest starts relays inside a test process, on loopback ports
// the kernel picks, and stops them when the test ends.
//
// Only tests import it (internal/architecture_test.go); it may import
// anything, relay included.
package chaintest

import (
	"context"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/demo/delayproxy"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/relay"
)

// engine is the relay engine of the relays the running test starts.
var engine string

// ForEachEngine runs f as a subtest once per relay engine: every chain test
// must hold for both the epoll loop and the goroutines (TLS) engine.
func ForEachEngine(t *testing.T, f func(t *testing.T)) {
	for _, e := range []string{relay.EngineEpoll, relay.EngineGoroutines} {
		t.Run(e, func(t *testing.T) {
			engine = e
			t.Cleanup(func() { engine = "" })
			f(t)
		})
	}
}

// New is relay.New with the running test's engine.
func New(t testing.TB, cfg relay.Config) *relay.Server {
	t.Helper()
	if cfg.Engine == "" {
		cfg.Engine = engine
	}
	srv, err := relay.New(cfg)
	if err != nil {
		t.Fatalf("relay %s: %v", cfg.Name, err)
	}
	return srv
}

// StartRelay serves cfg on 127.0.0.1 and returns its address.
func StartRelay(t testing.TB, cfg relay.Config) string {
	t.Helper()
	return startRelay(t, cfg, net.ListenConfig{})
}

func startRelay(t testing.TB, cfg relay.Config, lc net.ListenConfig) string {
	t.Helper()
	srv := New(t, cfg)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay %s listen: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("relay %s: %v", cfg.Name, err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("relay %s did not stop within 10s", cfg.Name)
		}
	})
	return ln.Addr().String()
}

// ChainOptions shape a test chain.
type ChainOptions struct {
	// Template is every hop's config; Name and ForwardTo are set per hop.
	Template relay.Config
	// Configure, if set, changes a hop's config before it starts.
	Configure func(name string, cfg *relay.Config)
	// Front, if set, returns the address the hop before name should
	// forward to instead of name's own (to put a proxy in front of it).
	Front func(name, addr string) string
	// SmallBuffers gives every connection between hops 4 KiB socket
	// buffers (dialled and accepted), so that writes meet backpressure.
	SmallBuffers bool
}

// Chain starts relays names[0] (first hop) … names[len-1] (end host), each
// forwarding to the next, and returns the address of the first hop (or of
// what Front put in front of it).
func Chain(t testing.TB, o ChainOptions, names ...string) string {
	t.Helper()
	next := ""
	for i := len(names) - 1; i >= 0; i-- {
		cfg := o.Template
		cfg.Name = names[i]
		cfg.ForwardTo = next
		if o.Configure != nil {
			o.Configure(names[i], &cfg)
		}
		var lc net.ListenConfig
		if o.SmallBuffers {
			cfg.Dial = SmallBuffers
			lc.Control = smallBuffers
		}
		next = startRelay(t, cfg, lc)
		if o.Front != nil {
			next = o.Front(names[i], next)
		}
	}
	return next
}

// DelayProxy starts a delaying proxy in front of target, closed at the end
// of the test.
func DelayProxy(t testing.TB, target string, forward, back time.Duration) *delayproxy.Proxy {
	t.Helper()
	p, err := delayproxy.Start("127.0.0.1:0", target, forward, back)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// FreeAddr returns a loopback address nobody listens on (for refused
// connections): a port that was just free.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Silent accepts connections and never answers: a hung hop.
func Silent(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return Hold(t, ln)
}

// Hold accepts every connection on ln and holds it, unread and
// unanswered, until the test ends; it returns ln's address.
func Hold(t testing.TB, ln net.Listener) string {
	t.Helper()
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// Echo is a plain TCP echo server, the reference a delay is measured by.
func Echo(t testing.TB) string {
	t.Helper()
	return serve(t, echo)
}

// echo writes back what c sends until it closes or is idle for 30 s.
func echo(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		if c.SetDeadline(time.Now().Add(30*time.Second)) != nil {
			return
		}
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serve listens on a loopback port and runs handle on every connection
// (closing it after) until the test ends, which closes the connections
// still open and waits for their handlers. It returns the address.
func serve(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var (
		handlers sync.WaitGroup
		mu       sync.Mutex
		open     = map[net.Conn]struct{}{}
	)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				mu.Lock()
				for c := range open {
					c.Close()
				}
				mu.Unlock()
				handlers.Wait()
				return
			}
			mu.Lock()
			open[c] = struct{}{}
			mu.Unlock()
			handlers.Add(1)
			go func() {
				defer handlers.Done()
				handle(c)
				mu.Lock()
				delete(open, c)
				mu.Unlock()
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// SmallBuffers dials with 4 KiB socket buffers, so that a few frames fill
// them and every hop's writes meet backpressure (EAGAIN).
func SmallBuffers(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Control: smallBuffers}
	return d.DialContext(ctx, "tcp", addr)
}

// smallBuffers sets 4 KiB socket buffers; on a listener, accepted
// connections inherit them.
func smallBuffers(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096); serr == nil {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Scripted is an end host that answers every request with what answer
// builds from it: a misbehaving or hostile hop, for tests of what the
// chain makes of bytes nobody should send. It returns its address.
func Scripted(t testing.TB, answer func(req []byte, v frame.View) []byte) string {
	t.Helper()
	return serve(t, func(c net.Conn) { answerFrames(c, answer) })
}

// answerFrames reads frames from c (100 000 reads at most, each within
// 10 s) and writes what answer makes of each, until c closes or sends
// something that is not a frame.
func answerFrames(c net.Conn, answer func(req []byte, v frame.View) []byte) {
	r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
	defer r.Release()
	for i := 0; i < 100000; i++ {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := r.Fill(); err != nil {
			return
		}
		for {
			fr, err := r.Next()
			if err != nil || fr == nil {
				break
			}
			v, err := frame.Parse(fr, frame.DefaultMaxFrameBytes, frame.MaxHopsLimit)
			if err != nil {
				return
			}
			if _, err := c.Write(answer(fr, v)); err != nil {
				return
			}
		}
	}
}

// EndRecord is a plausible end host's record, for Scripted hops to alter.
func EndRecord(name string) frame.HopRecord {
	return frame.HopRecord{ID: 0x5c0ffee, Name: name, Flags: frame.RecEnd, Forward: 20 * time.Microsecond}
}

// Reply answers req with the given raw records (count of them), unsigned.
func Reply(v frame.View, req []byte, records []byte, count int) []byte {
	p := v.Probe
	return frame.AppendReply(nil, v.Header.Kind.ReplyKind(), p, v.Data(req), records, count, nil)
}
