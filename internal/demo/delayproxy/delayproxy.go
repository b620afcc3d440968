// Package delayproxy is a TCP proxy that delays every chunk by a fixed time
// in each direction: a slow segment on loopback without root or tc, for the
// demo and for tests that check where the segment arithmetic puts a delay.
//
// Layering (internal/architecture_test.go): floor 6, with the demo; it
// imports nothing of the project, so the test kit and the integration
// tests use it too.
package delayproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Proxy forwards connections on its listener to Target, delaying the data.
type Proxy struct {
	ln      net.Listener
	target  atomic.Pointer[string]
	forward atomic.Int64 // ns, client → target
	back    atomic.Int64 // ns, target → client
	// blackHole drops chunks larger than this many bytes (0: none), the
	// way a path with a broken MTU drops large packets.
	blackHole atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	done  chan struct{}
}

// Start listens on listen (e.g. "127.0.0.1:0") and forwards to target
// with the given one-way delays.
func Start(listen, target string, forward, back time.Duration) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("delay proxy listen %s: %w", listen, err)
	}
	p := &Proxy{ln: ln, conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
	p.SetTarget(target)
	p.SetDelay(forward, back)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay changes the delays for data read from now on.
func (p *Proxy) SetDelay(forward, back time.Duration) {
	p.forward.Store(int64(forward))
	p.back.Store(int64(back))
}

// SetTarget changes where new connections go.
func (p *Proxy) SetTarget(target string) { p.target.Store(&target) }

// SetBlackHole drops every chunk larger than n bytes (0 turns it off).
func (p *Proxy) SetBlackHole(n int) { p.blackHole.Store(int64(n)) }

// Close stops accepting, closes every connection and waits.
func (p *Proxy) Close() {
	select {
	case <-p.done:
		return
	default:
	}
	close(p.done)
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		c.Close()
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var d net.Dialer
			t, err := d.DialContext(ctx, "tcp", *p.target.Load())
			cancel()
			if err != nil {
				return
			}
			if !p.track(t) {
				return
			}
			defer p.untrack(t)
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); p.pipe(t, c, &p.forward) }()
			go func() { defer wg.Done(); p.pipe(c, t, &p.back) }()
			wg.Wait()
		}()
	}
}

type chunk struct {
	data []byte
	due  time.Time
	eof  bool
}

// pipe copies src to dst, each chunk released delay after it was read.
func (p *Proxy) pipe(dst, src net.Conn, delay *atomic.Int64) {
	queue := make(chan chunk, 4096)
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if limit := p.blackHole.Load(); limit > 0 && int64(n) > limit {
				continue
			}
			if n > 0 {
				queue <- chunk{data: buf[:n], due: time.Now().Add(time.Duration(delay.Load()))}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					queue <- chunk{eof: true, due: time.Now().Add(time.Duration(delay.Load()))}
				}
				return
			}
		}
	}()
	for c := range queue {
		waitUntil(c.due, p.done)
		if c.eof {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			continue
		}
		if _, err := dst.Write(c.data); err != nil {
			src.Close()
			for range queue {
			}
			return
		}
	}
}

// waitUntil sleeps in the kernel (clock_nanosleep, hrtimer precision)
// to within spinMargin of due and spins the rest. Go's own timers wake up
// to a millisecond late, and spinning with Gosched starves the netpoller,
// delaying the other direction's reads.
func waitUntil(due time.Time, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		default:
		}
		d := time.Until(due) - spinMargin
		if d <= 0 {
			break
		}
		ts := unix.NsecToTimespec(int64(min(d, 50*time.Millisecond)))
		_ = unix.Nanosleep(&ts, nil)
	}
	for time.Now().Before(due) {
	}
}

const spinMargin = 250 * time.Microsecond
