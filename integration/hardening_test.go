package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	bin "encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/testkit/certtest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// metric reads one sample of a relay's /metrics (the first line matching
// name{labels}).
func metric(t *testing.T, web, name string) float64 {
	t.Helper()
	body := httpGet(t, "http://"+web+"/metrics")
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+-]+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("%s has no %s", web, name)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// collect makes the relay run a full GC (the heap profile does, with gc=1).
func collect(t *testing.T, web string) {
	t.Helper()
	for i := 0; i < 2; i++ {
		httpGet(t, "http://"+web+"/debug/pprof/heap?gc=1")
	}
}

// heapAfterGC is a process's live heap (bytes of allocated objects) right
// after a forced full GC: what memory claims are measured with.
func heapAfterGC(t *testing.T, web string) float64 {
	t.Helper()
	collect(t, web)
	return metric(t, web, "go_memstats_heap_alloc_bytes")
}

func probeOK(ctx context.Context, target string) *prober.Result {
	return prober.Run(ctx, prober.Options{Target: target, Source: "a", Count: 2, Interval: time.Millisecond, Timeout: 3 * time.Second})
}

// benign is a valid probe with random contents (sequence, budget, data):
// the relay forwards and answers it.
func benign(rng *rand.Rand) []byte {
	data := make([]byte, rng.IntN(300))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	return frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: rng.Uint64(), BudgetMicros: rng.Uint32()}, data, []uint64{rng.Uint64() | 1}, nil)
}

// garbage is what an attacker or a broken client sends: random bytes, or
// valid frames with a few bytes flipped, cut short, or with a lying header.
func garbage(rng *rand.Rand) []byte {
	valid := frame.AppendRequest(nil, frame.KindProbeRequest, frame.ProbeHeader{Seq: rng.Uint64(), BudgetMicros: 1_000_000},
		make([]byte, rng.IntN(200)), []uint64{rng.Uint64()}, nil)
	switch rng.IntN(6) {
	case 0: // random bytes
		b := make([]byte, 1+rng.IntN(300))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	case 1: // bit flips
		for i := 0; i < 1+rng.IntN(3); i++ {
			valid[rng.IntN(len(valid))] ^= byte(1 << rng.IntN(8))
		}
		return valid
	case 2: // cut short
		return valid[:rng.IntN(len(valid))]
	case 3: // a length that lies
		bin.BigEndian.PutUint32(valid[8:], rng.Uint32())
		return valid
	case 4: // a count that lies
		valid[frame.HeaderLen+10] = byte(rng.Uint32())
		return valid
	}
	return valid // valid: forwarded and answered
}

