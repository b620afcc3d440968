// Command benchclient drives the side-by-side benchmarks in bench/: round
// trips and stream throughput through a chain of ours, haproxy's or
// socat's, and a plain echo server to end the non-subsegment chains. It
// reads and writes on separate goroutines, so it never deadlocks a chain
// the way a single-threaded copier with blocking writes can.
//
// Layering (internal/architecture_test.go): floor 7, the top; nothing
// imports it.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

func main() {
	mode := flag.String("mode", "rtt", "rtt, stream, echo, http or spread")
	target := flag.String("target", "", "first hop (rtt, stream) or listen address (echo)")
	targets := flag.String("targets", "", "rtt on several chains, round trips interleaved: name=raw@host:port or name=subsegment@host:port, comma-separated")
	proto := flag.String("proto", "raw", "raw (bytes echoed by the chain's end) or subsegment (probe frames)")
	n := flag.Int("n", 2000, "round trips (rtt)")
	size := flag.Int("size", 64, "message size in bytes (rtt, raw)")
	block := flag.Int("block", 8192, "write size in bytes (stream)")
	input := flag.String("input", "", "file to stream (stream)")
	concurrency := flag.Int("c", 1, "concurrent requests (http)")
	expect := flag.String("expect", "probe_success 1", "text every answer must contain (http)")
	interval := flag.Duration("interval", 0, "pause between round trips (rtt)")
	newConn := flag.Bool("newconn", false, "a new connection per request (http), as a scraper without keep-alive")
	rate := flag.Float64("rate", 0, "requests started per second (http; 0: as fast as -c allows); pacing both sides of a comparison alike keeps batching effects out of CPU per request")
	metric := flag.String("metric", "", "spread: the counter to follow, a metric name of the target's exposition (all its series summed), or nginx_stub_status for nginx's requests")
	duration := flag.Duration("duration", 20*time.Second, "spread: how long to follow the counter")
	flag.Parse()
	var err error
	switch *mode {
	case "rtt":
		list := []rttTarget{{name: *target, proto: *proto, addr: *target}}
		if *targets != "" {
			list, err = parseTargets(*targets)
		}
		if err == nil {
			err = rtt(list, *n, *size, *interval)
		}
	case "stream":
		err = streamRaw(*target, *input, *block)
	case "echo":
		err = echo(*target)
	case "http":
		err = httpLoad(*target, *n, *concurrency, *expect, *newConn, *rate)
	case "spread":
		err = spread(*target, *metric, *duration)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchclient:", err)
		os.Exit(1)
	}
}

// rtt measures request/response round trips over one connection per
// target and prints, per target, p50 and p99 in microseconds; with the
// subsegment protocol also the median wait the end host reports (kernel
// receipt to its read). With several targets the round trips interleave,
// one on each target in turn (the first one rotating), so that every
// target sees the same moments of a busy machine: their ratios are then
// fair even when absolute figures drift.
func rtt(targets []rttTarget, n, size int, interval time.Duration) error {
	probers := make([]*prober, 0, len(targets))
	for _, t := range targets {
		p, err := dialProber(t, size, n)
		if err != nil {
			return err
		}
		defer p.c.Close()
		probers = append(probers, p)
	}
	for i := 0; i < n+100; i++ {
		if interval > 0 {
			time.Sleep(interval)
		}
		for k := range probers {
			if err := probers[(i+k)%len(probers)].once(i, i >= 100); err != nil { // warm-up excluded
				return err
			}
		}
	}
	for _, p := range probers {
		p.report(len(probers) > 1)
	}
	return nil
}

// rttTarget is a chain to measure: its name, protocol and first hop.
type rttTarget struct{ name, proto, addr string }

// parseTargets reads name=proto@address,... (-targets).
func parseTargets(list string) ([]rttTarget, error) {
	var out []rttTarget
	for _, item := range strings.Split(list, ",") {
		name, rest, ok1 := strings.Cut(item, "=")
		proto, addr, ok2 := strings.Cut(rest, "@")
		if !ok1 || !ok2 || (proto != "raw" && proto != "subsegment") {
			return nil, fmt.Errorf("target %q: want name=raw@host:port or name=subsegment@host:port", item)
		}
		out = append(out, rttTarget{name, proto, addr})
	}
	return out, nil
}

