package snmp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gosnmp/gosnmp"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// fakeAgent answers like an agent would: values by OID, a delay, an error.
type fakeAgent struct {
	values map[string]PDU
	walks  map[string][]PDU
	delay  time.Duration
	err    error
}

// fakeClient is the Client of the tests: agents by address, and a record
// of what was asked.
type fakeClient struct {
	mu     sync.Mutex
	agents map[string]*fakeAgent
	asked  []string
	plans  []Attempt
}

func (f *fakeClient) wait(ctx context.Context, a *fakeAgent, at Attempt) error {
	budget := at.Timeout * time.Duration(at.Retries+1)
	select {
	case <-time.After(min(a.delay, budget)):
	case <-ctx.Done():
		return ctx.Err()
	}
	if a.delay > budget {
		return fmt.Errorf("request timeout (after %d retries): %w", at.Retries, gosnmp.ErrMaxRetriesExceeded)
	}
	return a.err
}

func (f *fakeClient) Get(ctx context.Context, t Target, oids []string, at Attempt) ([]PDU, error) {
	f.mu.Lock()
	a := f.agents[t.Address]
	f.asked = append(f.asked, t.Hop+":"+strings.Join(oids, ","))
	f.plans = append(f.plans, at)
	f.mu.Unlock()
	if a == nil {
		return nil, refused
	}
	if err := f.wait(ctx, a, at); err != nil {
		return nil, err
	}
	var out []PDU
	for _, o := range oids {
		p, ok := a.values[o]
		if !ok {
			p = PDU{OID: o, Missing: "no_such_object"}
		}
		p.OID = o
		out = append(out, p)
	}
	return out, nil
}

func (f *fakeClient) Walk(ctx context.Context, t Target, root string, at Attempt) ([]PDU, error) {
	f.mu.Lock()
	a := f.agents[t.Address]
	f.asked = append(f.asked, t.Hop+":walk "+root)
	f.mu.Unlock()
	if a == nil {
		return nil, refused
	}
	if err := f.wait(ctx, a, at); err != nil {
		return nil, err
	}
	return a.walks[root], nil
}

// refused is what reading from a UDP port nobody listens on returns.
var refused = &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("read", syscall.ECONNREFUSED)}

func TestPlan(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		left, timeout time.Duration
		retries       int
		want          Attempt
		ok            bool
	}{
		{5 * time.Second, time.Second, 1, Attempt{Timeout: time.Second, Retries: 1}, true},
		{5 * time.Second, time.Second, 10, Attempt{Timeout: time.Second, Retries: 4}, true}, // only 5 attempts fit
		{1500 * ms, time.Second, 3, Attempt{Timeout: time.Second, Retries: 0}, true},        // one whole attempt fits
		{400 * ms, time.Second, 3, Attempt{Timeout: 400 * ms}, true},                        // cut down to what is left
		{5 * ms, time.Second, 3, Attempt{}, false},                                          // nothing useful fits
		{2 * time.Second, time.Second, 0, Attempt{Timeout: time.Second}, true},
	} {
		got, ok := Plan(tc.left, tc.timeout, tc.retries)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Plan(%v, %v, %d) = %+v %v, want %+v %v", tc.left, tc.timeout, tc.retries, got, ok, tc.want, tc.ok)
		}
		if ok && got.Timeout*time.Duration(got.Retries+1) > tc.left {
			t.Errorf("Plan(%v, %v, %d): attempts take %v, beyond the deadline", tc.left, tc.timeout, tc.retries, got.Timeout*time.Duration(got.Retries+1))
		}
	}
}

const oidLoad1, oidLoad5, oidIfInErr = "1.3.6.1.4.1.2021.10.1.3.1", "1.3.6.1.4.1.2021.10.1.3.2", "1.3.6.1.2.1.2.2.1.14"

