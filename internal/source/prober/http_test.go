package prober

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/httpstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// scriptedHTTP answers every request with respond(n), n counting requests
// from 0 across connections, as a chain of proxies would; the test's
// proxies are its stamps.
type scriptedHTTP struct {
	ln       net.Listener
	conns    atomic.Int32
	mu       sync.Mutex
	requests []string
	n        atomic.Int32
	respond  func(n int) string
	spend    bool
}

// serveHTTP answers as a chain of proxies that took the time they stamp:
// each response leaves after its outermost entry's duration.
func serveHTTP(t *testing.T, respond func(n int) string) *scriptedHTTP {
	t.Helper()
	return serveHTTPSpending(t, true, respond)
}

// serveHTTPSpending answers at once when spend is false: its proxies'
// stamps then claim time nobody spent.
func serveHTTPSpending(t *testing.T, spend bool, respond func(n int) string) *scriptedHTTP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedHTTP{ln: ln, respond: respond, spend: spend}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			go s.serve(c)
		}
	}()
	return s
}

// serve answers the requests of one connection.
func (s *scriptedHTTP) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		s.mu.Lock()
		s.requests = append(s.requests, req.Method+" "+req.RequestURI+" host="+req.Host+" x="+req.Header.Get("X-Probe"))
		s.mu.Unlock()
		out := s.respond(int(s.n.Add(1) - 1))
		if out == "" {
			return // hang up without a response
		}
		if s.spend {
			time.Sleep(stamped(out))
		}
		if _, err := io.WriteString(c, out); err != nil || strings.Contains(out, "Connection: close") {
			return
		}
	}
}

// stamped is the longest time a response's entries claim (0 when it
// has none, or they do not parse).
func stamped(response string) time.Duration {
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(response)), nil)
	if err != nil {
		return 0
	}
	entries, _ := httpstamp.Parse(resp.Header.Values(httpstamp.Header))
	var d time.Duration
	for _, e := range entries {
		d = max(d, e.Duration)
	}
	return min(d, time.Second)
}

func (s *scriptedHTTP) url() string { return "http://" + s.ln.Addr().String() + "/health?x=1" }

// response builds a response whose proxies stamped the given entries, one
// header each, innermost first (as HAProxy and nginx append them).
func response(status int, entries ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nContent-Length: 2\r\n", status, http.StatusText(status))
	for _, e := range entries {
		fmt.Fprintf(&b, "Subsegment-Timing: %s\r\n", e)
	}
	b.WriteString("\r\nok")
	return b.String()
}

func httpOpts(url string, h HTTPOptions) Options {
	o := opts(url)
	o.Count = 3
	o.HTTP = &h
	return o
}

