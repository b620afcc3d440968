package prober

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/httpstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
)

// HTTPOptions probe a URL through HTTP proxies that each add a
// Subsegment-Timing response header (httpstamp): the chain is source →
// proxies (outermost first) → backend.
type HTTPOptions struct {
	// Method of every request; GET when empty.
	Method string
	// Header is added to every request.
	Header http.Header
	// Host overrides the Host header.
	Host string
	// ValidStatus says which statuses are a success; nil: any 2xx.
	ValidStatus func(int) bool
	// Hops are the proxies expected to stamp, outermost first; empty:
	// whatever the warm-up's response carries.
	Hops []string
	// Backend labels the hop behind the innermost proxy; when the
	// innermost entry carries this name, the backend stamped itself.
	Backend string
}

// Limits of what a proxy may send back.
const (
	maxHTTPHeaderBytes = 64 << 10
	maxHTTPBodyBytes   = 1 << 20
	// httpHopIDBase marks the identities the prober gives HTTP hops:
	// their position in the chain (proxies carry no identity of their own).
	httpHopIDBase = 1 << 63
)

// httpSession is the source's connection to the first proxy of an HTTP
// chain: one keep-alive connection for the warm-up and the probes,
// opened again only when a response ends it.
type httpSession struct {
	o      *Options
	h      *HTTPOptions
	target peer.HTTPTarget
	conn   net.Conn
	rx     *rxstamp.Conn
	limit  *limitedReader
	br     *bufio.Reader
	tcp    *tcpinfo.Reader
	req    []byte
	method *http.Request
	id     uint64
	// connect is the handshake (TCP and TLS) of the connection opened for
	// the next probe; 0 once reported. dialed is when that dial began.
	connect time.Duration
	dialed  int64
	// lead is, for the probe being decoded, how long before its request
	// the first proxy may have started its clock (timing.Hop.Lead).
	lead time.Duration
	// chain is the hops the warm-up's response named, outermost first:
	// what later responses are held to when no hops are configured, and
	// how the far end of a failed segment is named.
	chain []string
	res   map[string]time.Duration
	// stopWake unregisters the open connection's wake-up (wakeOnDone).
	stopWake func() bool
}

// limitedReader bounds what one response may make the prober read.
type limitedReader struct {
	r io.Reader
	n int64
}

var errTooLarge = errors.New("response header over 64 KiB")

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func (h *HTTPOptions) backend() string {
	if h.Backend == "" {
		return "backend"
	}
	return h.Backend
}

// dialHTTP opens the connection to the first proxy of an HTTP chain.
func dialHTTP(ctx context.Context, o *Options) (protocol, *Failure) {
	t, err := peer.ParseHTTPTarget(o.Target)
	if err != nil {
		return nil, &Failure{From: peer.Hop{Name: o.Source}, To: peer.Hop{Name: o.Target}, Reason: peer.ReasonUnknown, Message: err.Error()}
	}
	s := newHTTPSession(o, t)
	if f := s.dial(ctx); f != nil {
		return nil, f
	}
	return s, nil
}

func newHTTPSession(o *Options, t peer.HTTPTarget) *httpSession {
	s := &httpSession{o: o, h: o.HTTP, target: t, id: peer.NewID(), res: map[string]time.Duration{}}
	s.req = s.request()
	s.method = &http.Request{Method: s.methodName()}
	return s
}

func (s *httpSession) methodName() string {
	if s.h.Method == "" {
		return http.MethodGet
	}
	return s.h.Method
}

