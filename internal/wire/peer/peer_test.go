package peer

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // "" = valid
	}{
		{"b", ""},
		{"web1.dc1.example.net", ""},
		{"a_b-c.9", ""},
		{strings.Repeat("x", MaxNameLen), ""},
		{"", "empty"},
		{strings.Repeat("x", MaxNameLen+1), "at most 64"},
		{"a b", `' '`},
		{"z\xff\"}", "not UTF-8"},
		{`z"}`, `'"'`},
		{"same#2", `'#'`},
		{"é", `'é'`},
	} {
		err := ValidateName(tc.name)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("ValidateName(%q) = %v, want %q", tc.name, err, tc.want)
		}
		if (err == nil) != (CheckNameBytes([]byte(tc.name)) == nil) {
			t.Errorf("ValidateName and CheckNameBytes disagree on %q", tc.name)
		}
	}
}

func TestSanitizeName(t *testing.T) {
	for in, want := range map[string]string{
		"web1.dc1.example.net":     "web1.dc1.example.net",
		"host with space":          "host-with-space",
		"":                         "source",
		"---":                      "source",
		strings.Repeat("h", 70):    strings.Repeat("h", 64),
		"ünïcode.example":          "n--code.example",
		"web1.dc1\x00.example.net": "web1.dc1-.example.net",
	} {
		got := SanitizeName(in)
		if got != want {
			t.Errorf("SanitizeName(%q) = %q, want %q", in, got, want)
		}
		if ValidateName(got) != nil {
			t.Errorf("SanitizeName(%q) = %q is not a valid name", in, got)
		}
	}
}

// The default is the whole host name: web1.dc1 and web1.dc2 stay apart.
func TestDefaultNameIsTheFullHostName(t *testing.T) {
	h, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	if got := DefaultName(); got != SanitizeName(h) || ValidateName(got) != nil {
		t.Errorf("DefaultName() = %q for host %q", got, h)
	}
}

func TestLabels(t *testing.T) {
	for _, tc := range []struct {
		hops []Hop
		want []string
		dup  bool
	}{
		{[]Hop{{1, "a"}, {2, "b"}, {3, "c"}}, []string{"a", "b", "c"}, false},
		{[]Hop{{1, "same"}, {2, "same"}, {3, "same"}, {4, "same"}}, []string{"same", "same#2", "same#3", "same#4"}, true},
		// The same identity twice keeps its label.
		{[]Hop{{1, "a"}, {2, "b"}, {1, "a"}}, []string{"a", "b", "a"}, false},
		// Hops without an identity are told apart by position.
		{[]Hop{{1, "b"}, {0, "b"}}, []string{"b", "b#2"}, true},
	} {
		got, dup := Labels(tc.hops)
		if !slices.Equal(got, tc.want) || dup != tc.dup {
			t.Errorf("Labels(%v) = %v %v, want %v %v", tc.hops, got, dup, tc.want, tc.dup)
		}
		for _, l := range got {
			if err := ValidateLabel(l); err != nil {
				t.Errorf("label %q does not validate: %v", l, err)
			}
		}
	}
	for _, bad := range []string{"a#1", "a#", "#2", "a b#2", "a#x"} {
		if ValidateLabel(bad) == nil {
			t.Errorf("ValidateLabel(%q) accepted", bad)
		}
	}
}

