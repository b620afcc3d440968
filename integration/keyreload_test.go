package integration

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

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
