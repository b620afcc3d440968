package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// probesCounted reads the continuous probes counted with result.
func probesCounted(t *testing.T, web, target, result string) float64 {
	t.Helper()
	return metricValue(httpGet(t, "http://"+web+"/metrics"),
		fmt.Sprintf(`subsegment_continuous_probes_total{module=%q,result=%q,target=%q}`, "m", result, target))
}

// waitProbes waits (bounded) until the entry counted at least n probes
// with result.
func waitProbes(t *testing.T, web, target, result string, n float64, timeout time.Duration) float64 {
	t.Helper()
	var got float64
	eventually(t, timeout, fmt.Sprintf("%v continuous probes with result %s", n, result), func() error {
		if got = probesCounted(t, web, target, result); got < n {
			return fmt.Errorf("%v so far", got)
		}
		return nil
	})
	return got
}

// reconnectHeap runs a continuous entry whose every probe (or every other
// one) opens a new connection, and returns the exporter's heap after GC
// over 2000 reconnects, measured after a warm-up of 200.
func reconnectHeap(t *testing.T, target, module, result string) (before, after, reconnects float64) {
	t.Helper()
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  m:
%s
    timeout: 2s
    targets: ["127.0.0.1:*"]
continuous:
  - {target: %q, module: m, interval: 10ms}
`, module, target), "--web.enable-pprof")
	waitProbes(t, ex.web, target, result, 200, 2*time.Minute)
	before = heapAfterGC(t, ex.web)
	n0 := probesCounted(t, ex.web, target, result)
	n1 := waitProbes(t, ex.web, target, result, n0+2000, 5*time.Minute)
	after = heapAfterGC(t, ex.web)
	return before, after, n1 - n0
}

// TestContinuousReconnectsDoNotGrowTheHeap: every dial of a continuous
// session registered a context.AfterFunc on the runner's long-lived
// context and dropped its stop function, so each reconnect kept its
// connection reachable: +2 MB over 2000 probes of a backend that answers
// Connection: close. The heap after GC stays flat over 2000 reconnects,
// for an HTTP entry and for a relay chain that fails every other probe.
func TestContinuousReconnectsDoNotGrowTheHeap(t *testing.T) {
	const limit = 512 << 10
	t.Run("http Connection: close", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "ok\n")
		})}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { srv.Close() })
		target := "http://" + ln.Addr().String() + "/"
		before, after, n := reconnectHeap(t, target, "    prober: http", "success")
		t.Logf("heap in use after GC: %.2f MiB before, %.2f MiB after %v probes, each on a new connection (%+.0f bytes)", before/(1<<20), after/(1<<20), n, after-before)
		if after-before > limit {
			t.Errorf("heap grew by %.0f bytes over %v reconnects (limit %d)", after-before, n, limit)
		}
	})
	t.Run("tcp chain failing every other probe", func(t *testing.T) {
		// A first hop that answers one probe per connection, then closes
		// it: the session's warm-up passes, its next probe fails, and the
		// runner reconnects.
		hop := onePerConnection(t)
		before, after, n := reconnectHeap(t, hop, "    prober: tcp", "failure")
		t.Logf("heap in use after GC: %.2f MiB before, %.2f MiB after %v failed probes and reconnects (%+.0f bytes)", before/(1<<20), after/(1<<20), n, after-before)
		if after-before > limit {
			t.Errorf("heap grew by %.0f bytes over %v reconnects (limit %d)", after-before, n, limit)
		}
	})
}

// onePerConnection is an end host that answers the first probe of each
// connection and closes it.
func onePerConnection(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go answerOnce(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func answerOnce(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := frame.NewReader(c, frame.DefaultMaxFrameBytes)
	defer r.Release()
	for range 10 {
		if r.Fill() != nil {
			return
		}
		fr, err := r.Next()
		if err != nil {
			return
		}
		if fr == nil {
			continue
		}
		v, err := frame.Parse(fr, frame.DefaultMaxFrameBytes, frame.MaxHopsLimit)
		if err != nil {
			return
		}
		rec := chaintest.EndRecord("z")
		_, _ = c.Write(chaintest.Reply(v, fr, frame.AppendHop(nil, &rec), 1))
		return
	}
}