func TestIdleConnectionsAndGarbageDoNotStopProbes(t *testing.T) {
	z := startHop(t, "z", "")
	c := startHop(t, "c", z.addr)
	b := startHop(t, "b", c.addr, "--relay.max-connections", "1000", "--log.level", "info", "--web.enable-pprof")
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := 0; i < 1000; i++ {
		conn, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		idle = append(idle, conn)
	}
	time.Sleep(200 * time.Millisecond) // every slot is now held by an idle connection
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var garbageFrames atomic.Int64
	stop := time.Now().Add(4 * time.Second)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for i := 0; i < 5000 && time.Now().Before(stop); i++ {
				conn, err := net.DialTimeout("tcp", b.addr, time.Second)
				if err != nil {
					continue
				}
				conn.SetDeadline(time.Now().Add(time.Second))
				conn.Write(garbage(rng))
				garbageFrames.Add(1)
				io.Copy(io.Discard, conn)
				conn.Close()
			}
		}()
	}
	probes, failures := 0, 0
	for time.Now().Before(stop) {
		r := probeOK(ctx, b.addr)
		probes++
		if !r.Success {
			failures++
			t.Errorf("probe %d during the flood failed: %+v", probes, r.Failure)
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	t.Logf("%d probes answered while 1000 idle connections and %d garbage frames hit the relay", probes-failures, garbageFrames.Load())
	if probes < 10 {
		t.Errorf("only %d probes in the window", probes)
	}
	if metric(t, b.web, `subsegment_relay_errors_total{reason="bad_frame"}`) == 0 {
		t.Error("no bad frame counted")
	}
}

func TestFrameBarrage(t *testing.T) {
	for _, engine := range []string{"epoll", "goroutines"} {
		t.Run(engine, func(t *testing.T) {
			z := startHop(t, "z", "", "--relay.engine", engine)
			b := startHop(t, "b", z.addr, "--relay.engine", engine, "--log.level", "info", "--web.enable-pprof")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if r := probeOK(ctx, b.addr); !r.Success {
				t.Fatalf("probe before the barrage: %+v", r.Failure)
			}
			collect(t, b.web)
			handled0 := metric(t, b.web, `subsegment_relay_frames_total{kind="probe",result="ok"}`) + metric(t, b.web, `subsegment_relay_errors_total{reason="bad_frame"}`)
			goroutines0 := metric(t, b.web, "go_goroutines")
			heap0 := metric(t, b.web, "go_memstats_heap_inuse_bytes")

			const total = 100_000
			sent := throwFrames(b.addr, total, 32, 90*time.Second)
			if sent < total {
				t.Fatalf("only %d frames thrown in 90s", sent)
			}
			if r := probeOK(ctx, b.addr); !r.Success {
				t.Fatalf("probe after %d frames: %+v", sent, r.Failure)
			}
			// Goroutines and heap come back to what they were.
			var goroutines, heap float64
			eventually(t, 20*time.Second, "goroutines and heap back to baseline", func() error {
				collect(t, b.web)
				goroutines, heap = metric(t, b.web, "go_goroutines"), metric(t, b.web, "go_memstats_heap_inuse_bytes")
				if goroutines > goroutines0+2 || heap > heap0*1.5+4<<20 {
					return fmt.Errorf("goroutines %v (baseline %v), heap in use %.1f MiB (baseline %.1f MiB)", goroutines, goroutines0, heap/(1<<20), heap0/(1<<20))
				}
				return nil
			})
			handled := metric(t, b.web, `subsegment_relay_frames_total{kind="probe",result="ok"}`) + metric(t, b.web, `subsegment_relay_errors_total{reason="bad_frame"}`) +
				metric(t, b.web, `subsegment_relay_errors_total{reason="too_many_hops"}`) + metric(t, b.web, `subsegment_relay_errors_total{reason="loop"}`) - handled0
			if handled < 0.9*total {
				t.Errorf("the relay handled %v of %d frames thrown", handled, sent)
			}
			t.Logf("%d frames thrown, %v answered or refused by the relay; goroutines %v -> %v, heap in use %.1f -> %.1f MiB",
				sent, handled, goroutines0, goroutines, heap0/(1<<20), heap/(1<<20))
		})
	}
}

// throwFrames sends at least total frames to addr from workers
// connections at a time (or as many as fit in limit): on each
// connection valid frames with random contents, then one hostile frame,
// so the relay reads every frame. It returns how many it sent.
func throwFrames(addr string, total int64, workers int, limit time.Duration) int64 {
	var sent atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(limit)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for sent.Load() < total && time.Now().Before(deadline) {
				if n, err := throwBatch(addr, rng); err == nil {
					sent.Add(int64(n))
				}
			}
		}()
	}
	wg.Wait()
	return sent.Load()
}

// throwBatch writes 1 to 60 frames on one connection, the last one
// hostile, then reads until the relay closes it.
func throwBatch(addr string, rng *rand.Rand) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	var batch []byte
	n := 1 + rng.IntN(60)
	for i := 0; i < n-1; i++ {
		batch = append(batch, benign(rng)...)
	}
	batch = append(batch, garbage(rng)...)
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	conn.Write(batch)
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	io.Copy(io.Discard, conn)
	return n, nil
}

