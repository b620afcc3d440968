// Package lowlatency makes a relay process wait for the network the way a
// plain C program does. The relay's epoll engine waits in a raw
// epoll_wait (relay/rawsys.go); the Go runtime then sees its goroutine as
// running without pause and interrupts it every 10 ms with the
// asynchronous preemption signal, and on a CPU shared with busy processes
// every such wake-up waits for the CPU and delays the probes behind it.
// With async preemption off (GODEBUG=asyncpreemptoff=1) a relay pinned to
// a busy CPU waits about as long as a blocking C echo there (bench/).
//
// The setting is read only at process start, so Ensure re-executes the
// process with it (same PID, arguments and descriptors).
//
// Layering (internal/architecture_test.go): floor 0; it imports nothing of
// the project.
package lowlatency

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
)

// setting is what the relay needs of the runtime.
const setting = "asyncpreemptoff=1"

// Active reports whether the process runs with async preemption off.
func Active() bool { return strings.Contains(","+os.Getenv("GODEBUG")+",", ","+setting+",") }

// chosen reports whether GODEBUG already says something about async
// preemption (an operator's choice, kept as it is).
func chosen() bool {
	for _, f := range strings.Split(os.Getenv("GODEBUG"), ",") {
		if strings.HasPrefix(f, "asyncpreemptoff=") {
			return true
		}
	}
	return false
}

// Ensure re-executes the process with async preemption off, unless it is
// off already or GODEBUG sets asyncpreemptoff otherwise. It returns only
// when it does not re-execute (or exec failed: the relay then runs as it
// is, slower under contention, and the error says so).
func Ensure() error {
	if chosen() {
		return nil
	}
	env := os.Environ()
	godebug := setting
	for i, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			if v != "" {
				godebug = v + "," + setting
			}
			env = append(env[:i:i], env[i+1:]...)
			break
		}
	}
	env = append(env, "GODEBUG="+godebug)
	// The resolved path, not /proc/self/exe: the process keeps its name
	// (ps, systemctl status, top), and this happens at start, before a
	// package upgrade could replace the file.
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("re-executing with GODEBUG=%s for the relay's event loop: %w", godebug, err)
	}
	if err := syscall.Exec(exe, os.Args, env); err != nil {
		return fmt.Errorf("re-executing with GODEBUG=%s for the relay's event loop: %w", godebug, err)
	}
	return nil
}

// Procs sets GOMAXPROCS from --runtime.gomaxprocs and returns the value in
// force. requested > 0 is taken as it is. 0 picks: Go's default for a
// process that relays (the epoll engine holds a P while it waits in its
// raw epoll_wait, and the web server needs another), and 1 for a pure
// source exporter, as node_exporter does: a source's work is waiting for
// the network, and with more than one P every wake-up (a reply, the end
// of a pause between probes) also wakes a second thread that spins
// looking for work — a quarter of the CPU of a /probe from idle (bench/).
// Its timing does not suffer: arrivals are stamped by the kernel.
func Procs(requested int, relays bool) int {
	switch {
	case requested > 0:
		runtime.GOMAXPROCS(requested)
	case !relays:
		runtime.GOMAXPROCS(1)
	}
	return runtime.GOMAXPROCS(0)
}
