package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// keyConn is a connection to a relay that signs its probes with keys of
// its own, to show which keys the relay's session holds.
type keyConn struct {
	conn net.Conn
	rd   *frame.Reader
	sign *frame.Signer
	seq  uint64
}

func dialKeyed(t *testing.T, addr string, keys ...string) *keyConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var k frame.Keys
	for _, key := range keys {
		k = append(k, []byte(key))
	}
	c := &keyConn{conn: conn, rd: frame.NewReader(conn, frame.DefaultMaxFrameBytes), sign: frame.NewSigner(k)}
	t.Cleanup(func() { conn.Close(); c.rd.Release() })
	return c
}

// probe sends one signed probe and says whether the relay answered it
// (nil), refused it (the refusal's reason and message) or failed.
func (c *keyConn) probe() error {
	c.seq++
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	fr := frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: c.seq, BudgetMicros: 2_000_000}, nil, []uint64{7}, c.sign)
	if _, err := c.conn.Write(fr); err != nil {
		return err
	}
	if err := c.rd.Fill(); err != nil {
		return err
	}
	reply, err := c.rd.Next()
	if err != nil {
		return err
	}
	rep, err := frame.CheckReply(reply, c.sign, frame.DefaultMaxFrameBytes, frame.Expect{Request: frame.KindProbeRequest, Seq: c.seq})
	if rep.Refusal != nil {
		return fmt.Errorf("refused (%s): %s", rep.Refusal.Reason, rep.Refusal.Message)
	}
	return err
}

// A key rollover by reload, on real processes (REVIEW-1 finding 7): the
// key files of a relay (which also reflects STAMP) and of a source
// exporter are rewritten, and SIGHUP and POST /-/reload make every
// session use the keys read: during the rollover (both keys in the file)
// a session opened before goes on, and once its key is dropped that
// session is refused `auth` at its next frame, as a new one is (REVIEW-2
// F-B: dropping a key revokes it). A key file that cannot be read on
// reload says why and keeps the keys in use.
func TestKeyRolloverByReload(t *testing.T) {
	dir := t.TempDir()
	oldKey, newKey := "old-0123456789abcdef0123456789", "new-0123456789abcdef0123456789"
	kz, ka := filepath.Join(dir, "z.key"), filepath.Join(dir, "a.key")
	mustWrite(t, kz, oldKey+"\n")
	mustWrite(t, ka, oldKey+"\n")
	stampPort := freeUDPPort(t)
	z := startHop(t, "z", "", "--relay.auth-key-file", kz, "--stamp.listen-address", "127.0.0.1:"+itoa(stampPort))
	z.waitOutput(t, stampListening, 10*time.Second)
	ex := startExporter(t, "a", `modules:
  relays:
    timeout: 3s
    targets: ["127.0.0.1:*"]
  refl:
    prober: stamp
    timeout: 3s
    targets: ["127.0.0.1:*"]
    stamp: {packets: 2, interval: 1ms, packet_timeout: 300ms, authenticated: true}
`, "--relay.auth-key-file", ka)
	probe := func(module, target string) string {
		return httpGet(t, "http://"+ex.web+"/probe?module="+module+"&target="+target)
	}
	ok := func(module, target string) bool {
		return strings.Contains(probe(module, target), "probe_success 1")
	}
	stampTarget := "127.0.0.1:" + itoa(stampPort)
	sighup := func(p *proc, what string) {
		t.Helper()
		before := strings.Count(p.out.String(), what)
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the relay's log line "+what, func() error {
			if strings.Count(p.out.String(), what) == before {
				return errors.New("not yet")
			}
			return nil
		})
	}
	if !ok("relays", z.addr) || !ok("refl", stampTarget) {
		t.Fatalf("with the old key everywhere:\n%s\n%s", probe("relays", z.addr), probe("refl", stampTarget))
	}
	// A session opened now, signing with the old key, is kept open
	// across the reloads below, until its key is dropped.
	kept := dialKeyed(t, z.addr, oldKey)
	if err := kept.probe(); err != nil {
		t.Fatalf("a probe signed with the old key: %v", err)
	}

	// The source signs with the new key, verifies both: z, which has the
	// old key only, refuses what it sends.
	mustWrite(t, ka, newKey+"\n"+oldKey+"\n")
	if code, body := postReload(t, ex.web); code != http.StatusOK {
		t.Fatalf("/-/reload: %d %s", code, body)
	}
	if body := probe("relays", z.addr); !strings.Contains(body, "probe_success 0") || !strings.Contains(body, `reason="auth"`) {
		t.Errorf("the source's probes after its reload are not signed with the new key (z, with the old key only, accepted them):\n%s", grepLines(body, "probe_"))
	}
	if ok("refl", stampTarget) {
		t.Errorf("the source's STAMP packets after its reload are not signed with the new key")
	}

	// z gets both keys: new probes signed with the new key pass.
	mustWrite(t, kz, oldKey+"\n"+newKey+"\n")
	sighup(z.proc, "keys loaded")
	if !ok("relays", z.addr) || !ok("refl", stampTarget) {
		t.Errorf("z with both keys after SIGHUP refuses the source's new key:\n%s\n%s", probe("relays", z.addr), probe("refl", stampTarget))
	}
	if err := kept.probe(); err != nil {
		t.Errorf("z with both keys: the session opened before, signed with the old key: %v", err)
	}

	// z drops the old key: it is refused on new sessions and on the one
	// opened before alike.
	mustWrite(t, kz, newKey+"\n")
	sighup(z.proc, "keys loaded")
	if !ok("relays", z.addr) || !ok("refl", stampTarget) {
		t.Errorf("z with the new key only after SIGHUP:\n%s\n%s", probe("relays", z.addr), probe("refl", stampTarget))
	}
	if err := dialKeyed(t, z.addr, oldKey).probe(); err == nil || !strings.Contains(err.Error(), "(auth)") {
		t.Errorf("a new session signed with the dropped key: %v, want refused (auth)", err)
	}
	if err := dialKeyed(t, z.addr, newKey).probe(); err != nil {
		t.Errorf("a new session signed with the new key: %v", err)
	}
	if err := kept.probe(); err == nil || !strings.Contains(err.Error(), "(auth)") {
		t.Errorf("the session opened before the reloads, signed with the dropped key: %v, want refused (auth)", err)
	}

	// Key files that cannot be read: the reload says why and what to do,
	// and the keys in use stay.
	mustWrite(t, kz, "\n")
	sighup(z.proc, "configuration not loaded")
	if out := z.out.String(); !strings.Contains(out, kz+" is empty: write the secret into it") {
		t.Errorf("z's log does not say the key file is empty:\n%s", tail(out, 2000))
	}
	os.Remove(ka)
	if err := syscall.Mkfifo(ka, 0o600); err != nil {
		t.Fatal(err)
	}
	code, body := postReload(t, ex.web)
	if code != http.StatusInternalServerError || !strings.Contains(body, "--relay.auth-key-file: cannot read "+ka+": it is not a regular file") {
		t.Errorf("reload with a FIFO as the key file: %d %s", code, body)
	}
	if !ok("relays", z.addr) || !ok("refl", stampTarget) {
		t.Errorf("after failed reloads, the keys in use changed:\n%s", probe("relays", z.addr))
	}
}