func testConfig(t *testing.T, query string) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(`
modules:
  default:
    targets: ["127.0.0.1:*"]
    sla: {default: 10ms}
    snmp:
      query: `+query+`
      timeout: 200ms
      retries: 1
      hops:
        b: {target: "b-agent:161", auth: v2}
        c: {target: "c-agent:161", auth: v3}
      variables:
        - {name: load1, oid: `+oidLoad1+`}
        - {name: load5, oid: `+oidLoad5+`}
        - {name: if_in_errors, oid: `+oidIfInErr+`, interface: eth0}
      playbooks:
        - segment: {from: b, to: c}
          levels:
            - {above: 1x, variables: [load1]}
            - {above: 2x, variables: [load5, if_in_errors]}
auths:
  v2: {version: 2, community: public}
  v3: {version: 3, security_level: authPriv, username: u, auth_protocol: SHA256, password: "password1", priv_protocol: AES, priv_password: "password2"}
`), "test.yml", config.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func verdict(from, to string, ratio float64) sla.Verdict {
	return sla.Verdict{From: from, To: to, Exceeded: ratio > 1, Ratio: ratio, Threshold: 10 * time.Millisecond}
}

func agents() map[string]*fakeAgent {
	return map[string]*fakeAgent{
		"b-agent:161": {values: map[string]PDU{oidLoad1: {Value: 0.5}}},
		"c-agent:161": {values: map[string]PDU{oidLoad1: {Value: 7.2000001}, oidLoad5: {Value: 3}, oidIfInErr + ".3": {Value: 12}},
			walks: map[string][]PDU{oidIfName: {{OID: oidIfName + ".1", Text: "lo"}, {OID: oidIfName + ".3", Text: "eth0"}}}},
	}
}

func TestInvestigate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		query    string
		verdicts []sla.Verdict
		asked    []string
		values   map[string]string // hop → "name=value,…"
	}{
		{"far end, just over", "far_end", []sla.Verdict{verdict("b", "c", 1.5)}, []string{"c:" + oidLoad1}, map[string]string{"c": "load1=7.2000001"}},
		{"far end, over twice", "far_end", []sla.Verdict{verdict("b", "c", 2.5)},
			[]string{"c:walk " + oidIfName, "c:" + oidLoad1 + "," + oidLoad5 + "," + oidIfInErr + ".3"}, map[string]string{"c": "load1=7.2000001,load5=3,if_in_errors=12"}},
		{"near end", "near_end", []sla.Verdict{verdict("b", "c", 1.5)}, []string{"b:" + oidLoad1}, map[string]string{"b": "load1=0.5"}},
		{"both", "both", []sla.Verdict{verdict("b", "c", 1.5)}, []string{"b:" + oidLoad1, "c:" + oidLoad1}, map[string]string{"b": "load1=0.5", "c": "load1=7.2000001"}},
		{"no playbook: the module's variables", "far_end", []sla.Verdict{verdict("a", "b", 3)},
			[]string{"b:walk " + oidIfName, "b:walk " + oidIfDescr, "b:" + oidLoad1 + "," + oidLoad5}, map[string]string{"b": "load1=0.5"}},
		{"within SLA: nothing asked", "far_end", []sla.Verdict{verdict("b", "c", 0.5)}, nil, map[string]string{}},
		{"far end without an agent", "far_end", []sla.Verdict{verdict("c", "z", 4)}, nil, map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, tc.query)
			fc := &fakeClient{agents: agents()}
			q := NewQuerier(fc)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c := Investigate(ctx, q, cfg, cfg.Modules["default"], &prober.Result{}, tc.verdicts)
			slices.Sort(fc.asked)
			slices.Sort(tc.asked)
			if !slices.Equal(fc.asked, tc.asked) {
				t.Errorf("asked %v, want %v", fc.asked, tc.asked)
			}
			got := map[string]string{}
			for _, h := range c.Hops {
				var parts []string
				for _, v := range h.Values {
					parts = append(parts, fmt.Sprintf("%s=%v", v.Name, v.Value))
				}
				got[h.Hop] = strings.Join(parts, ",")
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.values) {
				t.Errorf("values %v, want %v", got, tc.values)
			}
			for _, p := range fc.plans {
				if p.Timeout != 200*time.Millisecond || p.Retries != 1 {
					t.Errorf("attempt %+v, want the module's 200ms and 1 retry", p)
				}
			}
		})
	}
}

