package netns_test

import (
	"net"
	"os"
	"os/exec"
	"testing"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netns"
)

// A socket opened inside a namespace stays there; the caller's thread
// stays where it was.
func TestDo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	name := "sstrnetns" + t.Name()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	self, _ := os.Readlink("/proc/thread-self/ns/net")
	var inside string
	var ln net.Listener
	err := netns.Do(name, func() (err error) {
		inside, _ = os.Readlink("/proc/thread-self/ns/net")
		// The namespace has only a loopback, down: no address to listen on
		// but its own once it is up.
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Logf("%s", out)
			return err
		}
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if inside == self {
		t.Fatalf("fn ran in the caller's namespace %s", self)
	}
	// Dialling from here (another namespace) cannot reach the listener.
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Errorf("the listener is reachable from the caller's namespace")
	}
	if err := netns.Do("no-such-namespace-sstr", func() error { return nil }); err == nil {
		t.Error("a missing namespace gave no error")
	}
}
