package prober

import (
	"context"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/host/clock"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
	"github.com/subsegment/subsegment_exporter/internal/wire/tcpinfo"
	"github.com/subsegment/subsegment_exporter/internal/wire/trace"
)

// Exchange is a relay chain's connection to its first hop as an event
// loop drives it (internal/source/continuous runs plain-TCP entries on
// one): the loop connects, writes, reads with the kernel's receive stamps
// and keeps the deadlines; the Exchange does everything else with the
// Session's own code — the request, the checks of the reply, the segment
// arithmetic and where a failure lies (relayProbe), when an idle
// connection found closed is opened again (stale), and the result
// (build) — so an entry on the loop records exactly what one on a
// Session does, and allocates nothing per probe.
//
// Its steps follow a Session's: Connected (Open's warm-up), Begin (a
// Probe), TraceStart and TracePaths (a Session's traces), then Sent, and
// Reply or Failed; each returns what the loop does next (Step). Not safe
// for concurrent use.
type Exchange struct {
	o Options
	p *relayProbe
	// opening: the connection being opened is Open's (its warm-up is
	// the result); reopening: a probe found the idle connection closed,
	// and the new connection's warm-up and the probe make its result.
	opening, reopening bool
	// inFlight is the sample of the request on the wire, kind what
	// that request is.
	inFlight Sample
	kind     flight
	sent     bool
	// ownTrace delivers the source's own trace of a TraceStart.
	ownTrace chan *frame.Path
	seq      uint64
	turn     Turn
	tOut     int64
	// start is when the probe began, used when the connection last
	// carried one (monotonic): a Session's idle time; early is how long
	// before its slot the probe began (Turn.Early), usedEarly the same of
	// the probe that last used the connection (0 for a warm-up).
	start, used      int64
	early, usedEarly time.Duration
	conns            uint64
	tcp              TCPInfoReader
	res              Result
	samples          [2]Sample
	n                int
}

// Turn is the clocks an event loop gives a request it builds: its build
// time and the wall clock, read for the request, and the wall clock's
// synchronisation, which a loop may read once per turn for all its
// requests (request-out is read for each request, right before its
// write: Sent).
type Turn struct {
	Mono, Wall int64
	Sync       clock.Sync
	// Early is how long before its slot a continuous probe goes out (a
	// loop's batch; negative: late): going out early does not shorten
	// the connection's idle time below what the slots give it, and a
	// first hop's idle close is not made a failure (stale).
	Early time.Duration
}

// TCPInfoReader reads TCP_INFO of the connection (tcpinfo.Reader, or an
// event loop's read of its descriptor).
type TCPInfoReader interface {
	Read() (tcpinfo.Info, error)
}

// flight is what the request on the wire is.
type flight uint8

const (
	flightProbe flight = iota
	flightTraceStart
	flightTracePaths
)

// Step is what the loop does after an Exchange's step.
type Step struct {
	// Trace: the step ended a trace request (TraceStart, TracePaths):
	// TraceStarted says whether the trace started, Paths is what a
	// TracePaths found (its segments' paths, no measured figure).
	Trace        bool
	TraceStarted bool
	Paths        *Result
	// Result, when set, is what the step found, to record; valid until
	// the Exchange's next step (Result.Clone keeps it). Warmup: it is an
	// opened connection's warm-up (Open's result, not a Probe's).
	Result *Result
	Warmup bool
	// Write is a request to write now: the probe that follows a reopened
	// connection's warm-up.
	Write []byte
	// Close: the connection is done with; close it. Reconnect: and
	// connect again now (Connected or DialFailed follows).
	Close, Reconnect bool
}

// NewExchange prepares the probes of o's chain; o is a relay chain's
// (no HTTP), and its Dial and TLS are not used: the loop connects.
func NewExchange(o Options) *Exchange {
	o.defaults()
	o.Count = max(o.Count, 1)
	return &Exchange{o: o}
}

// Options are the exchange's options, defaults filled.
func (x *Exchange) Options() *Options { return &x.o }

// Invalid is the result of an entry whose options a Session would refuse
// before dialling (Validate), nil when they are valid.
func (x *Exchange) Invalid() *Result {
	f := x.o.invalid()
	if f == nil {
		return nil
	}
	res := newResult(&x.o)
	res.setFailure(f)
	return res
}

// Connections counts the connections opened (Session.Connections).
func (x *Exchange) Connections() uint64 { return x.conns }

// Budget is how long a request may take (the Session's per-probe budget
// without a deadline of the context's): the loop's deadline for it.
func (x *Exchange) Budget() time.Duration { return x.o.Timeout }

// DialFailed records that the connect to the first hop failed with err.
func (x *Exchange) DialFailed(err error) Step {
	f := dialFailure(&x.o, err)
	if !x.reopening {
		x.opening = false
		res := newResult(&x.o)
		res.setFailure(f)
		return Step{Result: res, Warmup: true, Close: true}
	}
	// A probe's new connection could not be opened: its failure.
	x.reopening = false
	return x.finish(Sample{Seq: x.seq, Failure: f}, true)
}

// Connected records a new connection, whose handshake took connect and
// whose TCP_INFO tcp reads, and returns the warm-up request to write.
func (x *Exchange) Connected(connect time.Duration, tcp TCPInfoReader, t Turn) []byte {
	x.p = newRelayProbe(&x.o, connect)
	x.p.reuse = true
	x.tcp = tcp
	x.conns++
	x.opening = !x.reopening
	x.ownTrace, x.kind = nil, flightProbe // a trace of the old connections
	return x.request(0, t, 0)
}

