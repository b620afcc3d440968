// Package netns runs a function inside a named network namespace (the ones
// `ip netns add` creates under /run/netns) from a test process, without a
// helper process: the function runs on a locked OS thread that has joined
// the namespace, and every socket it opens stays in that namespace for
// its whole life, whichever thread later reads or writes it. The thread
// goes back to its original namespace before it is unlocked; if that
// fails, it stays locked and dies with its goroutine, so no other
// goroutine ever runs in the wrong namespace.
//
// The function itself must open its sockets: goroutines it starts run on
// other threads, in the process's own namespace.
//
// Only tests import it (internal/architecture_test.go).
package netns

import (
	"fmt"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Dir is where `ip netns add` mounts named namespaces.
const Dir = "/run/netns"

// Path is the file of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Do runs fn on a thread inside the named namespace ("" runs fn where the
// caller is) and returns its error.
func Do(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	target, err := unix.Open(Path(name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network namespace %q: %w", name, err)
	}
	defer unix.Close(target)
	errc := make(chan error, 1)
	// A fresh goroutine, so that a thread that cannot go back is thrown
	// away by the runtime when this goroutine ends locked.
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("network namespace of this thread: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("join network namespace %q: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread exits with this goroutine.
			errc <- fmt.Errorf("leave network namespace %q: %w (after: %v)", name, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