// request is the bytes of every request, built once: the URL and the
// headers were validated (peer.ParseHTTPTarget, the configuration).
func (s *httpSession) request() []byte {
	host := s.h.Host
	if host == "" {
		host = s.target.URL.Host
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: subsegment_exporter\r\nAccept: */*\r\n", s.methodName(), requestTarget(s.target.URL), host)
	names := make([]string, 0, len(s.h.Header))
	for k := range s.h.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		for _, v := range s.h.Header[k] {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	if m := s.methodName(); m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch {
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// requestTarget is the URL's request-target (origin form): its path as
// url escapes it, and its query with every byte RFC 3986 does not allow
// in a query percent-encoded — a space as %20, a % that starts no escape
// as %25, escapes already there kept — so that the request line is valid
// whatever the target's query holds, and decodes to what was written.
func requestTarget(u *url.URL) string {
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery == "" && !u.ForceQuery {
		return path
	}
	return path + "?" + escapeQuery(u.RawQuery)
}

func escapeQuery(q string) string {
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '%' && i+2 < len(q) && isHex(q[i+1]) && isHex(q[i+2]):
			b.WriteByte(c)
		case c != '%' && queryByte(c):
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// queryByte says whether RFC 3986 allows c as it is in a query: pchar
// (unreserved, sub-delims, ":" and "@"), "/" and "?".
func queryByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-._~!$&'()*+,;=:@/?", c) >= 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// dial opens the connection to the first proxy (TLS for https).
func (s *httpSession) dial(ctx context.Context) *Failure {
	o := s.o
	budget, ok := probeBudget(ctx, o.Timeout)
	if !ok {
		return s.fail(peer.ReasonTimeout, "no time left before the deadline to connect")
	}
	d := o.dialer()
	if s.target.URL.Scheme == "https" {
		d.TLS = o.TLS
		if d.TLS == nil {
			d.TLS = defaultTLS()
		}
		if d.TLS.ServerName == "" {
			d.TLS = d.TLS.Clone()
			d.TLS.ServerName = s.target.Host
		}
	} else {
		d.TLS = nil
	}
	dctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	t0 := o.Clock.Monotonic()
	conn, err := d.DialContext(dctx, s.target.Address)
	if err != nil {
		return s.fail(peer.ClassifyOr(err, peer.ReasonUnreachable), "connect to %s: %v", s.target.Address, err)
	}
	s.conn, s.rx, s.connect, s.dialed = conn, rxstamp.Of(conn), time.Duration(o.Clock.Monotonic()-t0), t0
	s.limit = &limitedReader{r: conn}
	if s.br == nil {
		s.br = bufio.NewReaderSize(s.limit, 16<<10)
	} else {
		s.br.Reset(s.limit)
	}
	s.tcp, _ = tcpinfo.NewReader(conn)
	s.stopWake = wakeOnDone(ctx, conn)
	return nil
}

// close closes the connection; the next probe opens another.
func (s *httpSession) close() {
	if s.conn != nil {
		s.stopWake()
		s.conn.Close()
		s.conn, s.stopWake = nil, nil
	}
}

func (s *httpSession) firstHopName() string {
	switch {
	case len(s.chain) > 0:
		return s.chain[0]
	case len(s.h.Hops) > 0:
		return s.h.Hops[0]
	}
	if c := s.o.Names.chainOf(s.o.Target); len(c) > 0 {
		return c[0]
	}
	return s.target.Address
}

// fail is a failure of the segment from the source to the first proxy.
func (s *httpSession) fail(reason peer.Reason, format string, args ...any) *Failure {
	return &Failure{From: peer.Hop{ID: s.id, Name: s.o.Source}, To: peer.Hop{Name: s.firstHopName()}, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// probe sends one request and reads its response.
func (s *httpSession) probe(ctx context.Context, seq uint64, _ uint16) Sample {
	smp := Sample{Seq: seq}
	o := s.o
	if s.conn == nil {
		if f := s.dial(ctx); f != nil {
			smp.Failure = f
			return smp
		}
	}
	budget, ok := probeBudget(ctx, o.Timeout)
	if !ok {
		smp.Failure = s.fail(peer.ReasonTimeout, "deadline reached before the request was sent")
		return smp
	}
	if err := s.conn.SetDeadline(time.Now().Add(budget)); err != nil {
		smp.Failure = s.fail(peer.Classify(err), "%v", err)
		return smp
	}
	s.limit.n = maxHTTPHeaderBytes
	// Request-out is stamped before the write, as the relays and the tcp
	// prober stamp it: the proxy may answer before the write returns.
	tOut := o.Clock.Monotonic()
	s.lead = 0
	if s.connect > 0 {
		s.lead = time.Duration(tOut - s.dialed)
	}
	if _, err := s.conn.Write(s.req); err != nil {
		s.close()
		smp.Failure = s.fail(peer.ClassifyOr(err, peer.ReasonReset), "write to %s: %v", s.target.Address, err)
		return smp
	}
	resp, rx, err := s.readResponse()
	if err != nil {
		s.close()
		reason := peer.ClassifyOr(err, peer.ReasonClosed)
		smp.Failure = s.fail(reason, "response from %s: %v", s.target.Address, err)
		if reason == peer.ReasonTimeout {
			smp.Failure.Message = fmt.Sprintf("no response from %s within %s", s.target.Address, budget.Round(time.Millisecond))
		}
		if errors.Is(err, errTooLarge) || errors.Is(err, errNotHTTP) {
			smp.Failure.Reason = peer.ReasonBadHeader
		}
		return smp
	}
	src := s.ownRecord(tOut, rx)
	if o.Logger.Enabled(ctx, slog.LevelDebug) {
		o.Logger.Debug("response", "seq", seq, "status", resp.StatusCode, "round_trip", src.Downstream, "kernel_stamp", rx.Kernel,
			httpstamp.Header, peer.SanitizeText(strings.Join(resp.Header.Values(httpstamp.Header), ", "), 512))
	}
	s.decode(resp, &smp, src)
	return smp
}

var errNotHTTP = errors.New("not an HTTP/1.x response")

// readResponse reads a response and its body (up to 1 MiB, the rest
// closes the connection), and says when the kernel received its first
// byte.
func (s *httpSession) readResponse() (*http.Response, rxstamp.Stamp, error) {
	if _, err := s.br.Peek(1); err != nil {
		return nil, rxstamp.Stamp{}, err
	}
	rx := rxstamp.Stamp{At: s.o.Clock.Monotonic()}
	if s.rx != nil {
		rx = s.rx.Last()
	}
	var resp *http.Response
	for range 5 {
		r, err := http.ReadResponse(s.br, s.method)
		if err != nil {
			if errors.Is(err, errTooLarge) || peer.Classify(err) != peer.ReasonUnknown {
				return nil, rx, err
			}
			return nil, rx, fmt.Errorf("%w: %v", errNotHTTP, err)
		}
		if r.StatusCode >= 200 || r.StatusCode == http.StatusSwitchingProtocols {
			resp = r
			break
		}
		// 1xx (103 Early Hints): the final response follows.
	}
	if resp == nil {
		return nil, rx, fmt.Errorf("%w: more than 5 informational responses", errNotHTTP)
	}
	s.limit.n = math.MaxInt64
	n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxHTTPBodyBytes))
	if err != nil {
		return nil, rx, fmt.Errorf("body: %w", err)
	}
	if n == maxHTTPBodyBytes || resp.Close {
		// A longer body is left unread, or the proxy closes: the next
		// probe opens a new connection.
		s.close()
	}
	resp.Body.Close()
	return resp, rx, nil
}

// ownRecord is the source's record: the request left at tOut and the
// kernel received the response's first byte at rx. The request is built
// once, so no time goes forward.
func (s *httpSession) ownRecord(tOut int64, rx rxstamp.Stamp) frame.HopRecord {
	in := max(rx.At, tOut)
	src := frame.HopRecord{ID: s.id, Name: s.o.Source, Downstream: time.Duration(in - tOut), WaitReturn: rx.Wait}
	if rx.Kernel {
		src.Flags |= frame.RecKernelReply
	}
	if s.connect > 0 {
		src.Flags |= frame.RecDialed
		src.Connect = s.connect
		s.connect = 0
	}
	return src
}

// decode turns a response into the sample's records: the source, each
// proxy outermost first with its stamped duration as its downstream time,
// and the backend.
func (s *httpSession) decode(resp *http.Response, smp *Sample, src frame.HopRecord) {
	smp.Records = []frame.HopRecord{src}
	entries, err := httpstamp.Parse(resp.Header.Values(httpstamp.Header))
	if err != nil {
		smp.Failure = s.entryFailure(err)
		return
	}
	if d, dup := httpstamp.Duplicate(entries); dup {
		smp.Failure = s.fail(peer.ReasonBadHeader, "%s entry %q appears twice: one proxy stamps twice (two add-header lines?)", httpstamp.Header, d.Text)
		return
	}
	entries = s.order(entries)
	for i, e := range entries {
		rec := frame.HopRecord{ID: httpHopIDBase | uint64(i+1), Name: e.Hop, Downstream: e.Duration}
		if i == len(entries)-1 && e.Hop == s.h.backend() {
			// The backend stamped itself: its time is its residence.
			rec.Forward, rec.Downstream, rec.Flags = e.Duration, 0, frame.RecEnd
		}
		smp.Records = append(smp.Records, rec)
		s.res[e.Hop] = max(s.res[e.Hop], e.Resolution)
	}
	if n := len(entries); n == 0 || entries[n-1].Hop != s.h.backend() {
		smp.Records = append(smp.Records, frame.HopRecord{ID: httpHopIDBase | uint64(n+1), Name: s.h.backend(), Flags: frame.RecEnd})
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Hop
	}
	if ok := s.h.ValidStatus; ok != nil && !ok(resp.StatusCode) || ok == nil && (resp.StatusCode < 200 || resp.StatusCode > 299) {
		smp.Failure = s.statusFailure(resp, smp.Records, names)
		smp.Records = smp.Records[:len(entries)+1]
		return
	}
	if f := s.checkChain(smp, names); f != nil {
		smp.Failure = f
		return
	}
	// A proxy's time lies within what the source (or the proxy outside
	// it) measured around it, give or take both resolutions: the segment
	// arithmetic holds every entry to it (bad_header naming the proxy).
	hops := timingHops(nil, smp.Records)
	hops[0].Lead = s.lead
	for i, e := range entries {
		hops[i+1].Resolution = e.Resolution
	}
	breakDown(smp, hops, nil, peer.ReasonBadHeader, func() string {
		return fmt.Sprintf("response from %s: the %s entry", s.target.Address, httpstamp.Header)
	})
	if smp.Failure == nil {
		s.o.Names.putChain(s.o.Target, names)
	}
}

// order puts the entries outermost first: in the order of the module's
// hops when they name exactly those proxies (then an inner proxy that
// claims more than the outer one measured is refused as such), else by
// their durations (httpstamp.Outermost).
func (s *httpSession) order(entries []httpstamp.Entry) []httpstamp.Entry {
	want := s.h.Hops
	if len(want) == 0 {
		return httpstamp.Outermost(entries)
	}
	out := make([]httpstamp.Entry, 0, len(entries))
	used := make([]bool, len(entries))
	take := func(name string) bool {
		for i, e := range entries {
			if !used[i] && e.Hop == name {
				used[i] = true
				out = append(out, e)
				return true
			}
		}
		return false
	}
	for _, name := range want {
		if !take(name) {
			return httpstamp.Outermost(entries)
		}
	}
	if len(out) < len(entries) && !take(s.h.backend()) || len(out) < len(entries) {
		return httpstamp.Outermost(entries)
	}
	return out
}

// statusFailure names the segment after the innermost proxy that
// stamped an unaccepted response: its next hop did not answer it well.
func (s *httpSession) statusFailure(resp *http.Response, records []frame.HopRecord, names []string) *Failure {
	msg := fmt.Sprintf("HTTP %s", peer.SanitizeText(resp.Status, 120))
	if len(names) == 0 {
		f := s.fail(peer.ReasonHTTPStatus, "%s from %s, which did not stamp it", msg, s.target.Address)
		return f
	}
	inner := len(names)
	next, known := s.h.backend(), false
	expected := s.expected()
	if k := slices.Index(expected, names[len(names)-1]); k >= 0 && k+1 < len(expected) {
		next, known = expected[k+1], true
	}
	behind := next
	if !known {
		behind = "the hop behind it (" + next + ", or a proxy that did not stamp: list the chain in http.hops to name it)"
	}
	return &Failure{FromIndex: inner, From: peerOf(&records[inner]), To: peer.Hop{Name: next}, Reason: peer.ReasonHTTPStatus,
		Message: fmt.Sprintf("%s, stamped by %s (innermost): %s did not answer it with a valid response", msg, names[len(names)-1], behind)}
}

// expected is the chain's proxies as far as they are known, outermost
// first: the module's hops, else the warm-up's, else what an earlier run
// saw (a scrape after a good one names the hop that broke).
func (s *httpSession) expected() []string {
	switch {
	case len(s.h.Hops) > 0:
		return s.h.Hops
	case s.chain != nil:
		return s.chain
	}
	return s.o.Names.chainOf(s.o.Target)
}

// entryFailure reports a Subsegment-Timing entry that could not be read
// on the segment into the proxy it names (a valid name): after the proxy
// before it when the chain's order is known, from the source when it is
// the outermost or no order is known yet. An entry naming no valid hop,
// or one the known chain does not have, fails the segment from the
// source to the first proxy.
func (s *httpSession) entryFailure(err error) *Failure {
	f := s.fail(peer.ReasonBadHeader, "%v", err)
	var ee *httpstamp.EntryError
	if !errors.As(err, &ee) {
		return f
	}
	expected := s.expected()
	switch k := slices.Index(expected, ee.Hop); {
	case k > 0:
		f.From, f.To = peer.Hop{Name: expected[k-1]}, peer.Hop{Name: ee.Hop}
	case k == 0 || len(expected) == 0:
		f.To = peer.Hop{Name: ee.Hop}
	}
	return f
}

// checkChain holds a response's proxies to the configured hops, else to
// the warm-up's: a proxy that stops stamping would merge two segments
// into one without a word.
func (s *httpSession) checkChain(smp *Sample, names []string) *Failure {
	want, what := s.h.Hops, "http.hops"
	if len(want) == 0 {
		if smp.Seq == 0 || s.chain == nil {
			s.chain = names
			return nil
		}
		want, what = s.chain, "the warm-up's response"
	} else if s.chain == nil {
		s.chain = names
	}
	if slices.Equal(want, names) {
		return nil
	}
	k := 0
	for k < len(want) && k < len(names) && want[k] == names[k] {
		k++
	}
	from := peer.Hop{ID: s.id, Name: s.o.Source}
	if k > 0 {
		from = peerOf(&smp.Records[k])
	}
	var to, msg string
	switch {
	case k < len(want):
		to = want[k]
		msg = fmt.Sprintf("%s did not stamp the response: expected %s (%s), the response carries %s", want[k], strings.Join(want, ", "), what, listOrNone(names))
	default:
		to = names[k]
		msg = fmt.Sprintf("unexpected hop %s stamped the response: expected %s (%s), the response carries %s", names[k], strings.Join(want, ", "), what, listOrNone(names))
	}
	return &Failure{FromIndex: k, From: from, To: peer.Hop{Name: to}, Reason: peer.ReasonBadHeader, Message: msg}
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// attachTCP adds the kernel's view of the source's connection to the
// last sample, as the tcp prober does.
func (s *httpSession) attachTCP(samples []Sample) {
	if s.conn != nil && s.tcp != nil {
		attachTCPInfo(s.tcp, samples)
	}
}

// annotate marks the hops that reported through the header, with the
// resolution of their stamps, and rounds every figure to what its ends
// can show.
func (s *httpSession) annotate(r *Result) {
	for i := range r.Hops {
		h := &r.Hops[i]
		if i == 0 {
			continue
		}
		h.KernelTimestamps = false
		if res, ok := s.res[strings.SplitN(h.Name, "#", 2)[0]]; ok {
			h.HTTPHeader = true
			h.Resolution = res.Seconds()
			h.Residence = roundSeconds(h.Residence, res)
			h.Wait = Seconds{}
		}
	}
	for i := range r.Segments {
		seg := &r.Segments[i]
		res := 0.0
		if seg.from < len(r.Hops) {
			res = max(res, r.Hops[seg.from].Resolution)
		}
		if seg.to < len(r.Hops) {
			res = max(res, r.Hops[seg.to].Resolution)
		}
		seg.Resolution = res
		if res > 0 {
			d := time.Duration(res * float64(time.Second))
			seg.RTT = roundSeconds(seg.RTT, d)
			seg.Jitter = roundTo(seg.Jitter, d)
		}
	}
}

func roundSeconds(s Seconds, res time.Duration) Seconds {
	return Seconds{Min: roundTo(s.Min, res), Median: roundTo(s.Median, res), Max: roundTo(s.Max, res)}
}

func roundTo(v float64, res time.Duration) float64 {
	if res <= 0 {
		return v
	}
	step := res.Seconds()
	return math.Round(v/step) * step
}
