package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runBinary runs the binary to completion (bounded) and returns its output
// and exit code.
func runBinary(t *testing.T, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runBinaryIn(t, "", stdin, args...)
}

// runBinaryIn is runBinary in the working directory dir ("": the test's).
func runBinaryIn(t *testing.T, dir string, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

type probeJSON struct {
	Target      string `json:"target"`
	Source      string `json:"source"`
	Success     bool   `json:"success"`
	Probes      int    `json:"probes"`
	HopsReached int    `json:"hops_reached"`
	Hops        []struct {
		Name      string `json:"name"`
		Residence struct {
			Median float64 `json:"median"`
		} `json:"residence_seconds"`
	} `json:"hops"`
	Segments []struct {
		From    string `json:"from"`
		To      string `json:"to"`
		Samples int    `json:"samples"`
		RTT     struct {
			Min, Median, Max float64
		} `json:"rtt_seconds"`
		Connect *float64 `json:"connect_seconds"`
		TCP     *struct {
			PMTU uint32 `json:"pmtu_bytes"`
		} `json:"tcp"`
		Slowest bool `json:"slowest"`
	} `json:"segments"`
	Failure *struct {
		From, To, Reason, Message string
	} `json:"failure"`
	Duration float64 `json:"duration_seconds"`
}

func TestProbeCommandThroughFourProcesses(t *testing.T) {
	hops := chain(t, "b", "c", "z")
	out, errOut, code := runBinary(t, nil, "probe", hops[0].addr, "--count", "5", "--interval", "10ms", "--relay.name", "a", "--output", "json")
	if code != 0 {
		t.Fatalf("probe exit %d: %s", code, errOut)
	}
	var r probeJSON
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("probe JSON: %v\n%s", err, out)
	}
	if !r.Success || r.Probes != 5 || r.HopsReached != 3 || r.Source != "a" || r.Target != hops[0].addr || r.Failure != nil {
		t.Fatalf("probe result: %+v", r)
	}
	var segs []string
	for _, s := range r.Segments {
		segs = append(segs, s.From+">"+s.To)
		if s.Samples != 5 || s.RTT.Median <= 0 || s.Connect == nil || s.TCP == nil || s.TCP.PMTU == 0 {
			t.Errorf("segment %s>%s incomplete: %+v", s.From, s.To, s)
		}
	}
	if strings.Join(segs, ",") != "a>b,b>c,c>z" {
		t.Errorf("segments %v", segs)
	}

	table, _, code := runBinary(t, nil, "probe", hops[0].addr, "--count", "3", "--interval", "1ms", "--relay.name", "a")
	for _, want := range []string{"SEGMENT", "a -> b", "b -> c", "c -> z", "HOP", "slowest segment"} {
		if code != 0 || !strings.Contains(table, want) {
			t.Errorf("table (exit %d) lacks %q:\n%s", code, want, table)
		}
	}

	// The end host dies: the probe names c -> z and exits non-zero, within the timeout.
	hops[2].kill()
	start := time.Now()
	out, errOut, code = runBinary(t, nil, "probe", hops[0].addr, "--count", "2", "--relay.name", "a", "--timeout", "3s", "--output", "json")
	if code != 1 {
		t.Fatalf("probe through a broken chain: exit %d, want 1\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "segment c -> z failed (refused)") {
		t.Errorf("stderr does not name the broken segment:\n%s", errOut)
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Failure == nil || r.Failure.From != "c" || r.Failure.To != "z" {
		t.Errorf("JSON failure %+v (%v)", r.Failure, err)
	}
	// "refused", not a timeout: the chain answered before the 3s timeout.
	t.Logf("broken chain reported after %v", time.Since(start))

}

func TestProbeCommandUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"probe"}, "required argument 'target' not provided"},
		{[]string{"probe", "nohost"}, "target"},
		{[]string{"probe", "127.0.0.1:1", "--payload-bytes", "70000"}, "payload"},
		{[]string{"probe", "127.0.0.1:1", "--output", "xml"}, "enum value must be one of"},
		{[]string{"--relay.name", "bad name", "probe", "127.0.0.1:1"}, "relay name"},
		{[]string{"--relay.auth-key-file", "/nonexistent", "probe", "127.0.0.1:1"}, "/nonexistent"},
	} {
		_, errOut, code := runBinary(t, nil, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

func TestSendThroughFourProcesses(t *testing.T) {
	hops := chain(t, "b", "c", "z")
	rng := rand.New(rand.NewPCG(1, 2))
	in := make([]byte, 3<<20+11)
	for i := range in {
		in[i] = byte(rng.Uint32())
	}
	for _, tc := range []struct {
		name string
		in   []byte
		args []string
	}{
		{"send 512", in, []string{"send", "--forward-to", hops[0].addr, "--stdin-block-size", "512"}},
		{"send short flags", in, []string{"send", "-f", hops[0].addr, "-s", "4096", "-t", "5s"}},
		{"send 1-byte blocks", in[:20000], []string{"send", "-f", hops[0].addr, "-s", "1"}},
		{"empty input", nil, []string{"send", "-f", hops[0].addr}},
		{"original invocation (no command, no --listen)", in, []string{"--forward-to", hops[0].addr, "-s", "1000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runBinary(t, bytes.NewReader(tc.in), append(tc.args, "--relay.name", "a")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if !bytes.Equal([]byte(out), tc.in) {
				t.Fatalf("stdout (%d bytes) differs from stdin (%d bytes)", len(out), len(tc.in))
			}
			if len(tc.in) > 0 && (!strings.Contains(errOut, "a -> b") || !strings.Contains(errOut, "c -> z")) {
				t.Errorf("stderr lacks per-segment stats:\n%s", errOut)
			}
		})
	}
}

// send with a regular file as stdin sends large unsigned blocks with
// sendfile (docs/stream.md, "Large blocks"): byte-exact through real
// relays, from the file's offset on, at the block sizes around the
// threshold and beyond the pipes' size.
func TestSendFromRegularFile(t *testing.T) {
	hops := chain(t, "b", "c", "z")
	in := randomBytes(t, 5<<20+13)
	path := filepath.Join(t.TempDir(), "in")
	if err := os.WriteFile(path, in, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		block string
		skip  int
	}{
		{"262144", 0},
		{"1048576", 0},
		{"1048576", 777},
		{"4194304", 0},
	} {
		t.Run(tc.block+"+"+strconv.Itoa(tc.skip), func(t *testing.T) {
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Seek(int64(tc.skip), io.SeekStart); err != nil {
				t.Fatal(err)
			}
			out, errOut, code := runBinary(t, f, "send", "-f", hops[0].addr, "-s", tc.block, "--relay.name", "a")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if !bytes.Equal([]byte(out), in[tc.skip:]) {
				t.Fatalf("stdout (%d bytes) differs from the file from byte %d (%d bytes)", len(out), tc.skip, len(in)-tc.skip)
			}
		})
	}
}

func TestSendWithRemovePerfHeaders(t *testing.T) {
	z := startHop(t, "z", "")
	d := startHop(t, "d", z.addr)
	c := startHop(t, "c", d.addr, "--remove-perf-headers")
	b := startHop(t, "b", c.addr)
	in := bytes.Repeat([]byte("subsegment "), 10000)
	out, errOut, code := runBinary(t, bytes.NewReader(in), "send", "-f", b.addr, "--relay.name", "a")
	if code != 0 || out != string(in) {
		t.Fatalf("exit %d, equal %v: %s", code, out == string(in), errOut)
	}
	if !strings.Contains(errOut, "c -> hidden") || strings.Contains(errOut, "d -> z") {
		t.Errorf("stats should end at c -> hidden and not show d or z:\n%s", errOut)
	}
}

// patternReader yields n pseudo-random bytes without holding them.
type patternReader struct {
	rng  *rand.Rand
	left int64
	sum  *sha256Hash
}

type sha256Hash struct {
	h interface{ Write([]byte) (int, error) }
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), p.left))
	for i := 0; i+8 <= n; i += 8 {
		v := p.rng.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(p.rng.Uint32())
	}
	p.sum.h.Write(b[:n])
	p.left -= int64(n)
	return n, nil
}

func TestSendOneGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB stream skipped in -short mode")
	}
	hops := chain(t, "b", "c", "z")
	const size = 1 << 30
	inHash := sha256.New()
	outHash := sha256.New()
	in := &patternReader{rng: rand.New(rand.NewPCG(7, 7)), left: size, sum: &sha256Hash{inHash}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "send", "-f", hops[0].addr, "-s", "32768", "--relay.name", "a")
	var errb bytes.Buffer
	counter := &countWriter{w: outHash}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, counter, &errb
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("send 1 GiB: %v\n%s", err, errb.String())
	}
	took := time.Since(start)
	if counter.n != size || !bytes.Equal(inHash.Sum(nil), outHash.Sum(nil)) {
		t.Fatalf("1 GiB came back as %d bytes, sha256 equal %v", counter.n, bytes.Equal(inHash.Sum(nil), outHash.Sum(nil)))
	}
	t.Logf("1 GiB through 3 relays and back in %v (%.0f MB/s)", took.Round(time.Millisecond), size/took.Seconds()/1e6)
}

type countWriter struct {
	w interface{ Write([]byte) (int, error) }
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	return c.w.Write(b)
}