func TestQueryFailures(t *testing.T) {
	cfg := testConfig(t, "both")
	m := cfg.Modules["default"]
	for _, tc := range []struct {
		name    string
		agent   *fakeAgent
		reasons []string
	}{
		{"timeout", &fakeAgent{delay: time.Hour}, []string{ReasonTimeout}},
		{"wrong v3 password", &fakeAgent{err: fmt.Errorf("%w", gosnmp.ErrWrongDigest)}, []string{ReasonAuth}},
		{"unknown user", &fakeAgent{err: gosnmp.ErrUnknownUsername}, []string{ReasonAuth}},
		{"missing object", &fakeAgent{values: map[string]PDU{}}, []string{ReasonNoSuchObject}},
		{"text that is no number", &fakeAgent{values: map[string]PDU{oidLoad1: {Missing: "not_a_number", Text: "n/a"}}}, []string{ReasonNotANumber}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := map[string]int{}
			var mu sync.Mutex
			fc := &fakeClient{agents: map[string]*fakeAgent{"b-agent:161": tc.agent}}
			q := NewQuerier(fc)
			q.Errors = func(hop, reason string) { mu.Lock(); errs[hop+"/"+reason]++; mu.Unlock() }
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			start := time.Now()
			c := Investigate(ctx, q, cfg, m, &prober.Result{}, []sla.Verdict{verdict("b", "c", 1.5)})
			// 2 × 200 ms planned; the 2 s context is what an ignored plan
			// would run into.
			if took := time.Since(start); took >= 2*time.Second {
				t.Errorf("took %v: per-hop timeout and retries (2 × 200ms) were not kept", took)
			}
			var b *HopResult
			for i := range c.Hops {
				if c.Hops[i].Hop == "b" {
					b = &c.Hops[i]
				}
			}
			if b == nil || b.Up || len(b.Errors) == 0 || b.Errors[0].Reason != tc.reasons[0] {
				t.Fatalf("hop b: %+v, want down with reason %s", b, tc.reasons[0])
			}
			if errs["b/"+tc.reasons[0]] != 1 {
				t.Errorf("errors counted %v", errs)
			}
			// c (unreachable in this test) fails on its own; b's failure does not stop it.
			if errs["c/"+ReasonUnreachable] != 1 {
				t.Errorf("c's failure not counted: %v", errs)
			}
			if !strings.Contains(c.Debug(), "error ("+tc.reasons[0]+")") {
				t.Errorf("debug output lacks the error:\n%s", c.Debug())
			}
		})
	}
}

func TestQueryKeepsTheScrapeDeadline(t *testing.T) {
	cfg := testConfig(t, "both")
	m := cfg.Modules["default"]
	m.SNMP.Timeout = config.Duration(time.Second)
	retries := 5
	m.SNMP.Retries = &retries
	fc := &fakeClient{agents: map[string]*fakeAgent{"b-agent:161": {delay: time.Hour}, "c-agent:161": {delay: time.Hour}}}
	q := NewQuerier(fc)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	c := Investigate(ctx, q, cfg, m, &prober.Result{}, []sla.Verdict{verdict("b", "c", 1.5)})
	// A query that ignored the 300 ms deadline would wait out at least one
	// whole 1 s attempt of the module's.
	if took := time.Since(start); took >= time.Second {
		t.Errorf("queries took %v past a 300ms deadline", took)
	}
	for _, h := range c.Hops {
		if h.Up || h.Errors[0].Reason != ReasonTimeout {
			t.Errorf("hop %s: %+v", h.Hop, h)
		}
	}
	for _, p := range fc.plans {
		if p.Timeout*time.Duration(p.Retries+1) > 300*time.Millisecond {
			t.Errorf("attempt %+v does not fit the deadline", p)
		}
	}
}

