package netlab

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes TestHelperLab build a lab and wait to be killed.
const helperEnv = "SSTR_NETLAB_HELPER"

// TestHelperLab is the helper process of TestLabGoesOnSIGTERM: it builds a
// lab, prints its id, and waits (for SIGTERM) without ending its test.
func TestHelperLab(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper process only")
	}
	l := New(t)
	l.Host("a")
	l.Host("b")
	os.Stdout.WriteString(l.id + "\n")
	time.Sleep(time.Minute)
}

// A test process killed by SIGTERM deletes its lab's namespaces; one that
// died without cleaning up (SIGKILL) has them deleted by the next lab.
func TestLabGoesOnSIGTERM(t *testing.T) {
	if !Root() {
		t.Skip("network namespace tests need root")
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLab$", "-test.v")
		cmd.Env = append(os.Environ(), helperEnv+"=1")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		id := ""
		for id == "" && sc.Scan() {
			if strings.HasPrefix(sc.Text(), prefix) {
				id = sc.Text()
			}
		}
		if id == "" || len(namespaces(id)) != 2 {
			_ = cmd.Process.Kill()
			t.Fatalf("helper lab %q: namespaces %v", id, namespaces(id))
		}
		_ = cmd.Process.Signal(sig)
		_ = cmd.Wait()
		if sig == syscall.SIGKILL {
			if len(namespaces(id)) != 2 {
				t.Fatalf("after SIGKILL: namespaces %v, want both left for the next lab", namespaces(id))
			}
			New(t) // reaps them
		}
		if left := namespaces(id); len(left) != 0 {
			t.Errorf("after %v: namespaces %v left", sig, left)
		}
	}
}

// namespaces lists the namespaces of lab id.
func namespaces(id string) []string {
	entries, _ := os.ReadDir("/run/netns")
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id+"-") {
			names = append(names, e.Name())
		}
	}
	return names
}

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
	if left := namespaces(l.id); len(left) != 0 {
		t.Errorf("namespaces %v left after Close", left)
	}
}
