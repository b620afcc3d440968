package integration

import (
	"context"
	binenc "encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netlab"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// stampKeyFile writes a key file of the chain's format.
func stampKeyFile(t *testing.T, key string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// tamperingReflector answers authenticated STAMP with the chain's key
// (the base packets verify) and then changes the reply's TLVs as someone
// on the path without the key would: the DSCP the reflector saw becomes
// 46, and the HMAC TLV is broken. It stops with the test.
func tamperingReflector(t *testing.T, key string) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	auth := stamp.NewAuth(frame.Keys{[]byte(key)})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for seq := uint32(0); ; seq++ {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pkt := buf[:n]
			req := stamp.Request{Mode: stamp.Authenticated, Auth: auth, RxTime: time.Now().UnixNano(), TTL: 64, Src: from,
				Dst: netip.MustParseAddrPort(c.LocalAddr().String()), Stateful: true, ReflectorSeq: seq, RxCount: seq + 1, TxCount: seq + 1}
			var rep stamp.Reply
			if stamp.Reflect(pkt, &req, &rep) != nil {
				continue
			}
			stamp.Finish(pkt, &rep, time.Now().UnixNano())
			for off := stamp.AuthBaseLen; off+stamp.TLVHeaderLen <= n; off += stamp.TLVHeaderLen + int(binenc.BigEndian.Uint16(pkt[off+2:])) {
				if stamp.TLVType(pkt[off+1]) == stamp.TLVClassOfService {
					cos, _ := stamp.ParseClassOfService(pkt[off+4 : off+8])
					cos.DSCP2 = 46
					cos.Put(pkt[off+4 : off+8])
				}
			}
			pkt[n-1] ^= 0xff // the HMAC TLV's last octet
			_, _ = c.WriteToUDPAddrPort(pkt, from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String()
}

// An authenticated module whose replies' TLVs someone without the key
// changed (review finding 1): /probe uses the times, not the TLVs — no
// DSCP at the reflector, no re-marking, no loss per direction — and says
// how many replies' TLVs it did not use.
func TestStampTamperedTLVsUnused(t *testing.T) {
	const key = "the chain's key, 32 bytes long!!"
	target := tamperingReflector(t, key)
	cfg := "modules:\n  m:\n    prober: stamp\n    targets: [\"127.0.0.1:*\"]\n    stamp: {packets: 3, interval: 1ms, packet_timeout: 500ms, authenticated: true, dscp: 10}\n"
	ex := startExporter(t, "a", cfg, "--relay.auth-key-file", stampKeyFile(t, key))
	body := httpGet(t, "http://"+ex.web+"/probe?module=m&target="+target)
	m := seriesOf(t, body)
	if m[`probe_success{}`] != 1 {
		t.Fatalf("the base packets verify: the probe works\n%s", body)
	}
	for _, absent := range []string{"subsegment_segment_dscp{", "subsegment_segment_dscp_remarked{", "subsegment_segment_one_way_lost_packets{"} {
		for s := range m {
			if strings.HasPrefix(s, absent) && !strings.Contains(s, `where="sent"`) && !strings.Contains(s, `where="returned"`) {
				t.Errorf("/probe has %s = %v from TLVs whose HMAC TLV failed", s, m[s])
			}
		}
	}
	if got := m[`subsegment_segment_bad_replies{from="a",reason="tlv_unverified",to="127.0.0.1"}`]; got != 4 {
		t.Errorf("replies with unverified TLVs: %v, want 4\n%s", got, body)
	}
}

// probe and check stamp:// measure authenticated STAMP when the process
// has --relay.auth-key-file (--stamp.auth auto), unauthenticated with
// --stamp.auth=off; against an authenticated reflector an unauthenticated
// sender's silence is explained, not blamed on the path alone (review
// finding 8).
func TestStampProbeAndCheckUseTheKey(t *testing.T) {
	key := stampKeyFile(t, "the chain's key, 32 bytes long!!")
	port := freeUDPPort(t)
	refl := start(t, "reflector", binary, "--stamp.listen-address", "127.0.0.1:"+itoa(port), "--relay.auth-key-file", key, "--web.listen-address", "127.0.0.1:0")
	refl.waitOutput(t, stampListening, 10*time.Second)
	reflWeb := refl.waitOutput(t, webListening, 10*time.Second)[1]
	target := "stamp://127.0.0.1:" + itoa(port) + "?name=r1"
	out, stderr, code := runBinary(t, nil, "probe", target, "--relay.name", "a", "--count", "3", "--timeout", "1s", "--relay.auth-key-file", key, "--output", "json")
	if js := parseJSON(t, out); code != 0 || !js.Success {
		t.Errorf("probe with the key: exit %d %+v\n%s", code, js.Failure, stderr)
	}
	out, _, code = runBinary(t, nil, "check", target, "--relay.name", "a", "--timeout", "5s", "--relay.auth-key-file", key)
	if code != 0 {
		t.Errorf("check with the key: exit %d\n%s", code, out)
	}
	refused := seriesOf(t, httpGet(t, "http://"+reflWeb+"/metrics"))
	if refused[`subsegment_stamp_refused_packets_total{reason="short"}`]+refused[`subsegment_stamp_refused_packets_total{reason="auth"}`] != 0 {
		t.Errorf("the reflector refused packets of senders with its key: %v short, %v auth", refused[`subsegment_stamp_refused_packets_total{reason="short"}`], refused[`subsegment_stamp_refused_packets_total{reason="auth"}`])
	}
	// Unauthenticated (--stamp.auth=off, or no key): the reflector refuses
	// every packet (short of the authenticated base), and the failure
	// says that this may be why.
	for _, args := range [][]string{{"--stamp.auth", "off", "--relay.auth-key-file", key}, nil} {
		out, _, code = runBinary(t, nil, append([]string{"probe", target, "--relay.name", "a", "--count", "1", "--timeout", "200ms", "--output", "json"}, args...)...)
		js := parseJSON(t, out)
		if code != 1 || js.Failure == nil || js.Failure.Reason != "timeout" || !strings.Contains(js.Failure.Message, "an authenticated one every unauthenticated packet") {
			t.Errorf("unauthenticated probe %v of an authenticated reflector: exit %d %+v", args, code, js.Failure)
		}
	}
	if got := seriesOf(t, httpGet(t, "http://"+reflWeb+"/metrics"))[`subsegment_stamp_refused_packets_total{reason="short"}`]; got != 4 {
		t.Errorf("the reflector counted %v short packets, want 4 (2 probes, a warm-up and a packet each)", got)
	}
	if _, stderr, code := runBinary(t, nil, "probe", target, "--stamp.auth", "on"); code != 2 || !strings.Contains(stderr, "--relay.auth-key-file") {
		t.Errorf("--stamp.auth=on without a key: exit %d %s", code, stderr)
	}
}

// --config.check refuses broken stamp modules with file:line, what and
// what to do, knowing the process's flags (review finding 6): packet
// sizes by the stamp package's own rule, and authenticated: true only
// with --relay.auth-key-file.
func TestStampConfigCheck(t *testing.T) {
	key := stampKeyFile(t, "the chain's key, 32 bytes long!!")
	for _, tc := range []struct {
		stamp, want string
		withKey     bool
	}{
		{"authenticated: true", ":6: modules.m.stamp.authenticated: authenticated STAMP signs with the chain's key", false},
		{"packet_bytes: 50", ":6: modules.m.stamp.packet_bytes: STAMP packet size 50: unauthenticated mode with these TLVs needs at least 76 octets", false},
		{"packet_bytes: 100\n      authenticated: true", ":6: modules.m.stamp.packet_bytes: STAMP packet size 100: authenticated mode with these TLVs needs at least 164 octets", true},
		{"packet_bytes: 78", ":6: modules.m.stamp.packet_bytes: STAMP packet size 78: 2 octets above the 76", false},
		{"authenticated: true", "", true},
		{"packet_bytes: 80", "", false},
	} {
		path := writeConfig(t, "modules:\n  m:\n    prober: stamp\n    targets: [\"127.0.0.1:*\"]\n    stamp:\n      "+tc.stamp+"\n")
		args := []string{"--config.check", "--config.file", path}
		if tc.withKey {
			args = append(args, "--relay.auth-key-file", key)
		}
		_, stderr, code := runBinary(t, nil, args...)
		if tc.want == "" && code != 0 || tc.want != "" && (code != 1 || !strings.Contains(stderr, path+tc.want)) {
			t.Errorf("stamp: {%s} with key %v: exit %d\n%s", tc.stamp, tc.withKey, code, stderr)
		}
	}
}

// One host floods a real reflector with new sessions (review finding 3,
// the reviewer's ssidflood at 100 sessions): another sender is still
// answered — statelessly while the table is full, with a session of its
// own when the flooding host is held to its share — and the reflector's
// counters say which.
func TestStampSessionFlood(t *testing.T) {
	for _, tc := range []struct {
		perAddress string
		byDir      bool
		reason     string
	}{{"100", false, "sessions"}, {"10", true, "address"}} {
		port := freeUDPPort(t)
		refl := start(t, "reflector", binary, "--stamp.listen-address", "127.0.0.1:"+itoa(port), "--stamp.max-sessions", "100",
			"--stamp.max-sessions-per-address", tc.perAddress, "--stamp.session-timeout", "2s", "--web.listen-address", "127.0.0.1:0")
		refl.waitOutput(t, stampListening, 10*time.Second)
		web := refl.waitOutput(t, webListening, 10*time.Second)[1]
		// 100 SSIDs from 127.0.0.2, each renewed well within the idle
		// timeout, until the probe is done.
		flood, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		flooded := make(chan struct{})
		go func() {
			defer close(flooded)
			to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
			pkt := make([]byte, stamp.UnauthBaseLen)
			for round := 0; round < 1000; round++ {
				for ssid := 1; ssid <= 100; ssid++ {
					binenc.BigEndian.PutUint16(pkt[14:], uint16(ssid))
					_, _ = flood.WriteToUDP(pkt, to)
				}
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
		eventually(t, 10*time.Second, "the flood's sessions", func() error {
			m := seriesOf(t, httpGet(t, "http://"+web+"/metrics"))
			if m[`subsegment_stamp_sessions{}`] < 10 {
				return fmt.Errorf("%v sessions", m[`subsegment_stamp_sessions{}`])
			}
			return nil
		})
		out, stderr, code := runBinary(t, nil, "probe", "stamp://127.0.0.1:"+itoa(port)+"?name=r1", "--relay.name", "a", "--count", "3", "--interval", "1ms", "--timeout", "1s", "--output", "json")
		close(stop)
		<-flooded
		flood.Close()
		js := parseJSON(t, out)
		m := seriesOf(t, httpGet(t, "http://"+web+"/metrics"))
		t.Logf("max %s sessions per address: probe %v, loss %+v; reflector: %v sessions, stateless %v (sessions) %v (address)", tc.perAddress, js.Success, js.Segments[0].Loss,
			m[`subsegment_stamp_sessions{}`], m[`subsegment_stamp_stateless_replies_total{reason="sessions"}`], m[`subsegment_stamp_stateless_replies_total{reason="address"}`])
		if code != 0 || !js.Success || js.Segments[0].Loss == nil || js.Segments[0].Loss.ByDirection != tc.byDir {
			t.Errorf("max %s sessions per address: exit %d %+v\n%s", tc.perAddress, code, js.Failure, stderr)
		}
		if m[`subsegment_stamp_stateless_replies_total{reason="`+tc.reason+`"}`] == 0 {
			t.Errorf("the reflector counted no stateless answers for %s", tc.reason)
		}
		refl.stop(t)
	}
}

// droppingReflector reflects STAMP (our reflector's rules, stamp.Reflect)
// except the packets drop says to lose; it counts what it saw.
func droppingReflector(t *testing.T, drop func(n int) bool) (string, *atomic.Int64) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var seen atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for n := 0; ; n++ {
			k, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			seen.Add(1)
			if drop(n) {
				continue
			}
			req := stamp.Request{Mode: stamp.Unauthenticated, RxTime: time.Now().UnixNano(), TTL: 64, Src: from, Dst: netip.MustParseAddrPort(c.LocalAddr().String())}
			var rep stamp.Reply
			if stamp.Reflect(buf[:k], &req, &rep) != nil {
				continue
			}
			stamp.Finish(buf[:k], &rep, time.Now().UnixNano())
			_, _ = c.WriteToUDPAddrPort(buf[:k], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String(), &seen
}

// A relay's STAMP next hop is shared by its connections, and none of them
// holds it (review finding 4): while one connection's probe waits out a
// long budget for a lost packet, another connection's probes are
// measured at once, and only the lost packet counts as lost.
func TestStampNextNoTurnHeld(t *testing.T) {
	refl, seen := droppingReflector(t, func(n int) bool { return n == 0 })
	c := startHop(t, "c", "stamp://"+refl+"?name=r1")
	holder := start(t, "probe holding a lost packet", binary, "probe", c.addr, "--relay.name", "x", "--count", "1", "--timeout", "20s")
	eventually(t, 10*time.Second, "the first packet at the reflector", func() error {
		if seen.Load() == 0 {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	started := time.Now()
	out, stderr, code := runBinary(t, nil, "probe", c.addr, "--relay.name", "a", "--count", "3", "--interval", "1ms", "--timeout", "2s", "--output", "json")
	took := time.Since(started)
	js := parseJSON(t, out)
	if code != 0 || !js.Success {
		t.Fatalf("probes on another connection while one waits for a lost packet: exit %d %+v\n%s", code, js.Failure, stderr)
	}
	m := seriesOf(t, httpGet(t, "http://"+c.web+"/metrics"))
	t.Logf("a's probes took %v while x's packet was lost; c counted %v reflected, %v lost", took.Round(time.Millisecond),
		m[`subsegment_relay_stamp_packets_total{result="reflected"}`], m[`subsegment_relay_stamp_packets_total{result="lost"}`])
	if m[`subsegment_relay_stamp_packets_total{result="reflected"}`] != 4 || m[`subsegment_relay_stamp_packets_total{result="lost"}`] != 0 {
		t.Errorf("c's counts while x still waits: want 4 reflected, none lost yet")
	}
	holder.kill()
}

// A chain ending at a STAMP reflector (review finding 11): the
// reflector's hop reports no wait — no measured-looking 0 in /probe or
// JSON — and is marked stamp, as a reflector measured directly is.
func TestStampReflectorHopHasNoWait(t *testing.T) {
	port := freeUDPPort(t)
	refl := start(t, "reflector", binary, "--stamp.listen-address", "127.0.0.1:"+itoa(port), "--web.listen-address", "127.0.0.1:0")
	refl.waitOutput(t, stampListening, 10*time.Second)
	c := startHop(t, "c", "stamp://127.0.0.1:"+itoa(port)+"?name=pe1")
	out, stderr, code := runBinary(t, nil, "probe", c.addr, "--relay.name", "a", "--count", "3", "--interval", "1ms", "--output", "json")
	var js struct {
		Success bool
		Hops    []struct {
			Name  string
			Wait  *struct{ Median float64 } `json:"wait_seconds"`
			STAMP bool                      `json:"stamp"`
		}
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || code != 0 || !js.Success || len(js.Hops) != 3 {
		t.Fatalf("probe: exit %d %v\n%s%s", code, err, out, stderr)
	}
	for _, h := range js.Hops {
		reflector := h.Name == "pe1"
		if h.STAMP != reflector || (h.Wait == nil) != reflector {
			t.Errorf("hop %s: stamp %v, wait %+v (a reflector: stamp, no wait; a relay: its wait)", h.Name, h.STAMP, h.Wait)
		}
	}
	ex := startExporter(t, "a", "modules:\n  m:\n    targets: [\"127.0.0.1:*\"]\n    probes: 3\n    interval: 1ms\n")
	m := seriesOf(t, httpGet(t, "http://"+ex.web+"/probe?module=m&target="+c.addr))
	if _, ok := m[`subsegment_hop_wait_seconds{hop="pe1"}`]; ok || m[`probe_success{}`] != 1 {
		t.Errorf("/probe: success %v, pe1's wait %v (want none)", m[`probe_success{}`], m[`subsegment_hop_wait_seconds{hop="pe1"}`])
	}
	if _, ok := m[`subsegment_hop_wait_seconds{hop="c"}`]; !ok {
		t.Errorf("/probe lacks the relay c's wait")
	}
}

// Port 862 as the packaged units run the binary (review finding 12), in a
// network namespace of the test's own, as the unprivileged user nobody
// with the capability sets systemd gives the process (setpriv): the
// units' own CapabilityBoundingSet= and AmbientCapabilities= lines, then
// a drop-in's. The shipped units alone cannot bind 862, and the error
// says both settings that make it work, the example drop-in and an
// unprivileged port; AmbientCapabilities=CAP_NET_BIND_SERVICE alone (what
// the documentation used to advise) cannot either — systemd drops an
// ambient capability outside the bounding set, and the kernel refuses to
// raise it; with the package's example drop-in the reflector listens on
// 862 with that capability alone, and answers.
func TestStampPort862Capabilities(t *testing.T) {
	setpriv := requireTool(t, "setpriv")
	unit := unitCaps(t, nil, "../packaging/systemd/subsegment-relay.service")
	if len(unit.bounding) != 0 || len(unit.ambient) != 0 {
		t.Fatalf("the relay's unit gives capabilities %+v: this test models an empty set", unit)
	}
	h := netlab.New(t).Host("cap")
	// run starts the binary as the unit would, with the capability sets
	// c, and returns what it printed when it exits (bounded).
	run := func(c caps) string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "ip", c.argv(h, setpriv)...)
		cmd.WaitDelay = time.Second
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("%+v: still running after 20s (%v):\n%s", c, err, out)
		}
		return string(out)
	}

	// The units as shipped.
	out := run(unit)
	for _, want := range []string{"listen on 127.0.0.1:862", "permission denied", "not even in this process's capability bounding set",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "examples/stamp-port-862.conf", ":8620"} {
		if !strings.Contains(out, want) {
			t.Errorf("binding 862 as the units run it: the error does not say %q:\n%s", want, out)
		}
	}

	// What the documentation used to advise: the ambient line alone. As
	// systemd applies it (the ambient set masked by the bounding set), the
	// bind is refused and the error says why; asked of the kernel as is,
	// setpriv cannot raise it.
	ambientOnly := unitCaps(t, []string{"AmbientCapabilities=CAP_NET_BIND_SERVICE"}, "../packaging/systemd/subsegment-relay.service")
	if len(ambientOnly.ambient) != 0 {
		t.Fatalf("systemd's rule: an ambient capability outside the bounding set is dropped, got %+v", ambientOnly)
	}
	if out := run(ambientOnly); !strings.Contains(out, "permission denied") || !strings.Contains(out, "AmbientCapabilities= alone cannot grant it") {
		t.Errorf("AmbientCapabilities= alone, as systemd applies it: want the bind refused, saying why:\n%s", out)
	}
	raw := caps{ambient: []string{"net_bind_service"}}
	if out := run(raw); strings.Contains(out, "STAMP reflector listening") || !strings.Contains(out, "not permitted") {
		t.Errorf("an ambient capability outside the bounding set: want it refused:\n%s", out)
	}

	// With the package's example drop-in: it listens on 862, with
	// CAP_NET_BIND_SERVICE alone, and answers a STAMP sender.
	dropIn := unitCaps(t, nil, "../packaging/systemd/subsegment-relay.service", "../packaging/systemd/subsegment-relay.service.d/stamp-port-862.conf")
	if !slices.Equal(dropIn.bounding, []string{"net_bind_service"}) || !slices.Equal(dropIn.ambient, []string{"net_bind_service"}) {
		t.Fatalf("stamp-port-862.conf gives %+v, want CAP_NET_BIND_SERVICE in both sets", dropIn)
	}
	refl := start(t, "reflector on 862", "ip", dropIn.argv(h, setpriv)...)
	refl.waitOutput(t, regexp.MustCompile(`msg="STAMP reflector listening" address=127\.0\.0\.1:862 `), 10*time.Second)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", refl.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nUid:\t65534\t", "\nCapEff:\t0000000000000400\n", "\nCapBnd:\t0000000000000400\n", "\nCapAmb:\t0000000000000400\n"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("the reflector under the drop-in: /proc status lacks %q:\n%s", want, status)
		}
	}
	probe := h.Command(binary, "probe", "stamp://127.0.0.1:862?name=r", "--relay.name", "a", "--count", "3", "--interval", "1ms", "--timeout", "2s", "--output", "json")
	var stderr strings.Builder
	probe.Stderr = &stderr
	js, err := probe.Output()
	var res struct{ Success bool }
	if jerr := json.Unmarshal(js, &res); err != nil || jerr != nil || !res.Success {
		t.Errorf("probe of the reflector on 862: %v %v\n%s%s", err, jerr, js, stderr.String())
	}
}

// caps are the capability sets systemd gives a unit's process, as setpriv
// names them (net_bind_service).
type caps struct{ bounding, ambient []string }

// argv runs the binary as a STAMP reflector on 127.0.0.1:862 in h, as the
// user nobody with the sets c (ambient capabilities are inheritable too).
func (c caps) argv(h *netlab.Host, setpriv string) []string {
	set := func(names []string) string {
		s := "-all"
		for _, n := range names {
			s += ",+" + n
		}
		return s
	}
	return []string{"netns", "exec", h.NS, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
		"--bounding-set=" + set(c.bounding), "--inh-caps=" + set(c.ambient), "--ambient-caps=" + set(c.ambient), "--",
		binary, "--stamp.listen-address", "127.0.0.1:862", "--web.listen-address", "127.0.0.1:0"}
}

// unitCaps reads the CapabilityBoundingSet= and AmbientCapabilities=
// lines of a unit and its drop-ins in order, then extra lines, as systemd
// merges them (an empty assignment resets, others add), and drops from
// the ambient set what the bounding set lacks, as systemd does (v246 on).
func unitCaps(t *testing.T, extra []string, files ...string) caps {
	t.Helper()
	var lines []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, strings.Split(string(b), "\n")...)
	}
	var c caps
	for _, line := range append(lines, extra...) {
		key, value, ok := strings.Cut(strings.TrimSpace(line), "=")
		var set *[]string
		switch {
		case !ok:
			continue
		case key == "CapabilityBoundingSet":
			set = &c.bounding
		case key == "AmbientCapabilities":
			set = &c.ambient
		default:
			continue
		}
		if value == "" {
			*set = nil
		}
		for _, name := range strings.Fields(value) {
			lower, found := strings.CutPrefix(strings.ToLower(name), "cap_")
			if !found || strings.HasPrefix(name, "~") {
				t.Fatalf("%s: %q: this test reads plain capability lists only", key, value)
			}
			if !slices.Contains(*set, lower) {
				*set = append(*set, lower)
			}
		}
	}
	c.ambient = slices.DeleteFunc(c.ambient, func(n string) bool { return !slices.Contains(c.bounding, n) })
	return c
}
