package config

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestGoodConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/good/*.yml")
	if len(files) == 0 {
		t.Fatal("no good examples")
	}
	for _, f := range files {
		// As a process with the chain's key loads them (authenticated
		// STAMP modules need it; TestBadConfigs loads without).
		if _, err := Load(f, Limits{AuthKey: true}); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// Every bad example starts with "# error: <text>": loading must fail with
// an error containing that text, with the file name swapped in.
func TestBadConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.yml")
	if len(files) == 0 {
		t.Fatal("no bad examples")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(data), "\n")
			want, ok := strings.CutPrefix(first, "# error: ")
			if !ok {
				t.Fatalf("%s does not start with # error:", f)
			}
			want = strings.Replace(want, "bad.yml", f, 1)
			_, err = Load(f, Limits{})
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v\nwant it to contain %q", err, want)
			}
		})
	}
}

func TestDefaultsAndThresholds(t *testing.T) {
	c, err := Load("testdata/good/full.yml", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	m := c.Modules["mtu"]
	if time.Duration(m.Timeout) != DefaultTimeout || m.Probes != DefaultProbes || time.Duration(m.Interval) != DefaultInterval || m.Inband != InbandNever {
		t.Errorf("defaults not filled in: %+v", m)
	}
	d := c.Modules["default"]
	if got := d.SLA.Threshold("b", "c"); got != 20*time.Millisecond {
		t.Errorf("b->c threshold %v", got)
	}
	if got := d.SLA.Threshold("a", "b"); got != 100*time.Millisecond {
		t.Errorf("default threshold %v", got)
	}
	if d.SNMP.Hops["z"].Target != "10.0.0.9:161" {
		t.Errorf("agent port not defaulted: %q", d.SNMP.Hops["z"].Target)
	}
}

func TestAllows(t *testing.T) {
	m := &Module{Targets: []string{"127.0.0.1:*", "[::1]:9000", "relay-*:9000", "relay-*.example.net:9100", "10.0.0.*:9000", "[fd00::*]:9000", "*.hops.example:9000", "Host.Example:80"}}
	for _, tc := range []struct {
		target string
		ok     bool
	}{
		{"127.0.0.1:9000", true},
		{"127.0.0.1:1", true},
		{"127.0.0.2:9000", false},
		{"[::1]:9000", true},
		{"[::1]:9001", false},
		{"relay-b:9000", true},
		{"relay-b.example.net:9000", false}, // a name * stays within one label
		{"relay-b.example.net:9100", true},
		{"relay-b.evil.example.net:9100", false},
		{"relay-.example.net:9100", true},
		{"relay-b.example.net:9001", false},
		{"evil.example.net:9000", false},
		{"c.hops.example:9000", true},
		{"hops.example:9000", false},
		{"x.c.hops.example:9000", false},
		{"10.0.0.17:9000", true},
		{"10.0.1.17:9000", false},
		{"10.0.0.1.evil.example:9000", false}, // an address * matches addresses only
		{"10.0.0.:9000", false},
		{"[fd00::1]:9000", true},
		{"[fd00::1.evil]:9000", false},
		{"host.example:80", true},
		{"127.0.0.1", false},
		{"127.0.0.1:0", false},
		{"127.0.0.1:http", false},
		{"", false},
	} {
		err := m.Allows(tc.target)
		if (err == nil) != tc.ok {
			t.Errorf("Allows(%q) = %v, want ok=%v", tc.target, err, tc.ok)
		}
	}
}

func TestPlaybookLevels(t *testing.T) {
	c, err := Load("testdata/good/full.yml", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	s := c.Modules["default"].SNMP
	names := func(vs []Variable) string {
		var out []string
		for _, v := range vs {
			out = append(out, v.Name)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		from, to string
		ratio    float64
		want     string
	}{
		{"b", "c", 1.2, "load1,load5"},
		{"b", "c", 2.5, "load1,load5,if_in_errors"},
		{"c", "z", 5, "load1,load5,if_in_errors"}, // no playbook: the module's variables
	} {
		if got := names(s.VariablesFor(Subject{From: tc.from, To: tc.to}, tc.ratio)); got != tc.want {
			t.Errorf("%s->%s at %vx: %s, want %s", tc.from, tc.to, tc.ratio, got, tc.want)
		}
	}
	if got := s.HopsFor(Subject{From: "b", To: "c"}); len(got) != 1 || got[0] != "c" {
		t.Errorf("far_end hops %v", got)
	}
	if got := s.HopsFor(Subject{Hop: "c"}); len(got) != 1 || got[0] != "c" {
		t.Errorf("a hop's residence asks the hop itself: %v", got)
	}
}

func TestRedactedHidesSecrets(t *testing.T) {
	c, err := Load("testdata/good/full.yml", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	out := c.Redacted("default")
	for _, secret := range []string{"public", "correct horse", "battery staple"} {
		if strings.Contains(out, secret) {
			t.Errorf("redacted output shows %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"<secret>", "monitor", "load1", "timeout: 5s"} {
		if !strings.Contains(out, want) {
			t.Errorf("redacted output lacks %q:\n%s", want, out)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, p := range []string{"testdata/good/full.yml", "testdata/good/minimal.yml", "testdata/bad/unknown_key.yml"} {
		data, err := os.ReadFile(p)
		if err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yml", Limits{})
		if err == nil {
			for name, m := range c.Modules {
				_ = m.Allows("127.0.0.1:9000")
				_ = c.Redacted(name)
			}
		}
	})
}

func FuzzAllows(f *testing.F) {
	for _, s := range [][2]string{{"10.0.0.*:9000", "10.0.0.1:9000"}, {"relay-*.example.net:*", "relay-b.example.net:1"}, {"[fd00::*]:9000", "[fd00::1]:9000"}, {"b:9000", "B:9000"}, {"10.0.0.*:9000", "10.0.0.1.evil:9000"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, target string) {
		if checkPattern(pattern) != nil {
			return
		}
		m := &Module{Targets: []string{pattern}}
		if m.Allows(target) != nil {
			return
		}
		// An allowed target is a real host:port, and a wildcard never
		// lets a host name through an address pattern or across a label.
		host, port, err := net.SplitHostPort(target)
		if err != nil || host == "" || port == "" {
			t.Fatalf("%q allowed %q, which is not host:port", pattern, target)
		}
		ph, _, _ := net.SplitHostPort(pattern)
		prefix, suffix, wild := strings.Cut(strings.ToLower(ph), "*")
		if !wild {
			if !strings.EqualFold(ph, host) {
				t.Fatalf("%q allowed %q", pattern, target)
			}
			return
		}
		h := strings.ToLower(host)
		if addressPattern(prefix+suffix) && net.ParseIP(h) == nil {
			t.Fatalf("address pattern %q allowed host name %q", pattern, host)
		}
		if !addressPattern(prefix+suffix) && strings.Count(h, ".") != strings.Count(prefix+suffix, ".") {
			t.Fatalf("name pattern %q allowed %q across labels", pattern, host)
		}
	})
}

func TestContinuousDefaults(t *testing.T) {
	c, err := Load("testdata/good/http.yml", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	e := c.Continuous[0]
	if time.Duration(e.Interval) != DefaultContinuousInterval || len(e.Buckets) != 19 || e.Buckets[0] != 50e-6 || e.Buckets[18] < 10 {
		t.Errorf("defaults not filled in: %+v", e)
	}
	if got := c.Continuous[1].Buckets; len(got) != 7 {
		t.Errorf("own buckets replaced: %v", got)
	}
}

func TestSNMPRetriesZeroMeansNone(t *testing.T) {
	base := `modules:
  default:
    targets: ["127.0.0.1:*"]
    snmp:
      hops: {c: {target: "127.0.0.1:161", auth: v2}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
%s
auths:
  v2: {version: 2, community: public}
`
	for _, tc := range []struct {
		line string
		want int
	}{
		{"", DefaultSNMPRetries},
		{"      retries: 0", 0},
		{"      retries: 3", 3},
	} {
		path := filepath.Join(t.TempDir(), "subsegment.yml")
		if err := os.WriteFile(path, fmt.Appendf(nil, base, tc.line), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path, Limits{})
		if err != nil {
			t.Fatalf("%q: %v", tc.line, err)
		}
		if got := c.Modules["default"].SNMP.RetryCount(); got != tc.want {
			t.Errorf("%q: %d retries, want %d", tc.line, got, tc.want)
		}
	}
}

func TestSTAMPModule(t *testing.T) {
	c, err := Load("testdata/good/stamp.yml", Limits{AuthKey: true})
	if err != nil {
		t.Fatal(err)
	}
	r, plain, signed := c.Modules["router"], c.Modules["plain"], c.Modules["signed"]
	if !r.IsSTAMP() || r.PacketCount() != 20 || r.PacketInterval() != 10*time.Millisecond || r.STAMP.DSCP != 46 || len(r.STAMP.TLVs) != 5 {
		t.Errorf("router: %+v %+v", r, r.STAMP)
	}
	if len(plain.STAMP.TLVs) != 0 || plain.STAMP.TLVs == nil {
		t.Errorf("tlvs: [] must ask for none, got %v", plain.STAMP.TLVs)
	}
	if signed.PacketCount() != 100 || signed.PacketInterval() != time.Millisecond || !signed.STAMP.Authenticated || !signed.STAMP.HasTLV("direct_measurement") {
		t.Errorf("signed: %+v %+v", signed, signed.STAMP)
	}
	for _, tc := range []struct {
		m      *Module
		target string
		ok     bool
	}{
		{r, "10.0.0.7:862", true},
		{r, "stamp://10.0.0.7:862?name=r7", true},
		{r, "stamp://10.0.0.7", true},
		{r, "10.0.0.7:9000", false},
		{r, "http://10.0.0.7:862/", false},
		{c.Modules["plain"], "stamp://127.0.0.1:8620", true},
	} {
		if err := tc.m.Allows(tc.target); (err == nil) != tc.ok {
			t.Errorf("%s: %v, want allowed %v", tc.target, err, tc.ok)
		}
	}
	tcp := &Module{Targets: []string{"127.0.0.1:*"}, Prober: ProberTCP}
	if err := tcp.Allows("stamp://127.0.0.1:862"); err == nil || !strings.Contains(err.Error(), "prober: stamp") {
		t.Errorf("a tcp module took a STAMP target: %v", err)
	}
	if m := DefaultModule("stamp://127.0.0.1:862", time.Second); !m.IsSTAMP() || len(m.STAMP.TLVs) != len(DefaultSTAMPTLVs) {
		t.Errorf("default module of a stamp:// target: %+v", m)
	}
}
