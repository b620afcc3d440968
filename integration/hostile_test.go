package integration

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// hostileHop answers every probe with a record whose name is not UTF-8
// and would close a label in the text format (`z\xff"}`): same length as
// a valid name, the frame otherwise valid.
func hostileHop(t *testing.T) string {
	return chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		rec := chaintest.EndRecord("zzzz")
		b := frame.AppendHop(nil, &rec)
		i := bytes.LastIndex(b, []byte("zzzz"))
		copy(b[i:], "z\xff\"}")
		return chaintest.Reply(v, req, b, 1)
	})
}

// A hop cannot kill the source: its reply is refused as bad_frame naming
// the hop, /probe answers probe_success 0, and the process serves on.
func TestHostileHopCannotCrashTheSource(t *testing.T) {
	hostile := hostileHop(t)
	b := startHop(t, "b", hostile)
	ex := startExporter(t, "a", "modules:\n  default:\n    targets: [\"127.0.0.1:*\"]\n")
	for _, tc := range []struct {
		target, from string
	}{
		{hostile, "a"}, // the source itself reads the hostile record
		{b.addr, "b"},  // relay b refuses it, the source reads b's error
	} {
		for i := 0; i < 3; i++ {
			body := httpGet(t, "http://"+ex.web+"/probe?target="+tc.target)
			p := expfmt.NewTextParser(model.UTF8Validation)
			mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
			if err != nil {
				t.Fatalf("/probe answer does not parse: %v\n%s", err, body)
			}
			if v := mfs["probe_success"].GetMetric()[0].GetGauge().GetValue(); v != 0 {
				t.Fatalf("probe_success %v through a hostile hop", v)
			}
			fs := mfs["subsegment_probe_failed_segment_info"]
			if fs == nil {
				t.Fatalf("no failed segment:\n%s", body)
			}
			labels := map[string]string{}
			for _, l := range fs.GetMetric()[0].GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["reason"] != "bad_frame" || labels["from"] != tc.from {
				t.Errorf("target %s: failed segment %v, want bad_frame from %s", tc.target, labels, tc.from)
			}
		}
	}
	// Still serving, and nothing panicked.
	metrics := httpGet(t, "http://"+ex.web+"/metrics")
	if !strings.Contains(metrics, "subsegment_exporter_panics_total 0") || !strings.Contains(metrics, "subsegment_exporter_collect_errors_total 0") {
		t.Errorf("panics or collect errors counted:\n%s", grepLines(metrics, "subsegment_exporter_"))
	}
	if strings.Contains(ex.out.String(), "panic") {
		t.Errorf("the exporter logged a panic:\n%s", ex.out.String())
	}
	// The relay logged the refusal (once, as a warning).
	b.waitOutput(t, regexpOf(`level=WARN .*refusing a bad reply from the next hop`), 5*time.Second)
}

// Clients cannot create series: unknown modules are counted in one
// unlabelled counter, however many names and however long.
func TestUnknownModulesAddNoSeries(t *testing.T) {
	ex := startExporter(t, "a", "modules:\n  default:\n    targets: [\"127.0.0.1:*\"]\n")
	before := httpGet(t, "http://"+ex.web+"/metrics")
	names := []string{strings.Repeat("m", 3000)}
	for i := 0; i < 50; i++ {
		names = append(names, "made-up-"+strconv.Itoa(i))
	}
	for _, name := range names {
		resp, err := http.Get("http://" + ex.web + "/probe?target=127.0.0.1:9&module=" + name)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("module %.20s…: status %d, want 400", name, resp.StatusCode)
		}
	}
	after := httpGet(t, "http://"+ex.web+"/metrics")
	if got, want := len(samples(after, "subsegment_exporter_probes_total{")), len(samples(before, "subsegment_exporter_probes_total{")); got != want {
		t.Errorf("probes_total series: %d after, %d before", got, want)
	}
	if !strings.Contains(after, "subsegment_exporter_module_unknown_total 51") {
		t.Errorf("unknown modules not counted:\n%s", grepLines(after, "module_unknown"))
	}
	for _, line := range strings.Split(after, "\n") {
		if len(line) > 1000 {
			t.Errorf("a %d-byte line in /metrics: %.80s…", len(line), line)
		}
	}
}

// samples are the lines of a text exposition holding sub, comments left out.
func samples(s, sub string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// cpuSeconds is a process's user + system CPU time so far.
func cpuSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command (which may hold spaces) in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// blackhole accepts connections and never reads them, with a small
// receive buffer: a next hop that stops reading.
func blackhole(t *testing.T) string {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return chaintest.Hold(t, ln)
}

// A relay whose next hop stops reading (its forward write pending) and
// whose upstream then resets must not spin: before the fix the epoll
// engine burnt a CPU until --timeout, woken by ERR/HUP on a descriptor it
// had set to no interest.
func TestNoSpinAfterUpstreamResetWithPendingWrite(t *testing.T) {
	for _, engine := range []string{"epoll", "goroutines"} {
		t.Run(engine, func(t *testing.T) {
			b := startHop(t, "b", blackhole(t), "--relay.engine", engine, "--timeout", "10s", "--log.level", "info")
			c, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			// One 8 MiB probe: far more than the next hop's socket takes.
			fr := frame.AppendZeroRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: 0, BudgetMicros: 10_000_000}, 8<<20, []uint64{42}, frame.NewSigner(nil))
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(fr); err != nil {
				t.Fatalf("write: %v", err)
			}
			time.Sleep(500 * time.Millisecond) // the relay read it and is stuck writing it on
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close() // RST
			time.Sleep(200 * time.Millisecond)
			pid := b.cmd.Process.Pid
			before := cpuSeconds(t, pid)
			time.Sleep(3 * time.Second)
			if used := cpuSeconds(t, pid) - before; used >= 0.1 {
				t.Errorf("relay used %.2fs of CPU in the 3s after the reset", used)
			} else {
				t.Logf("relay used %.2fs of CPU in the 3s after the reset", used)
			}
		})
	}
}
