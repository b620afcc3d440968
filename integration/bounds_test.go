package integration

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
)

// Item 9 of issue 20, with the binary: at --probe.max-concurrent probes of
// a hung chain, the next /probe is answered 503 at once and counted; when
// they end, probing works again.
func TestProbeLimitOfTheBinary(t *testing.T) {
	hung := chaintest.Silent(t)
	z := startHop(t, "z", "")
	ex := startExporter(t, "a", "modules:\n  default: {timeout: 5m, probes: 1, targets: [\"127.0.0.1:*\"]}\n", "--probe.max-concurrent=2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ex.web+"/probe?target="+hung, nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	metrics := func() string { return httpGet(t, "http://"+ex.web+"/metrics") }
	eventually(t, 30*time.Second, "two probes in flight", func() error {
		if v := metricValue(metrics(), "subsegment_exporter_probes_in_flight"); v != 2 {
			return errors.New("not yet")
		}
		return nil
	})
	resp, err := http.Get("http://" + ex.web + "/probe?target=" + z.addr)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "--probe.max-concurrent=2") {
		t.Errorf("/probe over the limit: %d %s", resp.StatusCode, body)
	}
	if v := metricValue(metrics(), "subsegment_exporter_probes_over_limit_total"); v != 1 {
		t.Errorf("subsegment_exporter_probes_over_limit_total %v, want 1", v)
	}
	cancel()
	wg.Wait()
	eventually(t, 30*time.Second, "the hung probes ended", func() error {
		if v := metricValue(metrics(), "subsegment_exporter_probes_in_flight"); v != 0 {
			return errors.New("still in flight")
		}
		return nil
	})
	if body := httpGet(t, "http://"+ex.web+"/probe?target="+z.addr); !strings.Contains(body, "probe_success 1") {
		t.Errorf("/probe after the limit freed:\n%s", body)
	}
	// A limit that makes no sense is refused at start.
	if _, errOut, code := runBinary(t, nil, "--probe.max-concurrent=-1", "--web.listen-address", "127.0.0.1:0"); code != 2 || !strings.Contains(errOut, "--probe.max-concurrent=-1") {
		t.Errorf("--probe.max-concurrent=-1: exit %d %q", code, errOut)
	}
}

// keepAlive makes one keep-alive request on a new connection to web and
// returns the connection, open.
func keepAlive(t *testing.T, web string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", web)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("keep-alive request: %d, close %v", resp.StatusCode, resp.Close)
	}
	return c
}

// Item 9 of issue 20: a keep-alive client that stays idle is closed after
// --web.idle-timeout; the same client of an exporter with a long idle
// timeout is still connected then (the reference, measured alongside).
func TestIdleKeepAliveConnectionsAreClosed(t *testing.T) {
	cfg := "modules:\n  default: {targets: [\"127.0.0.1:*\"]}\n"
	short := startExporter(t, "a", cfg, "--web.idle-timeout=300ms")
	long := startExporter(t, "a", cfg, "--web.idle-timeout=1h")
	cs, cl := keepAlive(t, short.web), keepAlive(t, long.web)
	_ = cs.SetReadDeadline(time.Now().Add(60 * time.Second))
	if n, err := cs.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection with --web.idle-timeout=300ms: read %d, %v; want EOF (closed by the exporter)", n, err)
	}
	_ = cl.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := cl.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("idle connection with --web.idle-timeout=1h: %v; want it still open", err)
	}
}
