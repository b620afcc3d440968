package integration

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// runIn runs the binary in dir (a working directory of the test's) and
// returns its stdout and stderr together.
func runIn(t *testing.T, dir string, args ...string) (output string, code int) {
	t.Helper()
	stdout, stderr, code := runBinaryIn(t, dir, nil, args...)
	return stdout + stderr, code
}

// The original tool's -t <seconds>: a bare number is seconds, in every
// command that takes a duration.
func TestBareSecondsEverywhere(t *testing.T) {
	hops := chain(t, "b", "z")
	for _, args := range [][]string{
		{"probe", hops[0].addr, "-t", "5", "--count", "2", "--interval", "0.01"},
		{"probe", hops[0].addr, "--timeout", "0.5", "--count", "1"},
		{"check", hops[0].addr, "-t", "10", "-w", "100", "-c", "200"},
	} {
		out, errOut, code := runBinary(t, nil, args...)
		if code != 0 {
			t.Errorf("%v: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	out, errOut, code := runBinary(t, strings.NewReader("hello"), "send", "-f", hops[0].addr, "-t", "5")
	if code != 0 || out != "hello" {
		t.Errorf("send -t 5: exit %d %q\n%s", code, out, errOut)
	}
	// A relay started the original way, -t 5, serves.
	r := start(t, "relay -t 5", binary, "-l", "127.0.0.1:0", "--web.listen-address", "127.0.0.1:0", "-t", "5", "--relay.name", "t5")
	r.waitOutput(t, relayListening, 10*time.Second)
	if _, errOut, code := runBinary(t, nil, "probe", hops[0].addr, "-t", "five"); code != 2 || !strings.Contains(errOut, "give seconds (5, 0.5) or a unit") {
		t.Errorf("-t five: exit %d\n%s", code, errOut)
	}
}

// Nagios and Icinga pass "-c" and "@50:100" as two arguments, and a file
// named 50:100 in the working directory must not be read as arguments.
func TestNagiosHabits(t *testing.T) {
	hops := chain(t, "b", "z")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "50:100"), []byte("--bogus\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runIn(t, dir, "check", hops[0].addr, "-w", "@20:40", "-c", "@50:100", "-t", "10")
	if code != 0 || !strings.HasPrefix(out, "SUBSEGMENT OK") || !strings.Contains(out, ";@20:40;@50:100;") {
		t.Errorf("check -c @50:100: exit %d\n%s", code, out)
	}
	out, code = runIn(t, dir, "check", hops[0].addr, "-v", "-v", "-w", "100", "-c", "200")
	if code != 0 || !strings.Contains(out, "kernel view") || !strings.Contains(out, "hop b residence") {
		t.Errorf("check -vv: exit %d\n%s", code, out)
	}
	version := regexp.MustCompile(`subsegment_exporter, version \S+`)
	for _, args := range [][]string{{"check", "-V"}, {"check", "--version"}} {
		out, code := runIn(t, dir, args...)
		if code != 3 || !version.MatchString(out) || strings.Contains(out, "version  ") {
			t.Errorf("%v: exit %d (a plugin's -V exits 3, UNKNOWN)\n%s", args, code, out)
		}
	}
	for _, args := range [][]string{{"-V"}, {"--version"}} {
		out, code := runIn(t, dir, args...)
		if code != 0 || !version.MatchString(out) || strings.Contains(out, "version  ") {
			t.Errorf("%v: exit %d\n%s", args, code, out)
		}
	}
}

// Without -w and -c the module's SLAs are the critical thresholds;
// -w/-c still override them.
func TestCheckUsesTheModuleSLAs(t *testing.T) {
	b, _, _ := slowChainProcs(t, 10*time.Millisecond)
	cfg := filepath.Join(t.TempDir(), "subsegment.yml")
	if err := os.WriteFile(cfg, []byte(`modules:
  default:
    targets: ["127.0.0.1:*"]
    sla:
      default: 100ms
      segments:
        - {from: b, to: c, rtt: 5ms}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, code := runBinary(t, nil, "check", b.addr, "--config.file", cfg, "--relay.name", "a")
	if code != 2 || !strings.Contains(out, "b -> c rtt") || !strings.Contains(out, "critical: over 5ms") {
		t.Errorf("module SLA as critical threshold: exit %d\n%s", code, out)
	}
	out, _, code = runBinary(t, nil, "check", b.addr, "--config.file", cfg, "--relay.name", "a", "-w", "100", "-c", "200")
	if code != 0 {
		t.Errorf("-w/-c override the module's SLAs: exit %d\n%s", code, out)
	}
}

// Messages say what is wrong and what to do.
func TestMessagesSayWhatToDo(t *testing.T) {
	_, errOut, code := runBinary(t, strings.NewReader("x"), "send")
	if code != 2 || !strings.Contains(errOut, "--forward-to is required") {
		t.Errorf("send without -f: exit %d\n%s", code, errOut)
	}
	cfg := filepath.Join(t.TempDir(), "subsegment.yml")
	if err := os.WriteFile(cfg, []byte("modules:\n  default:\n    payload_bytes: 65536\n    targets: [\"127.0.0.1:*\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, _, code := runBinary(t, nil, "--config.check", "--config.file", cfg); code != 0 || !strings.Contains(out, "is valid: 1 module\n") {
		t.Errorf("65536-byte padding fits the default frames: exit %d\n%s", code, out)
	}
	_, errOut, code = runBinary(t, nil, "--config.check", "--config.file", cfg, "--relay.max-frame-bytes", "65536")
	if code != 1 || !regexp.MustCompile(`payload_bytes: payload of 65536 bytes does not fit a 65536-byte frame .* at most \d+ bytes fit`).MatchString(errOut) {
		t.Errorf("--config.check of a payload over the frame limit: exit %d\n%s", code, errOut)
	}
}

// Any block size from 1 byte to 16 MiB goes through a chain of hops on
// default flags, byte-exact; a hop with a lower limit answers with an
// error record naming itself and its limit, and logs it.
func TestLargeBlocks(t *testing.T) {
	hops := chain(t, "b", "c", "z")
	data := make([]byte, 40<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	for _, block := range []string{"65536", "1048576", "16777216"} {
		cmd := exec.Command(binary, "send", "-f", hops[0].addr, "-s", block, "--relay.name", "a")
		cmd.Stdin = bytes.NewReader(data)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("send -s %s: %v\n%s", block, err, errOut.String())
		}
		if sha256.Sum256(out.Bytes()) != sha256.Sum256(data) {
			t.Fatalf("send -s %s: %d bytes back, not the %d sent", block, out.Len(), len(data))
		}
	}
	// c allows only 64 KiB frames.
	z := startHop(t, "z2", "")
	c := startHop(t, "c2", z.addr, "--relay.max-frame-bytes", "65536")
	b := startHop(t, "b2", c.addr)
	_, errOut, code := runBinary(t, bytes.NewReader(data[:4<<20]), "send", "-f", b.addr, "-s", "1048576", "--relay.name", "a")
	if code != 1 || !strings.Contains(errOut, "c2 refuses frames over 65536 bytes") || !strings.Contains(errOut, "too_large") {
		t.Errorf("a hop with a lower limit: exit %d\n%s", code, errOut)
	}
	c.waitOutput(t, regexp.MustCompile(`level=WARN .*refusing a frame from upstream.*reason=too_large`), 5*time.Second)
}