// runBounded runs the binary and kills it after limit: a command that
// waits for ever on a secret file fails the test instead of hanging it.
func runBounded(t *testing.T, limit time.Duration, args ...string) (out string, code int, timedOut bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return b.String(), -1, true
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return b.String(), code, false
}

// --relay.auth-key-file and --inband.snmp-community-file are read by the
// rule of every secret file (REVIEW-1 finding 7): a FIFO or a device is
// refused at once (a FIFO blocked the process for ever, /dev/zero grew
// it without end), an empty file or one over 64 KiB is refused, each
// saying which file and what to do.
func TestSecretFlagsFollowTheSecretFileRule(t *testing.T) {
	dir := t.TempDir()
	fifo, empty, huge := filepath.Join(dir, "fifo"), filepath.Join(dir, "empty"), filepath.Join(dir, "huge")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, empty, "\n")
	mustWrite(t, huge, strings.Repeat("0123456789abcdef\n", 5000))
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"key file: a FIFO", []string{"probe", "127.0.0.1:1", "--relay.auth-key-file", fifo}, fifo + ": it is not a regular file"},
		{"key file: /dev/zero", []string{"probe", "127.0.0.1:1", "--relay.auth-key-file", "/dev/zero"}, "/dev/zero: it is not a regular file"},
		{"key file: empty", []string{"probe", "127.0.0.1:1", "--relay.auth-key-file", empty}, empty + " is empty: write the secret into it"},
		{"key file: over 64 KiB", []string{"probe", "127.0.0.1:1", "--relay.auth-key-file", huge}, huge + " is larger than 64 KiB"},
		{"community file: a FIFO", []string{"--web.listen-address", "127.0.0.1:0", "--inband.snmp-community-file", fifo}, fifo + ": it is not a regular file"},
		{"community file: empty", []string{"--web.listen-address", "127.0.0.1:0", "--inband.snmp-community-file", empty}, empty + " is empty: write the secret into it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code, timedOut := runBounded(t, 10*time.Second, tc.args...)
			if timedOut || code == 0 || !strings.Contains(out, tc.want) {
				t.Errorf("%v: exit %d, still running after 10 s: %v; want an error containing %q\n%s", tc.args, code, timedOut, tc.want, tail(out, 2000))
			}
		})
	}
}