// prober is one connection of the rtt mode.
type prober struct {
	t     rttTarget
	c     net.Conn
	rd    *frame.Reader
	req   []byte
	buf   []byte
	times []time.Duration
	waits []time.Duration
}

func dialProber(t rttTarget, size, n int) (*prober, error) {
	c, err := net.Dial("tcp", t.addr)
	if err != nil {
		return nil, err
	}
	if err := c.(*net.TCPConn).SetNoDelay(true); err != nil {
		c.Close()
		return nil, err
	}
	p := &prober{t: t, c: c, times: make([]time.Duration, 0, n)}
	if t.proto == "subsegment" {
		p.rd = frame.NewReader(c, frame.DefaultMaxFrameBytes)
	} else {
		p.req, p.buf = make([]byte, size), make([]byte, size)
	}
	return p, nil
}

// once makes round trip i; keep records its time. Only the write and the
// read of the answer are timed: what the client does with the answer
// (the end host's wait, read from its record) is not part of it.
func (p *prober) once(i int, keep bool) error {
	if p.rd != nil {
		p.req = frame.AppendZeroRequest(p.req[:0], frame.KindProbeRequest, frame.ProbeHeader{Seq: uint64(i), BudgetMicros: 5_000_000}, 0, []uint64{42}, nil)
	}
	t0 := time.Now()
	if _, err := p.c.Write(p.req); err != nil {
		return fmt.Errorf("%s: %w", p.t.name, err)
	}
	var fr []byte
	if p.rd != nil {
		if err := p.rd.Fill(); err != nil {
			return fmt.Errorf("%s: %w", p.t.name, err)
		}
		var err error
		if fr, err = p.rd.Next(); err != nil {
			return fmt.Errorf("%s: %w", p.t.name, err)
		}
	} else if _, err := io.ReadFull(p.c, p.buf); err != nil {
		return fmt.Errorf("%s: %w", p.t.name, err)
	}
	took := time.Since(t0)
	if !keep {
		return nil
	}
	p.times = append(p.times, took)
	if fr != nil {
		p.waits = append(p.waits, endWait(fr))
	}
	return nil
}

func (p *prober) report(named bool) {
	slices.Sort(p.times)
	q := func(q float64) float64 { return float64(p.times[int(q*float64(len(p.times)-1))]) / 1e3 }
	if named {
		fmt.Printf("%s ", p.t.name)
	}
	fmt.Printf("p50_us=%.1f p99_us=%.1f n=%d", q(0.5), q(0.99), len(p.times))
	if len(p.waits) > 0 {
		slices.Sort(p.waits)
		fmt.Printf(" end_wait_p50_us=%.1f end_wait_p90_us=%.1f", float64(p.waits[len(p.waits)/2])/1e3, float64(p.waits[len(p.waits)*9/10])/1e3)
	}
	fmt.Println()
}

// endWait is the wait the last hop record of a reply reports.
func endWait(fr []byte) time.Duration {
	v, err := frame.Parse(fr, frame.DefaultMaxFrameBytes, frame.MaxHopsLimit)
	if err != nil {
		return 0
	}
	var w time.Duration
	it := frame.NewRecordIter(v.Tail(fr))
	for {
		kind, rec, ok := it.Next()
		if !ok {
			return w
		}
		if kind == frame.RecordHop {
			w = frame.ReadHopTimes(rec).WaitForward
		}
	}
}

// streamRaw sends a file through a plain chain and reads the echo back,
// concurrently, and prints the throughput.
func streamRaw(target, input string, block int) error {
	data, err := os.ReadFile(input)
	if err != nil {
		return err
	}
	c, err := net.Dial("tcp", target)
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for off := 0; off < len(data); off += block {
			if _, err := c.Write(data[off:min(off+block, len(data))]); err != nil {
				werr = err
				return
			}
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			werr = err
		}
	}()
	buf := make([]byte, block)
	var got int
	for got < len(data) {
		k, err := c.Read(buf)
		got += k
		if err != nil {
			break
		}
	}
	wg.Wait()
	took := time.Since(start)
	if werr != nil || got != len(data) {
		return fmt.Errorf("sent %d, got back %d (%v)", len(data), got, werr)
	}
	fmt.Printf("bytes=%d seconds=%.3f mbps=%.1f\n", got, took.Seconds(), float64(got)/took.Seconds()/1e6)
	return nil
}