func TestValidateVarName(t *testing.T) {
	for name, ok := range map[string]bool{"load1": true, "if_in_errors": true, "_x": true, "1x": false, "load-1": false, "hop": false, "le": false, "__name": false, "": false, strings.Repeat("v", 65): false} {
		if err := ValidateVarName(name); (err == nil) != ok {
			t.Errorf("ValidateVarName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestTextRules(t *testing.T) {
	for _, tc := range []struct {
		text string
		ok   bool
	}{
		{"c cannot reach 10.0.0.9:9000: dial tcp: connection refused", true},
		{"ünicode is fine", true},
		{"line\nbreak", false},
		{"escape \x1b[31m", false},
		{"c1 control \u0085", false},
		{"bad \xc3", false},
		{"tab\tinside", false},
	} {
		if err := CheckText([]byte(tc.text), MaxMessageLen); (err == nil) != tc.ok {
			t.Errorf("CheckText(%q) = %v, want ok=%v", tc.text, err, tc.ok)
		}
		clean := SanitizeText(tc.text, MaxMessageLen)
		if CheckText([]byte(clean), MaxMessageLen) != nil {
			t.Errorf("SanitizeText(%q) = %q still refused", tc.text, clean)
		}
	}
	long := strings.Repeat("é", 400) // 800 bytes: cut at a character boundary
	if s := SanitizeText(long, MaxMessageLen); len(s) > MaxMessageLen || !utf8.ValidString(s) {
		t.Errorf("SanitizeText cut %d bytes into invalid UTF-8", len(s))
	}
	for _, p := range []string{"z", "10.0.0.9:9000", "[::1]:9000", "[fe80::1%eth0]:80", "hop3"} {
		if err := CheckPeerBytes([]byte(p)); err != nil {
			t.Errorf("CheckPeerBytes(%q): %v", p, err)
		}
	}
	for _, p := range []string{"", "a b", "z\xff", strings.Repeat("p", 256)} {
		if CheckPeerBytes([]byte(p)) == nil {
			t.Errorf("CheckPeerBytes(%q) accepted", p)
		}
		if CheckPeerBytes([]byte(SanitizePeer(p))) != nil {
			t.Errorf("SanitizePeer(%q) = %q still refused", p, SanitizePeer(p))
		}
	}
}

func TestValidateAddress(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"127.0.0.1:9000", ""},
		{"[::1]:9000", ""},
		{"relay-b.example.net:9000", ""},
		{"127.0.0.1", "has no port: add one, e.g. 127.0.0.1:9000"},
		{"relay-b", "has no port"},
		{"::1", "write an IPv6 address as [::1]:port"},
		{":9000", "has no host"},
		{"h:", "has no port"},
		{"h:99999", "not 1-65535"},
		{"", "empty"},
	} {
		err := ValidateAddress(tc.addr)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("ValidateAddress(%q) = %v, want %q", tc.addr, err, tc.want)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Reason
	}{
		{syscall.ECONNREFUSED, ReasonRefused},
		{fmt.Errorf("dial: %w", syscall.ECONNRESET), ReasonReset},
		{io.EOF, ReasonClosed},
		{os.ErrDeadlineExceeded, ReasonTimeout},
		{fmt.Errorf("x: %w", NewError(ReasonTooLarge, "big")), ReasonTooLarge},
		{syscall.EHOSTUNREACH, ReasonUnreachable},
		{errors.New("something else"), ReasonUnknown},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	for _, r := range Reasons() {
		if !r.Valid() || strings.HasPrefix(r.String(), "reason_") {
			t.Errorf("reason %d has no name", r)
		}
	}
	if Reason(200).Valid() {
		t.Error("reason 200 is valid")
	}
}

func FuzzLabelRules(f *testing.F) {
	for _, s := range []string{"b", "same#2", "z\xff\"}", "a#1", "##", "web1.dc1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateName(s) == nil && (!utf8.ValidString(s) || strings.ContainsAny(s, "\"\\\n{}=# ")) {
			t.Fatalf("name %q accepted", s)
		}
		if ValidateLabel(s) == nil && !utf8.ValidString(s) {
			t.Fatalf("label %q accepted", s)
		}
		if ValidateName(SanitizeName(s)) != nil {
			t.Fatalf("SanitizeName(%q) = %q invalid", s, SanitizeName(s))
		}
		if CheckText([]byte(SanitizeText(s, 64)), 64) != nil {
			t.Fatalf("SanitizeText(%q) invalid", s)
		}
	})
}