func TestHTTPChainArithmetic(t *testing.T) {
	// The proxies' stamps: n1 (nginx, ms) inside h1 (HAProxy, µs); the
	// backend is behind n1. The source's own time is real (loopback), so
	// its segment is small but whatever it is, the others are exact.
	srv := serveHTTP(t, func(int) string { return response(200, "n1;dur=0.005s", "h1;dur=25000us") })
	r := run(t, httpOpts(srv.url(), HTTPOptions{Header: http.Header{"X-Probe": {"yes"}}, Host: "www.example.net"}))
	if !r.Success || !r.HTTP {
		t.Fatalf("failed: %+v", r.Failure)
	}
	if got, want := segNames(r), []string{"a>h1", "h1>n1", "n1>backend"}; !slices.Equal(got, want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
	h1n1, n1b := r.Segments[1], r.Segments[2]
	if h1n1.RTT.Median != 0.020 || n1b.RTT.Median != 0.005 || h1n1.Resolution != 0.001 || n1b.Resolution != 0.001 {
		t.Errorf("h1>n1 %+v res %v, n1>backend %+v res %v; want 20 ms and 5 ms at 1 ms", h1n1.RTT, h1n1.Resolution, n1b.RTT, n1b.Resolution)
	}
	// The source's segment: its round trip less h1's 25 ms, which the
	// scripted server spent.
	if a := r.Segments[0]; a.RTT.Min < 0 || a.Resolution != 1e-6 {
		t.Errorf("a>h1 %+v res %v", a.RTT, a.Resolution)
	}
	if !r.Hops[1].HTTPHeader || r.Hops[1].Resolution != 1e-6 || r.Hops[3].HTTPHeader || r.Hops[0].HTTPHeader {
		t.Errorf("hops: %+v", r.Hops)
	}
	if c := srv.conns.Load(); c != 1 {
		t.Errorf("%d connections for a warm-up and 3 probes, want 1 (keep-alive)", c)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.requests) != 4 || srv.requests[0] != "GET /health?x=1 host=www.example.net x=yes" {
		t.Errorf("requests %q", srv.requests)
	}
}

func TestHTTPFailures(t *testing.T) {
	for _, c := range []struct {
		name     string
		respond  func(n int) string
		h        HTTPOptions
		from, to string
		reason   peer.Reason
		msg      string
	}{
		{"a 5xx stamped by h1 only: n1 did not answer", func(n int) string {
			if n == 0 {
				return response(200, "n1;dur=0.001s", "h1;dur=1500us")
			}
			return response(503, "h1;dur=300us")
		}, HTTPOptions{}, "h1", "n1", peer.ReasonHTTPStatus, "HTTP 503 Service Unavailable, stamped by h1 (innermost): n1 did not answer"},
		{"a 5xx with the configured hops naming the next", func(int) string { return response(502, "h1;dur=300us") },
			HTTPOptions{Hops: []string{"h1", "n1"}}, "h1", "n1", peer.ReasonHTTPStatus, "502"},
		{"a 5xx nobody stamped", func(int) string { return response(500) }, HTTPOptions{}, "a", "", peer.ReasonHTTPStatus, "which did not stamp it"},
		{"a proxy that does not stamp, configured", func(int) string { return response(200, "h1;dur=300us") },
			HTTPOptions{Hops: []string{"h1", "n1"}}, "h1", "n1", peer.ReasonBadHeader, "n1 did not stamp the response: expected h1, n1 (http.hops), the response carries h1"},
		{"a proxy that stops stamping after the warm-up", func(n int) string {
			if n == 0 {
				return response(200, "n1;dur=0.001s", "h1;dur=1500us")
			}
			return response(200, "h1;dur=1500us")
		}, HTTPOptions{}, "h1", "n1", peer.ReasonBadHeader, "the warm-up's response"},
		{"an unexpected proxy", func(int) string { return response(200, "x;dur=1us", "h1;dur=300us") },
			HTTPOptions{Hops: []string{"h1"}}, "h1", "x", peer.ReasonBadHeader, "unexpected hop x"},
		{"a malformed entry", func(int) string { return response(200, "h1;dur=12") }, HTTPOptions{}, "a", "h1", peer.ReasonBadHeader, `"h1;dur=12": dur has no unit`},
		{"dur twice in the outermost proxy's entry", func(int) string { return response(200, "n1;dur=1ms", "h1;dur=2ms;dur=3ms") },
			HTTPOptions{Hops: []string{"h1", "n1"}}, "a", "h1", peer.ReasonBadHeader, "has dur twice"},
		{"no dur in the only proxy's entry", func(int) string { return response(200, "be;desc=x") }, HTTPOptions{}, "a", "be", peer.ReasonBadHeader, "has no dur="},
		{"a malformed entry of a proxy the hops do not list", func(int) string { return response(200, "x;dur=12", "h1;dur=3ms") },
			HTTPOptions{Hops: []string{"h1"}}, "a", "h1", peer.ReasonBadHeader, `"x;dur=12": dur has no unit`},
		{"a duplicated entry", func(int) string { return response(200, "n1;dur=0.001s", "n1;dur=0.001s", "h1;dur=3000us") }, HTTPOptions{}, "a", "", peer.ReasonBadHeader, "appears twice"},
		{"not HTTP", func(int) string { return "SSH-2.0-OpenSSH\r\n" }, HTTPOptions{}, "a", "", peer.ReasonBadHeader, "not an HTTP/1.x response"},
		{"a header over 64 KiB", func(int) string {
			return "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 70<<10) + "\r\n\r\n"
		}, HTTPOptions{}, "a", "", peer.ReasonBadHeader, "over 64 KiB"},
		{"hang-up without a response", func(int) string { return "" }, HTTPOptions{}, "a", "", peer.ReasonClosed, "EOF"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := serveHTTP(t, c.respond)
			r := run(t, httpOpts(srv.url(), c.h))
			f := r.Failure
			if r.Success || f == nil {
				t.Fatalf("succeeded: %+v", r.Segments)
			}
			if f.From != c.from || c.to != "" && f.To != c.to || f.Reason != c.reason.String() || !strings.Contains(f.Message, c.msg) {
				t.Errorf("failure %s -> %s (%s): %s\nwant %s -> %s (%s) containing %q", f.From, f.To, f.Reason, f.Message, c.from, c.to, c.reason, c.msg)
			}
		})
	}
}

func TestHTTPUnreachable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	r := run(t, httpOpts("http://"+addr+"/", HTTPOptions{Hops: []string{"edge"}}))
	if f := r.Failure; f == nil || f.From != "a" || f.To != "edge" || f.Reason != peer.ReasonRefused.String() {
		t.Fatalf("failure %+v, want a -> edge refused", f)
	}
}

