package prober

import (
	"os"
	"runtime"
	"testing"
)

// TestMain gives the test process more Ps than cores: these tests run
// several relays, each with an event-loop thread, and a delaying proxy in
// one process, where real deployments give each hop its own process. With
// only as many Ps as cores, a loop thread coming back from epoll_wait can
// wait for a P, and that wait would show up as segment delay.
func TestMain(m *testing.M) {
	runtime.GOMAXPROCS(max(8, runtime.GOMAXPROCS(0)))
	os.Exit(m.Run())
}