func TestParseHTTPTarget(t *testing.T) {
	for _, c := range []struct {
		in, addr, host, uri, err string
	}{
		{in: "http://h1:8080/health", addr: "h1:8080", host: "h1", uri: "/health"},
		{in: "https://edge.example.net/a?b=c#frag", addr: "edge.example.net:443", host: "edge.example.net", uri: "/a?b=c"},
		{in: "HTTP://127.0.0.1", addr: "127.0.0.1:80", host: "127.0.0.1", uri: "/"},
		{in: "http://[::1]:81/x y", addr: "[::1]:81", host: "::1", uri: "/x%20y"},
		{in: "ftp://h1/", err: `scheme "ftp": use http:// or https://`},
		{in: "http://user:pw@h1/", err: "carries user information"},
		{in: "http:///path", err: "has no host"},
		{in: "http://h1:99999/", err: "not 1-65535"},
		{in: "http://h1/\r\nX: y", err: "invalid control character"},
		{in: "http://" + strings.Repeat("a", 3000), err: "too long"},
	} {
		got, err := ParseHTTPTarget(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want one containing %q", c.in, err, c.err)
			}
			if err != nil && strings.Contains(err.Error(), "pw") {
				t.Errorf("%q: the error shows the password: %v", c.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if got.Address != c.addr || got.Host != c.host || got.URL.RequestURI() != c.uri {
			t.Errorf("%q: got %s %s %s, want %s %s %s", c.in, got.Address, got.Host, got.URL.RequestURI(), c.addr, c.host, c.uri)
		}
	}
	if !IsHTTPTarget("HTTPS://x") || IsHTTPTarget("h1:80") {
		t.Error("IsHTTPTarget")
	}
}

// labelsByMaps is the rule of Labels as it was written first, with maps:
// the oracle AppendLabels is held to.
func labelsByMaps(hops []Hop) ([]string, bool) {
	labels, dup := make([]string, len(hops)), false
	byID, count := map[uint64]string{}, map[string]int{}
	for i, h := range hops {
		if l, ok := byID[h.ID]; ok && h.ID != 0 {
			labels[i] = l
			continue
		}
		count[h.Name]++
		l := h.Name
		if n := count[h.Name]; n > 1 {
			l, dup = h.Name+"#"+strconv.Itoa(n), true
		}
		labels[i] = l
		if h.ID != 0 {
			byID[h.ID] = l
		}
	}
	return labels, dup
}

func TestAppendLabelsKeepsTheRule(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		hops := make([]Hop, rng.IntN(80))
		for i := range hops {
			hops[i] = Hop{ID: uint64(rng.IntN(6)), Name: string(rune('a' + rng.IntN(3)))}
		}
		want, wantDup := labelsByMaps(hops)
		got, dup := AppendLabels([]string{"kept"}, hops)
		if got[0] != "kept" || !slices.Equal(got[1:], want) || dup != wantDup {
			t.Fatalf("AppendLabels(%v) = %v %v, want %v %v", hops, got[1:], dup, want, wantDup)
		}
	}
	hops := []Hop{{1, "a"}, {2, "b"}, {3, "z"}}
	dst := make([]string, 0, 3)
	if n := testing.AllocsPerRun(100, func() { dst, _ = AppendLabels(dst[:0], hops) }); n != 0 {
		t.Errorf("%v allocations labelling a chain without repeated names", n)
	}
}

func TestParseSTAMPTarget(t *testing.T) {
	for _, tc := range []struct {
		in, addr, name, err string
	}{
		{"stamp://10.0.0.1:8620", "10.0.0.1:8620", "10.0.0.1", ""},
		{"stamp://10.0.0.1", "10.0.0.1:862", "10.0.0.1", ""},
		{"STAMP://r1.example.net:862?name=r1", "r1.example.net:862", "r1", ""},
		{"stamp://[fd00::1]:862", "[fd00::1]:862", "fd00__1", ""},
		{"stamp://[fd00::1]", "[fd00::1]:862", "fd00__1", ""},
		{"stamp://10.0.0.1:862?name=bad%20name", "", "", "name"},
		{"stamp://10.0.0.1:862?dscp=1", "", "", "unknown parameter"},
		{"stamp://u@10.0.0.1:862", "", "", "only stamp://host:port"},
		{"stamp://10.0.0.1:862/x", "", "", "only stamp://host:port"},
		{"stamp://:862", "", "", "no host"},
		{"stamp://10.0.0.1:99999", "", "", "not 1-65535"},
		{"10.0.0.1:862", "", "", "not a STAMP reflector"},
	} {
		got, err := ParseSTAMPTarget(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || got.Address != tc.addr || got.Name != tc.name):
			t.Errorf("%s: %+v %v, want %s %s", tc.in, got, err, tc.addr, tc.name)
		}
	}
	if n := AddressName("host-with-a-very-long-name-that-goes-on.and-on.and-on.example.net:862"); len(n) != MaxNameLen || ValidateName(n) != nil {
		t.Errorf("long name %q", n)
	}
}
