package netlab

import (
	"os"
	"strings"
	"testing"
)

func TestPacketsOf(t *testing.T) {
	out := `Chain FORWARD (policy ACCEPT 12 packets, 1000 bytes)
    pkts      bytes target     prot opt in     out     source               destination
      17     1204            tcp  --  *      *       10.0.1.1             10.0.3.2             /* flow */
       0        0 DROP       icmp --  *      *       0.0.0.0/0            0.0.0.0/0            /* other */
`
	for _, tc := range []struct {
		name string
		want uint64
		err  bool
	}{{"flow", 17, false}, {"other", 0, false}, {"missing", 0, true}} {
		got, err := packetsOf(out, tc.name)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%s: %d, %v; want %d (error %v)", tc.name, got, err, tc.want, tc.err)
		}
	}
}

// A lab's namespaces exist while the test runs and are gone after Close.
func TestLabCleansUp(t *testing.T) {
	l := New(t)
	a, b := l.Host("a"), l.Host("b")
	l.Link(a, "eth0", "10.71.0.1/24 fd71::1/64", b, "eth0", "10.71.0.2/24 fd71::2/64")
	a.Run("ping", "-c1", "-W2", "10.71.0.2")
	a.Run("ping", "-6", "-c1", "-W2", "fd71::2")
	l.Close()
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), l.id) {
			t.Errorf("namespace %s left after Close", e.Name())
		}
	}
}
