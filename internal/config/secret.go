package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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
	s, err := readSecretFile(*file)
	if err != nil {
		return bad(key+"_file", "%v", err)
	}
	*value = s
	return nil
}

// readSecretFile reads a secret: the file's text without the white space
// around it (a trailing newline is not part of a password).
func readSecretFile(path string) (Secret, error) {
	// O_NONBLOCK: opening a FIFO nobody writes to returns at once (and is
	// refused below) instead of waiting for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", secretFileError(path, err)
	}
	defer f.Close()
	// A FIFO or a terminal would hold the load (and every reload after
	// it) until someone writes: only regular files hold secrets.
	if fi, err := f.Stat(); err != nil {
		return "", secretFileError(path, err)
	} else if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("cannot read %s: it is not a regular file (%s): give the path of a file holding the secret", path, fi.Mode().Type())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	if err != nil {
		return "", secretFileError(path, err)
	}
	if len(b) > maxSecretFileBytes {
		return "", fmt.Errorf("%s is larger than %d KiB: a secret file holds one secret; check the path", path, maxSecretFileBytes>>10)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty: write the secret into it (one line)", path)
	}
	return Secret(s), nil
}

// secretFileError says what is wrong with a secret file and what to do.
func secretFileError(path string, err error) error {
	return fmt.Errorf("cannot read %w", fileError(path, err, "create it (the secret on one line) or fix the path (a relative path is relative to the configuration file's directory)"))
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
