package reflector

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// tsharkPacket is what tshark -T json says of one packet.
type tsharkPacket struct {
	Source struct {
		Layers struct {
			UDP   map[string]any `json:"udp"`
			TWAMP map[string]any `json:"twamp.test"`
		} `json:"layers"`
	} `json:"_source"`
}

// Interop with Wireshark's own TWAMP-Test dissector (Debian's tshark 4.0),
// which decodes STAMP's unauthenticated base packets: what our sender and
// our reflector put on the wire decodes to the values they meant.
func TestTsharkDecodesOurPackets(t *testing.T) {
	needRoot(t, "tshark")
	l := newNSLab(t)
	l.reflector(Config{})
	const n = 5
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.ns("F"), "tshark", "-i", "fr", "-f", "udp port 862",
		"-d", "udp.port==862,twamp.test", "-T", "json")
	cmd.Env = append(os.Environ(), "TZ=UTC")
	// tshark and its dumpcap in a process group of their own: stopped
	// together, by this test, whatever happens.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	capturing := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), "Capturing on") {
				once = true
				close(capturing)
			}
		}
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
			_ = cmd.Wait()
		}
	}
	defer stop()
	select {
	case <-capturing:
	case <-ctx.Done():
		t.Fatal("tshark did not start capturing")
	}
	// "Capturing on" comes a moment before dumpcap's filter is in place.
	time.Sleep(500 * time.Millisecond)
	s := l.session(stamp.SessionOptions{})
	res, sum := probeSession(t, s, n, 20*time.Millisecond)
	if sum.Received != n {
		t.Fatalf("summary %+v", sum)
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	var pkts []tsharkPacket
	if err := json.Unmarshal(out.Bytes(), &pkts); err != nil {
		t.Fatalf("tshark JSON: %v\n%s", err, out.String())
	}
	checked := 0
	for _, p := range pkts {
		f := p.Source.Layers.TWAMP
		if f == nil {
			t.Fatalf("tshark did not decode a packet as TWAMP-Test: %+v", p.Source.Layers)
		}
		seq := num(t, f, "twamp.test.seq_number")
		if str(p.Source.Layers.UDP, "udp.dstport") == "862" {
			checkRequest(t, f, &res.Packets[seq])
		} else {
			sseq := num(t, f, "twamp.test.sender_seq_number")
			checkReply(t, f, &res.Packets[sseq], s.SSID())
		}
		checked++
	}
	if checked != 2*n {
		t.Errorf("%d packets decoded, want %d", checked, 2*n)
	}
}

func str(m map[string]any, k string) string {
	v, _ := m[k].(string)
	return v
}

func num(t *testing.T, m map[string]any, k string) int {
	t.Helper()
	v, err := strconv.Atoi(str(m, k))
	if err != nil {
		t.Fatalf("tshark field %s: %q", k, str(m, k))
	}
	return v
}

// tsTime parses tshark's absolute time ("Dec  6, 2026 13:44:24.096616548 UTC").
func tsTime(t *testing.T, m map[string]any, k string) int64 {
	t.Helper()
	v, err := time.Parse("Jan _2, 2006 15:04:05.000000000 MST", str(m, k))
	if err != nil {
		t.Fatalf("tshark field %s: %v", k, err)
	}
	return v.UnixNano()
}

// near: tshark's and our conversions of the NTP fraction may round apart
// by a nanosecond.
func near(a, b int64) bool { return a-b <= 1 && b-a <= 1 }

// wire is a Unix time as it was on the wire (NTP), decoded back.
func wire(ns int64) int64 {
	v, _ := stamp.NewTimestamp(ns, stamp.FormatNTP, 0).UnixNano(stamp.FormatNTP, 0)
	return v
}

func checkErrorEstimate(t *testing.T, m map[string]any, prefix string, e stamp.ErrorEstimate) {
	t.Helper()
	if got := num(t, m, prefix); got != int(e) {
		t.Errorf("%s %d, want %d", prefix, got, e)
	}
	if prefix != "twamp.test.error_estimate" {
		return
	}
	tree, _ := m["twamp.test.error_estimate_tree"].(map[string]any)
	want := map[string]string{
		"twamp.test.error_estimate.s":          fmt.Sprint(map[bool]int{false: 0, true: 1}[e.Synced()]),
		"twamp.test.error_estimate.z":          fmt.Sprint(int(e.Format())),
		"twamp.test.error_estimate.scale":      fmt.Sprint(e.Scale()),
		"twamp.test.error_estimate.multiplier": fmt.Sprint(e.Multiplier()),
	}
	for k, v := range want {
		if str(tree, k) != v {
			t.Errorf("%s %q, want %q", k, str(tree, k), v)
		}
	}
}

func checkRequest(t *testing.T, f map[string]any, p *stamp.PacketResult) {
	t.Helper()
	if got := tsTime(t, f, "twamp.test.timestamp"); !near(got, wire(p.T1)) {
		t.Errorf("request %d: tshark timestamp %d, sent %d", p.Seq, got, wire(p.T1))
	}
	checkErrorEstimate(t, f, "twamp.test.error_estimate", p.SenderError)
}

func checkReply(t *testing.T, f map[string]any, p *stamp.PacketResult, ssid uint16) {
	t.Helper()
	if got := num(t, f, "twamp.test.seq_number"); got != int(p.ReflectorSeq) {
		t.Errorf("reply seq %d, want %d", got, p.ReflectorSeq)
	}
	if got := tsTime(t, f, "twamp.test.timestamp"); !near(got, p.T3) {
		t.Errorf("reply %d: tshark T3 %d, ours %d", p.Seq, got, p.T3)
	}
	if got := tsTime(t, f, "twamp.test.receive_timestamp"); !near(got, p.T2) {
		t.Errorf("reply %d: tshark T2 %d, ours %d", p.Seq, got, p.T2)
	}
	if got := tsTime(t, f, "twamp.test.sender_timestamp"); !near(got, wire(p.T1)) {
		t.Errorf("reply %d: tshark echoed T1 %d, sent %d", p.Seq, got, wire(p.T1))
	}
	checkErrorEstimate(t, f, "twamp.test.error_estimate", p.ReflectorError)
	checkErrorEstimate(t, f, "twamp.test.sender_error_estimate", p.SenderError)
	// Wireshark 4.0 predates RFC 8972: the SSID is its "MBZ" after the
	// Error Estimate.
	if got := num(t, f, "twamp.test.mbz1"); got != int(ssid) {
		t.Errorf("SSID (Wireshark's mbz1) %d, want %d", got, ssid)
	}
	if got := num(t, f, "twamp.test.sender_ttl"); got != 63 || p.SenderTTL != 63 {
		t.Errorf("sender TTL %d (ours %d), want 63: one router between sender and reflector", got, p.SenderTTL)
	}
}
