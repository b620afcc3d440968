package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/certtest"
	"github.com/subsegment/subsegment_exporter/internal/testkit/doccheck"
)

// The documentation's examples that need running processes: every
// <!-- run: NAME -->, <!-- output: NAME --> and <!-- example: json NAME -->
// block of README.md, docs/*.md and mixins/README.md is handled by the
// scenario of that name below (docs/development.md, "Examples in the
// documentation"). A marker without a scenario, or a scenario no block
// uses, fails.

// docBlocks returns the classified files' blocks.
func docBlocks(t *testing.T) []doccheck.Block {
	t.Helper()
	root, err := doccheck.Root()
	if err != nil {
		t.Fatal(err)
	}
	files, err := doccheck.Files(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []doccheck.Block
	for _, f := range files {
		if f != "README.md" && f != "mixins/README.md" && !strings.HasPrefix(f, "docs/") {
			continue
		}
		bs, err := doccheck.Blocks(root, f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bs...)
	}
	return out
}

// docShell runs a documented command block on 127.0.0.1: every line (with
// its continuations) is a command, optionally after the host that runs it
// ("Z: subsegment_exporter …"). What the block writes as hosts (Z:9000,
// b.example.net:9000) and listen addresses ('*:9000', :9718) is mapped to
// loopback ports; a process that listens as a relay runs in the background
// until the test ends, every other command runs to completion.
type docShell struct {
	t   *testing.T
	dir string
	// addrs maps an address of the block to the one the test uses.
	addrs map[string]string
	// literal replacements (files, interfaces) the machine needs.
	literal map[string]string
	started []*proc
}

func newDocShell(t *testing.T) *docShell {
	return &docShell{t: t, dir: t.TempDir(), addrs: map[string]string{}, literal: map[string]string{}}
}

var (
	hostLineRE    = regexp.MustCompile(`^([A-Z][A-Z0-9]*): (.*)$`)
	listenAnyRE   = regexp.MustCompile(`'?\*:([0-9]+)'?`)
	webAddrRE     = regexp.MustCompile(`(--web\.listen-address[ =])'?:([0-9]+)'?`)
	hostPortRE    = regexp.MustCompile(`[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]+`)
	commandWordRE = regexp.MustCompile(`(^|[;&|]\s*|\$\(\s*)subsegment_exporter\b`)
)

// lines splits a block into commands, joining continuation lines.
func (s *docShell) lines(block string) []string {
	var out []string
	cur := ""
	for _, line := range strings.Split(block, "\n") {
		if strings.HasSuffix(strings.TrimRight(line, " "), `\`) {
			cur += strings.TrimSuffix(strings.TrimRight(line, " "), `\`) + " "
			continue
		}
		cur += line
		if strings.TrimSpace(cur) != "" {
			out = append(out, strings.TrimSpace(cur))
		}
		cur = ""
	}
	return out
}

// command is one mapped line of a block.
type command struct {
	host, text string
	background bool
}

// mapLine maps a line's addresses and names the host that runs it.
func (s *docShell) mapLine(line string) command {
	c := command{text: line}
	if m := hostLineRE.FindStringSubmatch(line); m != nil {
		c.host, c.text = m[1], m[2]
	}
	c.background = regexp.MustCompile(`(^|\s)(--listen|-l)[ =]`).MatchString(c.text) && !strings.Contains(c.text, "--config.check")
	c.text = listenAnyRE.ReplaceAllStringFunc(c.text, func(m string) string {
		port := listenAnyRE.FindStringSubmatch(m)[1]
		addr := "127.0.0.1:" + itoa(freePort(s.t))
		if c.host != "" {
			s.addrs[c.host+":"+port] = addr
		}
		return addr
	})
	c.text = webAddrRE.ReplaceAllString(c.text, "${1}127.0.0.1:0")
	c.text = hostPortRE.ReplaceAllStringFunc(c.text, func(m string) string {
		if a, ok := s.addrs[m]; ok {
			return a
		}
		return m
	})
	for from, to := range s.literal {
		c.text = strings.ReplaceAll(c.text, from, to)
	}
	c.text = commandWordRE.ReplaceAllString(c.text, "${1}"+binary)
	if c.background && !strings.Contains(c.text, "--web.listen-address") {
		c.text += " --web.listen-address 127.0.0.1:0"
	}
	return c
}

// result is what a foreground command printed.
type result struct {
	stdout, stderr string
	code           int
}

// run runs a block's commands in order and returns the foreground ones'
// results.
func (s *docShell) run(block string) []result {
	s.t.Helper()
	var out []result
	for _, line := range s.lines(block) {
		c := s.mapLine(line)
		if c.background {
			p := start(s.t, "doc "+c.host+" "+line, "/bin/sh", "-c", "cd "+s.dir+" && exec "+c.text)
			p.waitOutput(s.t, relayListening, 15*time.Second)
			p.waitOutput(s.t, webListening, 15*time.Second)
			s.started = append(s.started, p)
			continue
		}
		out = append(out, s.foreground(c.text))
	}
	return out
}

func (s *docShell) foreground(text string) result {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", text)
	cmd.Dir = s.dir
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	default:
		s.t.Fatalf("run %q: %v", text, err)
	}
	return r
}

func (s *docShell) write(name string, data []byte) {
	s.t.Helper()
	if err := os.WriteFile(filepath.Join(s.dir, name), data, 0o600); err != nil {
		s.t.Fatal(err)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// mustSucceed fails the test unless every command exited 0.
func mustSucceed(t *testing.T, b doccheck.Block, rs []result) {
	t.Helper()
	for _, r := range rs {
		if r.code != 0 {
			t.Fatalf("%s: a command exited %d:\n%s%s", b.Where(), r.code, r.stdout, r.stderr)
		}
	}
}

// runScenarios run the <!-- run: NAME --> blocks; each returns what the
// block printed, for the output blocks of the same name.
var runScenarios = map[string]func(t *testing.T, b doccheck.Block) string{
	// The README's four hosts, each a loopback port: Z, C, B relays, A's
	// probe through them and A's stream back byte for byte.
	"quickstart": func(t *testing.T, b doccheck.Block) string {
		s := newDocShell(t)
		in := randomBytes(t, 100_000)
		s.write("file", in)
		rs := s.run(b.Text)
		mustSucceed(t, b, rs)
		if len(rs) != 2 || !strings.Contains(rs[0].stdout, "3 hops reached") || !strings.Contains(rs[0].stdout, "slowest segment") {
			t.Fatalf("%s: probe through Z, C, B printed:\n%v", b.Where(), rs)
		}
		out, err := os.ReadFile(filepath.Join(s.dir, "out"))
		if err != nil || string(out) != string(in) {
			t.Fatalf("%s: send: out differs from file (%v)", b.Where(), err)
		}
		return rs[0].stdout
	},
	// Two relays on one host, each with its own web port, in front of C.
	"two-relays": func(t *testing.T, b doccheck.Block) string {
		hops := chain(t, "c", "z")
		s := newDocShell(t)
		s.addrs["C:9000"] = hops[0].addr
		mustSucceed(t, b, s.run(b.Text))
		if len(s.started) != 2 {
			t.Fatalf("%s: started %d relays, want 2", b.Where(), len(s.started))
		}
		for i, p := range s.started {
			addr := p.waitOutput(t, relayListening, time.Second)[1]
			out, errOut, code := runBinary(t, nil, "probe", addr, "--count", "1", "--relay.name", "a")
			name := fmt.Sprintf("b%d ", i+1)
			if code != 0 || !strings.Contains(out, "\n"+name) {
				t.Fatalf("%s: probe through relay %s: exit %d\n%s%s", b.Where(), name, code, out, errOut)
			}
		}
		return ""
	},
	// --config.check of the page's first complete example.
	"config-check": func(t *testing.T, b doccheck.Block) string {
		s := newDocShell(t)
		var cfg string
		for _, o := range docBlocks(t) {
			if o.File == b.File && o.Marker.Kind == doccheck.KindExample && o.Marker.Type == doccheck.ExampleConfig {
				cfg = o.Text
				break
			}
		}
		if cfg == "" {
			t.Fatalf("%s: no <!-- example: config --> block on the page to check", b.Where())
		}
		s.write("subsegment.yml", []byte(cfg))
		rs := s.run(b.Text)
		mustSucceed(t, b, rs)
		return rs[0].stdout + rs[0].stderr
	},
	// The in-band relay in front of an end relay, reading its agent (a
	// real snmpd) and its interfaces; a source asks for the values.
	"inband-relay": func(t *testing.T, b doccheck.Block) string {
		agent := startSNMPD(t, "7.25", "3.10")
		z := startHop(t, "z", "")
		s := newDocShell(t)
		s.addrs["Z:9000"] = z.addr
		s.addrs["127.0.0.1:161"] = agent.addr
		s.write("community", []byte("public\n"))
		s.literal["/etc/subsegment/community"] = filepath.Join(s.dir, "community")
		if _, err := os.Stat("/sys/class/net/eth0"); err != nil {
			s.literal["if_in_errors:eth0"] = "if_in_errors:lo"
		}
		mustSucceed(t, b, s.run(b.Text))
		c := s.started[0].waitOutput(t, relayListening, time.Second)[1]
		ex := startExporter(t, "a", "modules:\n  default:\n    targets: [\"127.0.0.1:*\"]\n    inband: always\n")
		want := []string{`name="load1",source="inband"`, `name="load5",source="inband"`, `name="if_in_errors",source="inband"`, `name="mem_avail_kb",source="inband"`}
		var body string
		eventually(t, 30*time.Second, "in-band values of c", func() error {
			body = httpGet(t, "http://"+ex.web+"/probe?target="+c)
			for _, w := range want {
				if !strings.Contains(body, `subsegment_hop_snmp_value{hop="c",`+w+`}`) {
					return fmt.Errorf("no %s in the answer", w)
				}
			}
			return nil
		})
		return body
	},
	// check against a chain whose b -> c is 80 ms: CRITICAL, exit 2.
	"check": func(t *testing.T, b doccheck.Block) string {
		bh, _, _ := slowChainProcs(t, 40*time.Millisecond)
		s := newDocShell(t)
		s.addrs["b.example.net:9000"] = bh.addr
		rs := s.run(b.Text)
		if len(rs) != 1 || !strings.HasSuffix(rs[0].stdout, "exit 2\n") || rs[0].stderr != "" {
			t.Fatalf("%s: want CRITICAL (exit 2) and nothing on stderr, got %+v", b.Where(), rs)
		}
		return rs[0].stdout
	},
	// The original invocation: stream a file through B, C, Z and back.
	"send": func(t *testing.T, b doccheck.Block) string {
		hops := chain(t, "b", "c", "z")
		s := newDocShell(t)
		s.addrs["B:9000"] = hops[0].addr
		in := randomBytes(t, 1<<21)
		s.write("file", in)
		rs := s.run(b.Text)
		mustSucceed(t, b, rs)
		out, err := os.ReadFile(filepath.Join(s.dir, "out"))
		if err != nil || string(out) != string(in) {
			t.Fatalf("%s: out differs from file (%v)", b.Where(), err)
		}
		return rs[0].stderr
	},
	// probe through make demo's chain: b -> c through a 20 ms proxy.
	"probe-table": func(t *testing.T, b doccheck.Block) string {
		bh, _, _ := slowChainProcs(t, 10*time.Millisecond)
		s := newDocShell(t)
		s.addrs["B:9000"] = bh.addr
		rs := s.run(b.Text)
		mustSucceed(t, b, rs)
		return rs[0].stdout
	},
	// probe --output json through a one-hop chain.
	"probe-json": func(t *testing.T, b doccheck.Block) string {
		z := startHop(t, "z", "")
		s := newDocShell(t)
		s.addrs["Z:9000"] = z.addr
		rs := s.run(b.Text)
		mustSucceed(t, b, rs)
		return rs[0].stdout
	},
	// Mutual TLS between Z, C and the source A, certificates from a
	// throwaway CA under the names the block uses.
	"tls": func(t *testing.T, b doccheck.Block) string {
		s := newDocShell(t)
		ca := certtest.New(t, t.TempDir(), "chain")
		copyFile := func(from, to string) {
			data, err := os.ReadFile(from)
			if err != nil {
				t.Fatal(err)
			}
			s.write(to, data)
		}
		copyFile(ca.CAFile, "ca.pem")
		for _, n := range []string{"z", "c", "a"} {
			cert, key := ca.Issue(t, n)
			copyFile(cert, n+".pem")
			copyFile(key, n+".key")
		}
		rs := s.run(b.Text)
		mustSucceed(t, b, rs)
		if len(rs) != 1 || !strings.Contains(rs[0].stdout, "2 hops reached") {
			t.Fatalf("%s: probe over mutual TLS printed %+v", b.Where(), rs)
		}
		return rs[0].stdout
	},
	// probe stamp:// of our reflector on a loopback port (R:8620).
	"stamp-probe": func(t *testing.T, b doccheck.Block) string {
		return stampDocRun(t, b)
	},
	// The same as JSON.
	"stamp-probe-json": func(t *testing.T, b doccheck.Block) string {
		return stampDocRun(t, b)
	},
	// --help, a command's help and the man page.
	"help": func(t *testing.T, b doccheck.Block) string {
		s := newDocShell(t)
		rs := s.run(b.Text)
		mustSucceed(t, b, rs)
		if !strings.Contains(rs[0].stdout, "usage: subsegment_exporter") || !strings.Contains(rs[0].stdout, "--count") || !strings.Contains(rs[0].stdout, ".TH") {
			t.Fatalf("%s: help printed:\n%s", b.Where(), rs[0].stdout)
		}
		return rs[0].stdout
	},
}

var numberRE = regexp.MustCompile(`[0-9]+(\.[0-9]+)?`)

// stampDocRun runs a block against our reflector on a loopback port, R:8620.
func stampDocRun(t *testing.T, b doccheck.Block) string {
	t.Helper()
	port := freeUDPPort(t)
	refl := start(t, "reflector", binary, "--stamp.listen-address", "127.0.0.1:"+itoa(port), "--web.listen-address", "127.0.0.1:0")
	refl.waitOutput(t, stampListening, 10*time.Second)
	s := newDocShell(t)
	s.addrs["R:8620"] = "127.0.0.1:" + itoa(port)
	rs := s.run(b.Text)
	mustSucceed(t, b, rs)
	return rs[0].stdout
}

// normalize makes an output comparable with another run's: figures,
// addresses and spacing aside, and what the machine's clock state
// decides (synchronised or not, one-way delays or none).
func normalize(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		line = numberRE.ReplaceAllString(line, "N")
		line = regexp.MustCompile(`\b(un)?synced\b`).ReplaceAllString(line, "CLOCK")
		line = regexp.MustCompile(`Nms/Nms$`).ReplaceAllString(strings.TrimSpace(line), "-")
		line = strings.Join(strings.Fields(line), " ")
		if line != "" {
			out = append(out, line)
		}
	}
	return out
}

// sameShape compares an example output with a real one line by line.
func sameShape(t *testing.T, b doccheck.Block, real string) {
	t.Helper()
	want, got := normalize(b.Text), normalize(real)
	if !slices.Equal(want, got) {
		t.Errorf("%s: the example is not what a real run prints (figures aside).\nexample:\n%s\nreal run:\n%s", b.Where(), strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
}

// containsShape requires every line of the example among the real one's.
func containsShape(t *testing.T, b doccheck.Block, real string) {
	t.Helper()
	got := normalize(real)
	for _, w := range normalize(b.Text) {
		if !slices.Contains(got, w) {
			t.Errorf("%s: a real run does not print %q (figures aside); it printed:\n%s", b.Where(), w, real)
		}
	}
}

// outputScenarios check the <!-- output: NAME --> blocks against what the
// run of the same name printed, or against their own real run.
var outputScenarios = map[string]func(t *testing.T, b doccheck.Block, ran map[string]string){
	"probe-table": func(t *testing.T, b doccheck.Block, ran map[string]string) {
		sameShape(t, b, need(t, ran, "probe-table"))
	},
	"config-check": func(t *testing.T, b doccheck.Block, ran map[string]string) {
		sameShape(t, b, need(t, ran, "config-check"))
	},
	"check": func(t *testing.T, b doccheck.Block, ran map[string]string) { sameShape(t, b, need(t, ran, "check")) },
	"stamp-probe": func(t *testing.T, b doccheck.Block, ran map[string]string) {
		sameShape(t, b, need(t, ran, "stamp-probe"))
	},
	"send": func(t *testing.T, b doccheck.Block, ran map[string]string) { sameShape(t, b, need(t, ran, "send")) },
	// A chain whose end is gone after it answered once: the last line.
	"probe-broken": func(t *testing.T, b doccheck.Block, _ map[string]string) {
		hops := chain(t, "b", "c", "z")
		if _, _, code := runBinary(t, nil, "probe", hops[0].addr, "--count", "1", "--relay.name", "a"); code != 0 {
			t.Fatalf("probe of the whole chain: exit %d", code)
		}
		hops[2].kill()
		out, _, code := runBinary(t, nil, "probe", hops[0].addr, "--count", "1", "--relay.name", "a")
		if code != 1 {
			t.Fatalf("probe of a broken chain: exit %d, want 1\n%s", code, out)
		}
		containsShape(t, b, out)
	},
	// A /probe answer with SNMP context from a real snmpd.
	"snmp-context": func(t *testing.T, b doccheck.Block, _ map[string]string) {
		containsShape(t, b, snmpContextAnswer(t))
	},
}

func need(t *testing.T, ran map[string]string, name string) string {
	t.Helper()
	out, ok := ran[name]
	if !ok {
		t.Fatalf("no <!-- run: %s --> block ran: the output has nothing to compare with", name)
	}
	return out
}

// snmpContextAnswer is the /probe answer of a chain whose b -> c is over
// its SLA, with c's load from a real snmpd.
func snmpContextAnswer(t *testing.T) string {
	t.Helper()
	agent := startSNMPD(t, "7.25", "3.10")
	b, _, _ := slowChainProcs(t, 10*time.Millisecond)
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  default:
    probes: 3
    interval: 10ms
    targets: ["127.0.0.1:*"]
    sla: {segments: [{from: b, to: c, rtt: 5ms}]}
    snmp:
      hops: {c: {target: %q, auth: v2}}
      variables:
        - {name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}
        - {name: load5, oid: 1.3.6.1.4.1.2021.10.1.3.2}
auths:
  v2: {version: 2, community: public}
`, agent.addr))
	return httpGet(t, "http://"+ex.web+"/probe?target="+b.addr)
}

// jsonScenarios produce the real output an <!-- example: json NAME -->
// block shows.
var jsonScenarios = map[string]func(t *testing.T, ran map[string]string) string{
	"probe":  func(t *testing.T, ran map[string]string) string { return need(t, ran, "probe-json") },
	"stamp":  func(t *testing.T, ran map[string]string) string { return need(t, ran, "stamp-probe-json") },
	"chains": chainsAPIExample,
}

// chainsAPIExample is /api/v1/chains of an exporter probing b -> c -> z
// continuously, c over its residence SLA with its load from a real snmpd.
func chainsAPIExample(t *testing.T, _ map[string]string) string {
	t.Helper()
	agent := startSNMPD(t, "7.25", "3.10")
	b, _, _ := slowChainProcs(t, 5*time.Millisecond)
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  default:
    targets: ["127.0.0.1:*"]
    sla:
      segments: [{from: b, to: c, rtt: 1ms}]
      hops: {c: 1us}
    snmp:
      hops: {c: {target: %q, auth: v2}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
continuous:
  - {target: %q, module: default, interval: 50ms}
auths:
  v2: {version: 2, community: public}
`, agent.addr, b.addr))
	var body string
	eventually(t, 60*time.Second, "a chain with samples and c's context in /api/v1/chains", func() error {
		body = httpGet(t, "http://"+ex.web+"/api/v1/chains")
		if !strings.Contains(body, `"context"`) || !strings.Contains(body, `"samples"`) || !strings.Contains(body, `"last_success"`) {
			return errors.New("not yet")
		}
		return nil
	})
	return body
}

// keyPaths lists every object key of a JSON document by its path
// (chains[].hops[].name); arrays merge their elements.
func keyPaths(v any, path string, out map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			p := k
			if path != "" {
				p = path + "." + k
			}
			out[p] = true
			keyPaths(e, p, out)
		}
	case []any:
		for _, e := range v {
			keyPaths(e, path+"[]", out)
		}
	}
}

// sameKeys requires every key of the example in the real output, and every
// top-level key of the real output in the example.
func sameKeys(t *testing.T, b doccheck.Block, real string) {
	t.Helper()
	var ex, re any
	if err := json.Unmarshal([]byte(b.Text), &ex); err != nil {
		t.Fatalf("%s: the example is not JSON: %v", b.Where(), err)
	}
	if err := json.Unmarshal([]byte(real), &re); err != nil {
		t.Fatalf("%s: the real output is not JSON: %v\n%s", b.Where(), err, real)
	}
	exKeys, reKeys := map[string]bool{}, map[string]bool{}
	keyPaths(ex, "", exKeys)
	keyPaths(re, "", reKeys)
	var missing, undocumented []string
	for k := range exKeys {
		if !reKeys[k] {
			missing = append(missing, k)
		}
	}
	for k := range reKeys {
		if !strings.ContainsAny(k, ".[") && !exKeys[k] {
			undocumented = append(undocumented, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(undocumented)
	if len(missing) > 0 {
		t.Errorf("%s: keys of the example a real run does not have: %v\nreal run:\n%s", b.Where(), missing, real)
	}
	if len(undocumented) > 0 {
		t.Errorf("%s: top-level keys of a real run the example lacks: %v", b.Where(), undocumented)
	}
}

// TestDocExamples runs every example block that needs processes.
func TestDocExamples(t *testing.T) {
	blocks := docBlocks(t)
	ran := map[string]string{}
	used := map[string]bool{}
	for _, b := range blocks {
		if b.Marker.Kind != doccheck.KindRun {
			continue
		}
		f := runScenarios[b.Marker.Name]
		if f == nil {
			t.Errorf("%s: <!-- run: %s --> has no scenario in integration/docs_test.go", b.Where(), b.Marker.Name)
			continue
		}
		used["run:"+b.Marker.Name] = true
		t.Run("run "+b.Marker.Name+" "+b.Where(), func(t *testing.T) { ran[b.Marker.Name] = f(t, b) })
	}
	for _, b := range blocks {
		switch {
		case b.Marker.Kind == doccheck.KindOutput:
			f := outputScenarios[b.Marker.Name]
			if f == nil {
				t.Errorf("%s: <!-- output: %s --> has no scenario in integration/docs_test.go", b.Where(), b.Marker.Name)
				continue
			}
			used["output:"+b.Marker.Name] = true
			t.Run("output "+b.Marker.Name+" "+b.Where(), func(t *testing.T) { f(t, b, ran) })
		case b.Marker.Kind == doccheck.KindExample && b.Marker.Type == doccheck.ExampleJSON:
			f := jsonScenarios[b.Marker.Name]
			if f == nil {
				t.Errorf("%s: <!-- example: json %s --> has no scenario in integration/docs_test.go", b.Where(), b.Marker.Name)
				continue
			}
			used["json:"+b.Marker.Name] = true
			t.Run("json "+b.Marker.Name+" "+b.Where(), func(t *testing.T) { sameKeys(t, b, f(t, ran)) })
		}
	}
	for kind, names := range map[string][]string{"run": keys(runScenarios), "output": keys(outputScenarios), "json": keys(jsonScenarios)} {
		for _, n := range names {
			if !used[kind+":"+n] {
				t.Errorf("scenario %s %q is used by no block of the documentation: remove it or mark a block with it", kind, n)
			}
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

var typeLineRE = regexp.MustCompile(`^# TYPE ((?:subsegment|probe)_[a-zA-Z0-9_:]+) `)

// exposedNames adds the subsegment_* and probe_* families of an
// exposition to names.
func exposedNames(t *testing.T, body string, names map[string]string, where string) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if m := typeLineRE.FindStringSubmatch(sc.Text()); m != nil {
			names[m[1]] = where
		}
	}
}

// stampingBackend answers every request with its own Subsegment-Timing
// entry, as a backend that stamps itself does.
func stampingBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Add("Subsegment-Timing", "backend;dur=0.001s")
		_, _ = io.WriteString(w, "ok\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestDocMetricsOfRealRuns: every subsegment_* metric real processes
// expose is in docs/metrics.md — a relay's /metrics, an exporter's with a
// configuration, continuous entries (one of them broken) and an SNMP agent
// that does not answer, and /probe answers of a relay chain out of its SLA
// with context from a real snmpd and in band, of a chain that refuses, and
// of an HTTP chain.
func TestDocMetricsOfRealRuns(t *testing.T) {
	root, err := doccheck.Root()
	if err != nil {
		t.Fatal(err)
	}
	documented, err := doccheck.DocumentedMetrics(root)
	if err != nil {
		t.Fatal(err)
	}
	agent := startSNMPD(t, "7.25", "3.10")
	b, c, _ := slowChainProcs(t, 10*time.Millisecond, "--inband.var", "load1")
	backend := stampingBackend(t)
	silent := "127.0.0.1:" + itoa(freeUDPPort(t))
	closed := "127.0.0.1:" + itoa(freePort(t))
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  default:
    probes: 3
    interval: 10ms
    targets: ["127.0.0.1:*"]
    inband: on_violation
    sla:
      segments: [{from: b, to: c, rtt: 5ms}]
      hops: {c: 1us, z: 1us}
    snmp:
      timeout: 300ms
      hops:
        c: {target: %q, auth: v2}
        z: {target: %q, auth: v2}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
  web:
    prober: http
    targets: ["127.0.0.1:*"]
  stamp:
    prober: stamp
    targets: ["127.0.0.1:*"]
continuous:
  - {target: %q, module: default, interval: 50ms}
  - {target: %q, module: default, interval: 50ms}
auths:
  v2: {version: 2, community: public}
`, agent.addr, silent, b.addr, closed))
	names := map[string]string{}
	exposedNames(t, httpGet(t, "http://"+ex.web+"/probe?target="+b.addr), names, "/probe of b -> c -> z")
	exposedNames(t, httpGet(t, "http://"+ex.web+"/probe?target="+closed), names, "/probe of a first hop that refuses")
	exposedNames(t, httpGet(t, "http://"+ex.web+"/probe?module=web&target=http://"+backend+"/"), names, "/probe of an HTTP backend")
	reflPort := itoa(freeUDPPort(t))
	refl := start(t, "reflector", binary, "--stamp.listen-address", "127.0.0.1:"+reflPort, "--web.listen-address", "127.0.0.1:0")
	refl.waitOutput(t, stampListening, 10*time.Second)
	reflWeb := refl.waitOutput(t, webListening, 10*time.Second)[1]
	exposedNames(t, httpGet(t, "http://"+ex.web+"/probe?module=stamp&target=127.0.0.1:"+reflPort), names, "/probe of a STAMP reflector")
	last := startHop(t, "r", "stamp://127.0.0.1:"+reflPort)
	if out, _, code := runBinary(t, nil, "probe", last.addr, "--count", "1", "--relay.name", "a"); code != 0 {
		t.Fatalf("probe through a relay ending at a STAMP reflector: exit %d\n%s", code, out)
	}
	exposedNames(t, httpGet(t, "http://"+last.web+"/metrics"), names, "relay r's /metrics (--forward-to stamp://)")
	exposedNames(t, httpGet(t, "http://"+reflWeb+"/metrics"), names, "the STAMP reflector's /metrics")
	if _, _, code := runBinary(t, strings.NewReader("stream"), "send", "-f", b.addr, "--relay.name", "a"); code != 0 {
		t.Fatalf("send through b: exit %d", code)
	}
	exposedNames(t, httpGet(t, "http://"+b.web+"/metrics"), names, "relay b's /metrics")
	exposedNames(t, httpGet(t, "http://"+c.web+"/metrics"), names, "relay c's /metrics")
	eventually(t, 60*time.Second, "continuous histograms and SNMP errors on the exporter's /metrics", func() error {
		body := httpGet(t, "http://"+ex.web+"/metrics")
		for _, want := range []string{"subsegment_continuous_segment_rtt_seconds_bucket", "subsegment_continuous_hop_wait_seconds_bucket", "subsegment_continuous_segment_failures_total", `subsegment_snmp_errors_total{hop="z"`} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("no %s yet", want)
			}
		}
		exposedNames(t, body, names, "the exporter's /metrics")
		return nil
	})
	var undocumented []string
	for name, where := range names {
		if _, ok := documented[name]; !ok {
			undocumented = append(undocumented, fmt.Sprintf("%s (on %s)", name, where))
		}
	}
	sort.Strings(undocumented)
	for _, u := range undocumented {
		t.Errorf("metric %s is not in a table of docs/metrics.md", u)
	}
	var unseen []string
	for name := range documented {
		if _, ok := names[name]; !ok {
			unseen = append(unseen, name)
		}
	}
	sort.Strings(unseen)
	t.Logf("documented metrics these runs did not expose (the code declares them; docs/docs_test.go checks that): %v", unseen)
	if len(names) < 45 {
		t.Errorf("the runs exposed only %d metrics: %v", len(names), keys(names))
	}
}