func TestHopKilledMidProbeAndRestarted(t *testing.T) {
	port := freePort(t)
	zAddr := "127.0.0.1:" + itoa(port)
	z := start(t, "relay z", binary, "--listen", zAddr, "--relay.name", "z", "--web.listen-address", "127.0.0.1:0")
	z.waitOutput(t, relayListening, 10*time.Second)
	c := startHop(t, "c", zAddr)
	b := startHop(t, "b", c.addr)

	// z dies during a run of probes: the probe names c -> z within its timeout.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "probe", b.addr, "--count", "40", "--interval", "50ms", "--relay.name", "a", "-t", "2s")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	killedAt := time.Now()
	z.kill()
	err := cmd.Wait()
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 {
		t.Fatalf("probe with z killed: %v\n%s%s", err, out.String(), errOut.String())
	}
	// closed, reset or refused (checked below), never a timeout: the
	// relay next to the kill answered before the 2s timeout.
	t.Logf("broken segment reported %v after the kill", time.Since(killedAt))
	if !regexp.MustCompile(`segment c -> z failed \((closed|reset|refused)\)`).MatchString(errOut.String()) {
		t.Errorf("stderr does not name c -> z:\n%s", errOut.String())
	}

	// z comes back on its port: the next probe succeeds, nothing else restarted.
	z2 := start(t, "relay z again", binary, "--listen", zAddr, "--relay.name", "z", "--web.listen-address", "127.0.0.1:0")
	z2.waitOutput(t, relayListening, 10*time.Second)
	if r := probeOK(ctx, b.addr); !r.Success {
		t.Fatalf("probe after z restarted: %+v", r.Failure)
	}
}

func TestStreamThroughAHopThatDies(t *testing.T) {
	z := startHop(t, "z", "")
	c := startHop(t, "c", z.addr)
	b := startHop(t, "b", c.addr)
	rng := rand.New(rand.NewPCG(3, 3))
	in := make([]byte, 200<<20)
	for i := 0; i+8 <= len(in); i += 8 {
		bin.LittleEndian.PutUint64(in[i:], rng.Uint64())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "send", "-f", b.addr, "-s", "4096", "-t", "3s", "--relay.name", "a")
	// A slow reader of stdin keeps the stream going long enough to kill c.
	pr, pw := io.Pipe()
	go func() {
		for off := 0; off < len(in); off += 256 << 10 {
			if _, err := pw.Write(in[off:min(off+256<<10, len(in))]); err != nil {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		pw.Close()
	}()
	var out, errOut bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pr, &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	c.kill()
	err := cmd.Wait()
	pr.Close()
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 {
		t.Fatalf("send through a dying hop: %v (stdout %d bytes)\n%s", err, out.Len(), errOut.String())
	}
	m := regexp.MustCompile(`stream incomplete: (\d+) of (\d+) bytes sent came back confirmed`).FindStringSubmatch(errOut.String())
	if m == nil {
		t.Fatalf("stderr does not say how much came back:\n%s", errOut.String())
	}
	confirmed, _ := strconv.Atoi(m[1])
	if confirmed != out.Len() || !bytes.Equal(out.Bytes(), in[:out.Len()]) {
		t.Errorf("stdout (%d bytes) is not exactly the confirmed prefix (%d bytes) of the input", out.Len(), confirmed)
	}
	if confirmed == 0 || confirmed >= len(in) {
		t.Errorf("confirmed %d of %d: the hop was killed mid-stream", confirmed, len(in))
	}
	t.Logf("%s", m[0])
}

func TestKeyRolloverWithKeyFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, keys ...string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(strings.Join(keys, "\n")+"\n"), 0o600)
		return p
	}
	oldKey, newKey := "old-0123456789abcdef0123456789", "new-0123456789abcdef0123456789"
	onlyOld, both, newFirst, onlyNew := write("old", oldKey), write("both", oldKey, newKey), write("newfirst", newKey, oldKey), write("new", newKey)
	// Mid-rollover: z still signs with the old key; c has both; b signs with the new.
	z := startHop(t, "z", "", "--relay.auth-key-file", both)
	c := startHop(t, "c", z.addr, "--relay.auth-key-file", both)
	b := startHop(t, "b", c.addr, "--relay.auth-key-file", newFirst)
	// A source that knows both keys works whichever it signs with; one that
	// knows only the old key cannot verify b, which already signs with the
	// new one: add the new key everywhere before anyone signs with it.
	for _, tc := range []struct {
		key  string
		code int
	}{{both, 0}, {newFirst, 0}, {onlyNew, 0}, {onlyOld, 1}, {write("other", "other-0123456789abcdef0123456789"), 1}} {
		_, errOut, code := runBinary(t, nil, "probe", b.addr, "--count", "1", "--relay.auth-key-file", tc.key, "--relay.name", "a")
		if code != tc.code {
			t.Errorf("probe signing with %s: exit %d, want %d\n%s", filepath.Base(tc.key), code, tc.code, errOut)
		}
		if tc.code == 1 && !strings.Contains(errOut, "(auth)") {
			t.Errorf("forged probe: %s", errOut)
		}
	}
	// Without a key, a keyed chain refuses the probe and says so.
	if _, errOut, code := runBinary(t, nil, "probe", b.addr, "--count", "1", "--relay.name", "a"); code != 1 || !strings.Contains(errOut, "unsigned frame refused") {
		t.Errorf("unsigned probe: exit %d %s", code, errOut)
	}
}