// Begin starts the next probe on the open connection and returns its
// request to write.
func (x *Exchange) Begin(t Turn) []byte {
	x.seq++
	x.n, x.opening = 0, false
	x.start, x.early = t.Mono, t.Early
	return x.request(x.seq, t, 0)
}

// TraceStart starts the traces of the chain's segments on the open
// connection, as Session.TraceStart does: the source's own segment is
// traced in the background within ctx (target is what the trace needs of
// the connection, read by the loop that owns it with trace.Inspect;
// inspected the error when it could not be), and the request it returns
// asks the relays to trace theirs.
func (x *Exchange) TraceStart(ctx context.Context, t Turn, target trace.Target, inspected error) []byte {
	own := make(chan *frame.Path, 1)
	x.ownTrace = own
	o := &x.o
	go func() { own <- ownTrace(ctx, o, target, inspected) }()
	x.seq++
	x.kind = flightTraceStart
	return x.request(x.seq, t, frame.ProbeTrace)
}

// TracePaths returns the request for the paths of the trace TraceStart
// began (Session.TracePaths); nil when none began on this connection.
func (x *Exchange) TracePaths(t Turn) []byte {
	if x.ownTrace == nil {
		return nil
	}
	x.seq++
	x.kind = flightTracePaths
	return x.request(x.seq, t, frame.ProbePath)
}

func (x *Exchange) request(seq uint64, t Turn, flags uint16) []byte {
	x.turn, x.sent = t, false
	x.inFlight = Sample{Seq: seq, Warmup: seq == 0}
	return x.p.request(seq, flags, x.Budget())
}

// Sent records that the request went out at tOut (the monotonic clock
// read right before the write that began it).
func (x *Exchange) Sent(tOut int64) { x.tOut, x.sent = tOut, true }

// Reply takes a complete frame from the connection, which the kernel
// received at rx.
func (x *Exchange) Reply(fr []byte, rx rxstamp.Stamp) Step {
	smp := &x.inFlight
	t := x.turn
	x.p.reply(smp, fr, x.p.ownRecord(smp.Seq, t.Mono, x.tOut, t.Wall, t.Sync, rx), rx)
	return x.done()
}

// WriteFailed records that the request could not be written (err; a
// timeout when the deadline passed first).
func (x *Exchange) WriteFailed(err error) Step {
	x.inFlight.Failure = x.p.writeFailed(err)
	return x.done()
}

// ReadFailed records that no reply came (err: the end of the stream, a
// reset, a frame that cannot be read, the deadline).
func (x *Exchange) ReadFailed(err error) Step {
	x.inFlight.Failure = x.p.readFailed(err, x.Budget())
	return x.done()
}

// done handles the sample of the request that finished.
func (x *Exchange) done() Step {
	smp := x.inFlight
	if x.kind != flightProbe {
		return x.traceDone(smp)
	}
	now := x.o.Clock.Monotonic()
	if smp.Warmup {
		x.used, x.usedEarly = now, 0 // a connection opens at its slot or later
		if x.opening {
			// Open: the warm-up is the result.
			return x.finish(smp, smp.Failure != nil)
		}
		x.reopening = false
		if smp.Failure != nil {
			return x.finish(smp, true)
		}
		x.samples[0], x.n = smp, 1
		return Step{Write: x.request(x.seq, Turn{Mono: now, Wall: x.o.Clock.Wall(), Sync: x.o.Clock.Sync()}, 0)}
	}
	if x.n == 0 && stale(time.Duration(x.start-x.used), x.early, x.usedEarly, smp) {
		x.o.Logger.Debug("the first hop closed the idle connection: opening another", "idle", time.Duration(x.start-x.used).Round(time.Millisecond), "early", x.early.Round(time.Millisecond), "err", smp.Failure.Message)
		x.reopening = true
		return Step{Close: true, Reconnect: true}
	}
	x.used, x.usedEarly = now, x.early
	return x.finish(smp, smp.Failure != nil)
}

// traceDone ends a trace request: the connection stays (a Session's
// does), whatever the request found.
func (x *Exchange) traceDone(smp Sample) Step {
	kind := x.kind
	x.kind = flightProbe
	if kind == flightTraceStart {
		if smp.Failure != nil {
			x.o.Logger.Debug("trace request failed", "err", smp.Failure.Error())
		}
		return Step{Trace: true, TraceStarted: smp.Failure == nil}
	}
	var own *frame.Path
	select {
	case own = <-x.ownTrace:
	default:
		// Its deadline came before the paths were asked for: it is not
		// expected to be still running.
		own = frame.NoPath(frame.PathDeadline, "the source's own trace did not end")
	}
	x.ownTrace = nil
	return Step{Trace: true, Paths: pathsResult(&x.o, exchangeBuilt{x}, smp, own)}
}

// finish builds the result of the samples so far and smp.
func (x *Exchange) finish(smp Sample, failed bool) Step {
	x.samples[x.n] = smp
	samples := x.samples[:x.n+1]
	x.n = 0
	res := &x.res
	res.renew(&x.o)
	res.build(exchangeBuilt{x}, samples, x.o.Logger)
	warmup := x.opening
	x.opening = false
	return Step{Result: res, Warmup: warmup, Close: failed}
}

// exchangeBuilt is what build needs of the exchange's protocol: the
// kernel's view of the loop's connection; relays report the rest.
type exchangeBuilt struct{ x *Exchange }

func (b exchangeBuilt) attachTCP(samples []Sample) {
	if b.x.tcp != nil {
		attachTCPInfo(b.x.tcp, samples)
	}
}

func (exchangeBuilt) annotate(*Result) {}
