package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// Secret is a value never shown: logs, debug output and config dumps
// print it as <secret>. Every secret of the file may instead be given as
// a *_file key naming a file that holds it (Prometheus' convention), read
// at load and at every reload.
type Secret string

// MarshalYAML redacts the secret.
func (s Secret) MarshalYAML() (any, error) {
	if s == "" {
		return "", nil
	}
	return "<secret>", nil
}

// String redacts the secret in fmt output too.
func (s Secret) String() string { return "<secret>" }

// GoString redacts the secret in %#v output.
func (s Secret) GoString() string { return `"<secret>"` }

// maxSecretFileBytes bounds a *_file: a credential is a line; a larger
// file is the wrong file.
const maxSecretFileBytes = 64 << 10

// resolvePath makes a path of the file relative to the file's directory,
// as Prometheus does: the same file loads alike from any working directory.
func resolvePath(dir, p string) string {
	if p == "" || dir == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// secretPair fills *value from *file (a *_file key, made absolute) when
// that is given; giving both is an error. key is the value's key path.
func secretPair(key, dir string, value *Secret, file *string) error {
	if *file == "" {
		return nil
	}
	if *value != "" {
		return bad(key+"_file", "%s and %s_file are both given: keep one", lastKey(key), lastKey(key))
	}
	*file = resolvePath(dir, *file)
	s, err := ReadSecretFile(*file)
	if err != nil {
		return bad(key+"_file", "%v", err)
	}
	*value = s
	return nil
}

// ReadSecretFile is the one rule for reading a secret from a file, for
// the *_file keys of the configuration and for the command's flags
// (--relay.auth-key-file, --inband.snmp-community-file) alike: a regular
// file (a FIFO, a device or a directory is refused at once, never waited
// on or read without end), opened without blocking, at most 64 KiB, its
// text without the white space around it (a trailing newline is not part
// of a password), and not empty. Its errors name the path and say what
// to do.
func ReadSecretFile(path string) (Secret, error) {
	b, err := readSecretBytes(path)
	if err != nil {
		return "", err
	}
	return Secret(strings.TrimSpace(string(b))), nil
}

// ReadKeyFile reads the chain's shared keys (--relay.auth-key-file) by
// the rule of every secret file (ReadSecretFile): one key per line, the
// first signing (frame.ParseKeys, whose errors count the file's lines).
func ReadKeyFile(path string) (frame.Keys, error) {
	b, err := readSecretBytes(path)
	if err != nil {
		return nil, err
	}
	return frame.ParseKeys(b, path)
}

// readSecretBytes reads a secret file by the rule (ReadSecretFile), as
// it is: the caller trims.
func readSecretBytes(path string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO nobody writes to returns at once (and is
	// refused below) instead of waiting for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, secretFileError(path, err)
	}
	defer f.Close()
	// A FIFO or a terminal would hold the load (and every reload after
	// it) until someone writes, /dev/zero would never end: only regular
	// files hold secrets.
	if fi, err := f.Stat(); err != nil {
		return nil, secretFileError(path, err)
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("cannot read %s: it is not a regular file (%s): give the path of a file holding the secret", path, fi.Mode().Type())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	if err != nil {
		return nil, secretFileError(path, err)
	}
	if len(b) > maxSecretFileBytes {
		return nil, fmt.Errorf("%s is larger than %d KiB: a secret file holds one secret; check the path", path, maxSecretFileBytes>>10)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("%s is empty: write the secret into it (one line)", path)
	}
	return b, nil
}

// secretFileError says what is wrong with a secret file and what to do.
func secretFileError(path string, err error) error {
	return fmt.Errorf("cannot read %w", fileError(path, err, "create it (the secret on one line) or fix the path (a relative path in the configuration is relative to its file's directory)"))
}

// fileError says why a file of the configuration cannot be read (path
// first) and what to do; missing says what to do when it does not exist.
func fileError(path string, err error, missing string) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: it does not exist: %s", path, missing)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s: permission denied: make it readable by the user the exporter runs as (the Debian package: owner root, group subsegment, mode 0640)", path)
	}
	return fmt.Errorf("%s: %w", path, err)
}

// lastKey is the last key of a dotted path.
func lastKey(path string) string {
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[i+1:]
	}
	return path
}