func TestTLSChainWithBinaries(t *testing.T) {
	ca := certtest.New(t, t.TempDir(), "chain")
	tlsArgs := func(name string, clientAuth bool) []string {
		cert, key := ca.Issue(t, name)
		args := []string{"--relay.tls-cert-file", cert, "--relay.tls-key-file", key, "--relay.tls-ca-file", ca.CAFile}
		if clientAuth {
			args = append(args, "--relay.tls-client-auth")
		}
		return args
	}
	z := startHop(t, "z", "", tlsArgs("z", true)...)
	c := startHop(t, "c", z.addr, tlsArgs("c", true)...)
	b := startHop(t, "b", c.addr, tlsArgs("b", true)...)
	out, errOut, code := runBinary(t, nil, append([]string{"probe", b.addr, "--count", "2", "--relay.name", "a", "--output", "json"}, tlsArgs("a", false)...)...)
	if code != 0 || !strings.Contains(out, `"success": true`) {
		t.Fatalf("probe over mutual TLS: exit %d\n%s%s", code, out, errOut)
	}
	// Without a client certificate the first hop refuses.
	_, errOut, code = runBinary(t, nil, "probe", b.addr, "--count", "1", "--relay.name", "a", "--relay.tls-ca-file", ca.CAFile)
	if code != 1 || !strings.Contains(errOut, "(auth)") || !strings.Contains(errOut, "certificate") {
		t.Errorf("probe without a client certificate: exit %d %s", code, errOut)
	}
	// send works over TLS too, byte-exact.
	in := bytes.Repeat([]byte("tls stream "), 50000)
	out, errOut, code = runBinary(t, bytes.NewReader(in), append([]string{"send", "-f", b.addr, "--relay.name", "a"}, tlsArgs("a2", false)...)...)
	if code != 0 || sha256.Sum256([]byte(out)) != sha256.Sum256(in) {
		t.Errorf("send over TLS: exit %d, equal %v\n%s", code, out == string(in), errOut)
	}
}

func TestWebConfigTLSAndBasicAuth(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.New(t, dir, "web")
	cert, key := ca.Issue(t, "exporter")
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webCfg := filepath.Join(dir, "web.yml")
	os.WriteFile(webCfg, []byte(fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  prometheus: %s\n", cert, key, hash)), 0o600)
	z := startHop(t, "z", "")
	ex := startExporter(t, "a", "modules:\n  default:\n    targets: [\"127.0.0.1:*\"]\n", "--web.config.file", webCfg)
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(ca.CAFile)
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(url, user, pass string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	probeURL := "https://" + ex.web + "/probe?target=" + z.addr
	if code, _ := get(probeURL, "", ""); code != 401 {
		t.Errorf("/probe without credentials: %d, want 401", code)
	}
	if code, _ := get(probeURL, "prometheus", "wrong"); code != 401 {
		t.Errorf("/probe with a wrong password: %d, want 401", code)
	}
	if code, body := get(probeURL, "prometheus", "s3cret"); code != 200 || !strings.Contains(body, "probe_success 1") {
		t.Errorf("/probe with credentials over TLS: %d %s", code, body)
	}
	if code, body := get("http://"+ex.web+"/metrics", "prometheus", "s3cret"); code == 200 {
		t.Errorf("plain HTTP answered %d: %s", code, body)
	}
}