func TestInterfaceIndexIsCached(t *testing.T) {
	cfg := testConfig(t, "far_end")
	fc := &fakeClient{agents: agents()}
	q := NewQuerier(fc)
	for i := 0; i < 3; i++ {
		Investigate(context.Background(), q, cfg, cfg.Modules["default"], &prober.Result{}, []sla.Verdict{verdict("b", "c", 3)})
	}
	walks := 0
	for _, a := range fc.asked {
		if strings.Contains(a, "walk") {
			walks++
		}
	}
	if walks != 1 {
		t.Errorf("%d walks for 3 queries, want 1 (cached)", walks)
	}
	// An interface that does not exist is reported, not guessed.
	cfg.Modules["default"].SNMP.Variables[2].Interface = "eth9"
	c := Investigate(context.Background(), q, cfg, cfg.Modules["default"], &prober.Result{}, []sla.Verdict{verdict("b", "c", 3)})
	found := false
	for _, h := range c.Hops {
		for _, e := range h.Errors {
			found = found || e.Reason == ReasonNoSuchInterface
		}
	}
	if !found {
		t.Errorf("eth9 not reported: %s", c.Debug())
	}
}

func TestInbandValuesAndFormatting(t *testing.T) {
	r := &prober.Result{Hops: []prober.HopResult{{Name: "b"}, {Name: "c", Vars: map[string]float64{"load1": 0.52, "load5": 0.3}}}}
	c := Investigate(context.Background(), NewQuerier(&fakeClient{}), testConfig(t, "far_end"), &config.Module{}, r, []sla.Verdict{verdict("b", "c", 2)})
	if len(c.Hops) != 1 || c.Hops[0].Source != SourceInband || len(c.Hops[0].Values) != 2 || !slices.Equal(c.Violations[0].Hops, []string{"c"}) {
		t.Errorf("in-band context %+v", c)
	}
	for _, tc := range []struct {
		v    float64
		want string
	}{{7.2000001, "7.2"}, {12, "12"}, {0.52, "0.52"}, {1.23456789, "1.2346"}, {-3.5, "-3.5"}, {123456789012, "123456789012"}} {
		if got := FormatValue(tc.v); got != tc.want {
			t.Errorf("FormatValue(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

func TestLocalVariables(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "loadavg"), []byte("0.52 0.58 0.61 1/467 12345\n"), 0o600)
	os.MkdirAll(filepath.Join(root, "net"), 0o755)
	os.WriteFile(filepath.Join(root, "net", "dev"), []byte(`Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 5000      50    7    2    0     0          0         0     6000      60    1    3    0     0       0          0
`), 0o600)
	fc := &fakeClient{agents: map[string]*fakeAgent{"127.0.0.1:161": {values: map[string]PDU{"1.3.6.1.4.1.2021.11.11.0": {Value: 93}}}}}
	l, err := NewLocal(LocalOptions{Specs: []string{"load1", "load15", "if_in_errors:eth0", "eth0_out_drops=if_out_drops:eth0", "idle=1.3.6.1.4.1.2021.11.11.0"},
		Agent: "127.0.0.1:161", Community: "public", ProcRoot: root, Client: fc})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, v := range l.Snapshot() {
		got[v.Name] = v.Value
	}
	want := map[string]float64{"load1": 0.52, "load15": 0.61, "if_in_errors": 7, "eth0_out_drops": 3, "idle": 93}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("local variables %v, want %v", got, want)
	}
	for _, bad := range []struct{ spec, want string }{
		{"load2", "source \"load2\" unknown"},
		{"if_in_bogus:eth0", "not an interface counter"},
		{"1.3.6.1.2.1.1.3.0", "an OID needs a name"},
		{"hop=load1", "taken by a fixed label"},
		{"bad-name=load1", "not usable as a label name"},
	} {
		if _, err := NewLocal(LocalOptions{Specs: []string{bad.spec}, ProcRoot: root, Client: fc}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("spec %q: %v, want %q", bad.spec, err, bad.want)
		}
	}
	if _, err := NewLocal(LocalOptions{Specs: []string{"load1", "load1"}, ProcRoot: root}); err == nil || !strings.Contains(err.Error(), "named twice") {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := NewLocal(LocalOptions{Specs: []string{"x=1.3.6.1.2.1.1.3.0"}, ProcRoot: root}); err == nil || !strings.Contains(err.Error(), "--inband.snmp-agent") {
		t.Errorf("OID without agent: %v", err)
	}
	l2, _ := NewLocal(LocalOptions{Specs: []string{"if_in_errors:wlan9"}, ProcRoot: root})
	if l2.Err() == nil || !strings.Contains(l2.Err().Error(), "wlan9") {
		t.Errorf("missing interface not reported: %v", l2.Err())
	}
	// A /proc file that is not what the kernel writes is reported, and the
	// variables that could be read are still attached.
	os.WriteFile(filepath.Join(root, "loadavg"), []byte("0.52 zero\n"), 0o600)
	os.WriteFile(filepath.Join(root, "net", "dev"), []byte("  eth0: 5000 50\n"), 0o600)
	l3, _ := NewLocal(LocalOptions{Specs: []string{"load1", "load5", "load15", "if_in_errors:eth0", "if_in_bytes:eth0"}, ProcRoot: root})
	got = map[string]float64{}
	for _, v := range l3.Snapshot() {
		got[v.Name] = v.Value
	}
	if fmt.Sprint(got) != "map[if_in_bytes:5000 load1:0.52]" {
		t.Errorf("partial /proc: %v", got)
	}
	for _, want := range []string{"load5: " + root + "/loadavg: column 2: strconv.ParseFloat", "load15: " + root + "/loadavg: 2 fields, column 3 missing", "if_in_errors: " + root + "/net/dev interface eth0: 2 fields, column 3 missing"} {
		if l3.Err() == nil || !strings.Contains(l3.Err().Error(), want) {
			t.Errorf("partial /proc: error %v, want %q", l3.Err(), want)
		}
	}
}

func FuzzParseLocal(f *testing.F) {
	for _, s := range []string{"load1", "load15", "if_in_errors:eth0", "x=if_out_drops:eth0", "idle=1.3.6.1.4.1.2021.11.11.0", "1.3.6", "hop=load1", "a=b=c", "if_in_errors:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		v, err := parseLocal(spec)
		if err != nil {
			return
		}
		if peer.ValidateVarName(v.name) != nil {
			t.Fatalf("%q accepted with name %q", spec, v.name)
		}
		switch v.kind {
		case "loadavg":
			if v.index < 0 || v.index > 2 {
				t.Fatalf("%q: loadavg column %d", spec, v.index)
			}
		case "netdev":
			if v.iface == "" || v.index < 0 || v.index > 15 {
				t.Fatalf("%q: interface %q column %d", spec, v.iface, v.index)
			}
		case "oid":
			if !localOIDRE.MatchString(v.oid) || strings.HasPrefix(v.oid, ".") {
				t.Fatalf("%q: OID %q", spec, v.oid)
			}
		default:
			t.Fatalf("%q: kind %q", spec, v.kind)
		}
	})
}

func FuzzParseNetdev(f *testing.F) {
	f.Add([]byte("Inter-|   Receive\n face |bytes\n    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0\n"))
	f.Add([]byte("eth0:1 2 3\r\n:\n::\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for iface, cols := range parseNetdev(data) {
			if strings.ContainsAny(iface, ":\n") || iface != strings.TrimSpace(iface) {
				t.Fatalf("interface %q", iface)
			}
			for i := range cols {
				if _, err := column(cols, i); err != nil && !strings.Contains(err.Error(), "column") {
					t.Fatalf("column error without its place: %v", err)
				}
			}
		}
	})
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{gosnmp.ErrWrongDigest, ReasonAuth},
		{gosnmp.ErrDecryption, ReasonAuth},
		{fmt.Errorf("x: %w", gosnmp.ErrMaxRetriesExceeded), ReasonTimeout},
		{context.DeadlineExceeded, ReasonTimeout},
		{fmt.Errorf("%w: agent answered AuthorizationError", errAuthorization), ReasonAuth},
		{fmt.Errorf("get: %w", fmt.Errorf("incoming packet is not authentic, discarding")), ReasonAuth},
		{errors.New("something"), ReasonError},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}
