package snmp

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
)

// Request is what to ask one hop.
type Request struct {
	Target Target
	Vars   []config.Variable
}

// HopResult is what one hop answered.
type HopResult struct {
	Hop    string
	Source string // "snmp" or "inband"
	// Up: every variable asked was read.
	Up     bool
	Values []Value
	// Errors say what went wrong, one per failed variable or request.
	Errors []Error
}

// Value is one variable's value.
type Value struct {
	Name  string
	Value float64
}

// Error is one failure, with its reason (the metric label) and detail.
type Error struct {
	Reason string
	Err    error
}

// Sources of context values.
const (
	SourceSNMP   = "snmp"
	SourceInband = "inband"
)

// Querier asks hops' agents, within a deadline.
type Querier struct {
	Client Client
	// Timeout and Retries are what a request may take at most; the
	// deadline cuts them down.
	Timeout time.Duration
	Retries int
	// Margin is kept back from the deadline for rendering the answer.
	Margin time.Duration
	// Errors counts failures (subsegment_snmp_errors_total); may be nil.
	Errors  func(hop, reason string)
	ifIndex *ifIndexCache
}

// NewQuerier returns a querier over client.
func NewQuerier(client Client) *Querier {
	return &Querier{Client: client, Timeout: config.DefaultSNMPTimeout, Retries: config.DefaultSNMPRetries,
		Margin: 20 * time.Millisecond, ifIndex: newIfIndexCache(10 * time.Minute)}
}

// Plan fits a request's attempts into what is left before the deadline: a
// per-attempt timeout no longer than timeout, and no more retries than the
// remaining time holds. It returns false when not even a 10 ms attempt fits.
func Plan(left, timeout time.Duration, retries int) (Attempt, bool) {
	const minAttempt = 10 * time.Millisecond
	if left < minAttempt {
		return Attempt{}, false
	}
	if timeout > left {
		return Attempt{Timeout: left}, true
	}
	fit := int(left/timeout) - 1
	return Attempt{Timeout: timeout, Retries: max(0, min(retries, fit))}, true
}

// Query asks every hop concurrently and returns their results in order.
func (q *Querier) Query(ctx context.Context, reqs []Request) []HopResult {
	out := make([]HopResult, len(reqs))
	var wg sync.WaitGroup
	for i := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = q.query(ctx, reqs[i])
		}()
	}
	wg.Wait()
	for _, r := range out {
		for _, e := range r.Errors {
			if q.Errors != nil {
				q.Errors(r.Hop, e.Reason)
			}
		}
	}
	return out
}

// attempt plans one request from the context's deadline.
func (q *Querier) attempt(ctx context.Context) (Attempt, error) {
	left := time.Hour
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl) - q.Margin
	}
	a, ok := Plan(left, q.Timeout, q.Retries)
	if !ok {
		return Attempt{}, fmt.Errorf("no time left before the scrape deadline: %w", context.DeadlineExceeded)
	}
	return a, nil
}

func (q *Querier) query(ctx context.Context, r Request) HopResult {
	res := HopResult{Hop: r.Target.Hop, Source: SourceSNMP}
	fail := func(reason string, err error) { res.Errors = append(res.Errors, Error{Reason: reason, Err: err}) }
	var oids []string
	var asked []config.Variable
	for _, v := range r.Vars {
		oid := strings.TrimPrefix(v.OID, ".")
		if v.Interface != "" {
			idx, err := q.interfaceIndex(ctx, r.Target, v.Interface)
			if err != nil {
				reason := Classify(err)
				if errors.Is(err, errNoSuchInterface) {
					reason = ReasonNoSuchInterface
				}
				fail(reason, fmt.Errorf("%s: interface %q: %w", v.Name, v.Interface, err))
				continue
			}
			oid += "." + idx
		}
		oids = append(oids, oid)
		asked = append(asked, v)
	}
	if len(oids) == 0 {
		return res
	}
	a, err := q.attempt(ctx)
	if err != nil {
		fail(ReasonTimeout, err)
		return res
	}
	pdus, err := q.Client.Get(ctx, r.Target, oids, a)
	if err != nil {
		fail(Classify(err), fmt.Errorf("get from %s (%s): %w", r.Target.Hop, r.Target.Address, err))
		return res
	}
	byOID := map[string]PDU{}
	for _, p := range pdus {
		byOID[p.OID] = p
	}
	for i, v := range asked {
		p, ok := byOID[oids[i]]
		switch {
		case !ok:
			fail(ReasonNoSuchObject, fmt.Errorf("%s (%s): not in the answer", v.Name, oids[i]))
		case p.Missing != "":
			fail(p.Missing, fmt.Errorf("%s (%s): %s %q", v.Name, oids[i], strings.ReplaceAll(p.Missing, "_", " "), p.Text))
		default:
			value := p.Value
			if v.Scale != 0 {
				value *= v.Scale
			}
			res.Values = append(res.Values, Value{Name: v.Name, Value: value})
		}
	}
	res.Up = len(res.Errors) == 0
	return res
}

var errNoSuchInterface = errors.New("no interface with that ifName or ifDescr")

// IF-MIB columns naming interfaces.
const (
	oidIfName  = "1.3.6.1.2.1.31.1.1.1.1"
	oidIfDescr = "1.3.6.1.2.1.2.2.1.2"
)

// interfaceIndex finds the ifIndex of an interface by ifName, then
// ifDescr; answers are cached, failures are not.
func (q *Querier) interfaceIndex(ctx context.Context, t Target, name string) (string, error) {
	key := t.Address + "\x00" + name
	if idx, ok := q.ifIndex.get(key); ok {
		return idx, nil
	}
	for _, col := range []string{oidIfName, oidIfDescr} {
		a, err := q.attempt(ctx)
		if err != nil {
			return "", err
		}
		pdus, err := q.Client.Walk(ctx, t, col, a)
		if err != nil {
			return "", err
		}
		for _, p := range pdus {
			if p.Text == name {
				idx := strings.TrimPrefix(strings.TrimPrefix(p.OID, col), ".")
				q.ifIndex.put(key, idx)
				return idx, nil
			}
		}
	}
	return "", errNoSuchInterface
}

type ifIndexCache struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]cached
}

type cached struct {
	idx string
	at  time.Time
}

func newIfIndexCache(ttl time.Duration) *ifIndexCache {
	return &ifIndexCache{ttl: ttl, m: map[string]cached{}}
}

func (c *ifIndexCache) get(key string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || time.Since(e.at) > c.ttl {
		return "", false
	}
	return e.idx, true
}

func (c *ifIndexCache) put(key, idx string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) > 10000 {
		clear(c.m)
	}
	c.m[key] = cached{idx: idx, at: time.Now()}
}