// echo serves a plain TCP echo, reading and writing on separate goroutines.
func echo(listen string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if err := c.(*net.TCPConn).SetNoDelay(true); err != nil {
				return
			}
			_, _ = io.Copy(c, c) // an echo: its end is the peer's
		}()
	}
}

// httpLoad GETs url n times, c at a time (and rate a second when rate >
// 0), and counts answers that are not 200 or lack expect.
func httpLoad(url string, n, c int, expect string, newConn bool, rate float64) error {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: c, MaxConnsPerHost: c, DisableKeepAlives: newConn}}
	var mu sync.Mutex
	var failed int
	var firstErr string
	times := make([]time.Duration, 0, n)
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				t0 := time.Now()
				resp, err := client.Get(url)
				ok := err == nil
				var body []byte
				if ok {
					body, _ = io.ReadAll(resp.Body)
					resp.Body.Close()
					ok = resp.StatusCode == 200 && strings.Contains(string(body), expect)
				}
				mu.Lock()
				times = append(times, time.Since(t0))
				if !ok {
					failed++
					if firstErr == "" {
						firstErr = fmt.Sprint(err, " ", string(body))
					}
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		if rate > 0 {
			if wait := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); wait > 0 {
				time.Sleep(wait)
			}
		}
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	slices.Sort(times)
	fmt.Printf("ok=%d failed=%d seconds=%.2f p50_ms=%.1f p99_ms=%.1f\n", n-failed, failed, time.Since(start).Seconds(),
		float64(times[len(times)/2])/1e6, float64(times[len(times)*99/100])/1e6)
	if failed > 0 {
		fmt.Fprintln(os.Stderr, "first failure:", firstErr)
	}
	return nil
}

// spread follows a counter of probes an end host answered (its /metrics,
// or nginx's stub_status), read every 100 ms, and prints how evenly the
// probes spread: the busiest second and the busiest 100 ms against their
// means.
func spread(url, metric string, d time.Duration) error {
	const tick = 100 * time.Millisecond
	client := &http.Client{Timeout: tick}
	read := func() (float64, error) {
		resp, err := client.Get(url)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, err
		}
		return counterOf(string(body), metric)
	}
	start := time.Now()
	var counts []float64
	prev, err := read()
	if err != nil {
		return err
	}
	for i := 1; time.Since(start) < d; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i) * tick)))
		v, err := read()
		if err != nil {
			return err
		}
		counts = append(counts, v-prev)
		prev = v
	}
	perSecond := make([]float64, len(counts)/10)
	for i := range perSecond {
		for _, c := range counts[i*10 : i*10+10] {
			perSecond[i] += c
		}
	}
	maxMean := func(xs []float64) (float64, float64) {
		var sum, top float64
		for _, x := range xs {
			sum += x
			top = max(top, x)
		}
		return top, sum / float64(max(len(xs), 1))
	}
	top, mean := maxMean(perSecond)
	top100, mean100 := maxMean(counts)
	fmt.Printf("seconds=%d mean_per_second=%.0f max_second=%.0f max_over_mean=%.2f max_100ms_over_mean=%.2f\n", len(perSecond), mean, top, top/max(mean, 1), top100/max(mean100, 1))
	return nil
}

// counterOf sums the samples of metric in a text exposition; for
// nginx_stub_status, the requests nginx's stub_status counted.
func counterOf(body, metric string) (float64, error) {
	lines := strings.Split(body, "\n")
	if metric == "nginx_stub_status" {
		if len(lines) < 3 {
			return 0, fmt.Errorf("not a stub_status page: %q", body)
		}
		f := strings.Fields(lines[2])
		if len(f) < 3 {
			return 0, fmt.Errorf("not a stub_status page: %q", body)
		}
		var v float64
		_, err := fmt.Sscan(f[2], &v)
		return v, err
	}
	var sum float64
	found := false
	for _, l := range lines {
		if !strings.HasPrefix(l, metric+"{") && !strings.HasPrefix(l, metric+" ") {
			continue
		}
		f := strings.Fields(l)
		var v float64
		if _, err := fmt.Sscan(f[len(f)-1], &v); err != nil {
			return 0, fmt.Errorf("%s: %w", l, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("no %s in the exposition", metric)
	}
	return sum, nil
}