func TestHTTPReconnectsWhenTheProxyCloses(t *testing.T) {
	srv := serveHTTP(t, func(int) string {
		return strings.Replace(response(200, "h1;dur=10us"), "Content-Length: 2\r\n", "Content-Length: 2\r\nConnection: close\r\n", 1)
	})
	r := run(t, httpOpts(srv.url(), HTTPOptions{}))
	if !r.Success {
		t.Fatalf("failed: %+v", r.Failure)
	}
	if c := srv.conns.Load(); c != 4 {
		t.Errorf("%d connections, want one per request (4) when the proxy closes each", c)
	}
}

func TestHTTPBackendThatStamps(t *testing.T) {
	srv := serveHTTP(t, func(int) string { return response(200, "app;dur=2000us", "n1;dur=0.005s") })
	r := run(t, httpOpts(srv.url(), HTTPOptions{Backend: "app"}))
	if !r.Success {
		t.Fatalf("failed: %+v", r.Failure)
	}
	if got, want := segNames(r), []string{"a>n1", "n1>app"}; !slices.Equal(got, want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
	if r.Segments[1].RTT.Median != 0.003 || r.Hops[2].Residence.Median != 0.002 {
		t.Errorf("n1>app %+v, app residence %+v; want 3 ms and 2 ms", r.Segments[1].RTT, r.Hops[2].Residence)
	}
}

func TestHTTPRepeatedNamesAreNumbered(t *testing.T) {
	srv := serveHTTP(t, func(int) string { return response(200, "same;dur=1000us", "same;dur=3000us") })
	r := run(t, httpOpts(srv.url(), HTTPOptions{}))
	if !r.Success || !r.DuplicateNames {
		t.Fatalf("failed or not numbered: %+v %v", r.Failure, r.DuplicateNames)
	}
	if got, want := segNames(r), []string{"a>same", "same>same#2", "same#2>backend"}; !slices.Equal(got, want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
	if r.Segments[1].RTT.Median != 0.002 {
		t.Errorf("same>same#2 %+v, want 2 ms", r.Segments[1].RTT)
	}
}

func TestHTTPRefusesTargetsItCannotProbe(t *testing.T) {
	for _, target := range []string{"127.0.0.1:80", "ftp://h/", "http://u:p@h/"} {
		o := httpOpts(target, HTTPOptions{})
		if err := o.Validate(); err == nil {
			t.Errorf("%q accepted", target)
		}
	}
}

// A target whose query holds characters a request line cannot carry (a
// space, quotes, non-ASCII) is sent with them percent-encoded (RFC 3986):
// the request line stays valid, and decodes to what was written.
func TestHTTPRequestLineEscapesTheQuery(t *testing.T) {
	for _, c := range []struct{ target, want string }{
		{"/search?q=a b", "/search?q=a%20b"},
		{"/search?q=\"x\"&r=<y>|{z}^`\\", "/search?q=%22x%22&r=%3Cy%3E%7C%7Bz%7D%5E%60%5C"},
		{"/s?q=é", "/s?q=%C3%A9"},
		{"/s?q=a%20b&pct=100%", "/s?q=a%20b&pct=100%25"},
		{"/a b/c?x=1/2?y=:@!$'()*+,;=", "/a%20b/c?x=1/2?y=:@!$'()*+,;="},
		{"/s?", "/s?"},
		{"/s", "/s"},
	} {
		srv := serveHTTP(t, func(int) string { return response(200, "edge;dur=1us") })
		target := "http://" + srv.ln.Addr().String() + c.target
		r := run(t, httpOpts(target, HTTPOptions{}))
		if !r.Success {
			t.Errorf("%q: %+v", c.target, r.Failure)
			continue
		}
		srv.mu.Lock()
		got := strings.Fields(srv.requests[0])[1]
		srv.mu.Unlock()
		if got != c.want {
			t.Errorf("%q sent as %q, want %q", c.target, got, c.want)
		}
	}
}

// FuzzRequestTarget: whatever path and query a target holds, the request
// line parses, and its query decodes to what the target's decodes to.
func FuzzRequestTarget(f *testing.F) {
	for _, s := range []string{"search?q=a b", "s?q=é&x=%zz", "a b/c?x=1/2?y=:@", "?", "s?q=%41%4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		target, err := peer.ParseHTTPTarget("http://h/" + s)
		if err != nil {
			return
		}
		rt := requestTarget(target.URL)
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + rt + " HTTP/1.1\r\nHost: h\r\n\r\n")))
		if err != nil {
			t.Fatalf("%q sent as %q: %v", s, rt, err)
		}
		want, werr := url.ParseQuery(target.URL.RawQuery)
		got, gerr := url.ParseQuery(req.URL.RawQuery)
		if werr == nil && (gerr != nil || !reflect.DeepEqual(want, got)) {
			t.Fatalf("%q sent as %q: query %v, want %v (%v)", s, rt, got, want, gerr)
		}
	})
}
