package integration

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/subsegment/subsegment_exporter/internal/testkit/netlab"
	"github.com/subsegment/subsegment_exporter/internal/testkit/nfqdelay"
)

// STAMP end to end, with real processes: a source exporter (prober:
// stamp), the probe and check commands, relays, and our reflector standing
// in for a router (started with nothing but --stamp.listen-address), in
// network namespaces the tests create, with iptables impairing one
// direction or re-marking DSCP in a router between them.

var stampListening = regexp.MustCompile(`msg="STAMP reflector listening"`)

// stampLab is S (the source, 10.88.1.1) - R (a router) - F (the
// reflector, 10.88.2.2).
type stampLab struct {
	s, r, f *netlab.Host
	dir     string
	cfg     string
}

const labReflector = "10.88.2.2:862"

func newSTAMPLab(t *testing.T) *stampLab {
	t.Helper()
	requireTool(t, "curl")
	lab := netlab.New(t)
	l := &stampLab{s: lab.Host("s"), r: lab.Host("r"), f: lab.Host("f"), dir: t.TempDir()}
	lab.Link(l.s, "sr", "10.88.1.1/24", l.r, "rs", "10.88.1.2/24")
	lab.Link(l.r, "rf", "10.88.2.1/24", l.f, "fr", "10.88.2.2/24")
	l.r.Router()
	l.s.Route("add", "default", "via", "10.88.1.2")
	l.f.Route("add", "default", "via", "10.88.2.1")
	return l
}

// inNS starts the binary inside a host; it is stopped by its PID.
func inNS(t *testing.T, h *netlab.Host, name string, args ...string) *proc {
	t.Helper()
	return start(t, name, "ip", append([]string{"netns", "exec", h.NS, binary}, args...)...)
}

// reflector starts our reflector in F as a router's would run: nothing
// but --stamp.listen-address.
func (l *stampLab) reflector(t *testing.T) *proc {
	t.Helper()
	p := inNS(t, l.f, "reflector", "--stamp.listen-address", labReflector)
	p.waitOutput(t, stampListening, 10*time.Second)
	return p
}

// exporter starts the source exporter in S with a stamp module m.
func (l *stampLab) exporter(t *testing.T, module string) {
	t.Helper()
	l.cfg = filepath.Join(l.dir, "subsegment.yml")
	cfg := "modules:\n  m:\n    prober: stamp\n    targets: [\"10.88.2.2:862\"]\n" + module
	if err := os.WriteFile(l.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := inNS(t, l.s, "exporter", "--relay.name", "s", "--config.file", l.cfg, "--web.listen-address", "127.0.0.1:9718")
	p.waitOutput(t, webListening, 10*time.Second)
}

// scrape asks the exporter in S for /probe of the reflector.
func (l *stampLab) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	body := l.s.Run("curl", "-sS", "--max-time", "60", "http://127.0.0.1:9718/probe?module=m&target="+labReflector)
	return seriesOf(t, body)
}

// seriesOf parses an exposition into series text -> value.
func seriesOf(t *testing.T, body string) map[string]float64 {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, body)
	}
	out := map[string]float64{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName()+"="+strconv.Quote(lp.GetValue()))
			}
			v := m.GetGauge().GetValue()
			if mf.GetType().String() == "COUNTER" {
				v = m.GetCounter().GetValue()
			}
			out[name+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

// stampJSON is what the tests read of probe --output json.
type stampJSON struct {
	Success  bool `json:"success"`
	Segments []struct {
		From, To string
		Samples  int
		RTT      struct{ Median float64 } `json:"rtt_seconds"`
		Loss     *struct {
			Sent, Lost, Unknown int
			ByDirection         bool `json:"by_direction"`
			Forward, Return     *struct{ Lost int }
		}
	}
	Failure *struct{ From, To, Reason, Message string }
}

func parseJSON(t *testing.T, out string) stampJSON {
	t.Helper()
	var r stampJSON
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("probe JSON: %v\n%s", err, out)
	}
	return r
}

// Loss on one direction only, dropped by iptables in the namespace that
// receives (one packet in four): the reflector's counters name it, in
// /probe, in probe's JSON and in check's long text, and the other
// direction stays at 0.
func TestStampLossNamedPerDirection(t *testing.T) {
	l := newSTAMPLab(t)
	l.reflector(t)
	l.exporter(t, "    stamp: {packets: 40, interval: 2ms, packet_timeout: 200ms}\n")
	for _, dir := range []string{"forward", "return"} {
		t.Run(dir, func(t *testing.T) {
			host, rule := l.f, []string{"INPUT", "-i", "fr", "-p", "udp", "--dport", "862"}
			if dir == "return" {
				host, rule = l.s, []string{"INPUT", "-i", "sr", "-p", "udp", "--sport", "862"}
			}
			drop := append(rule, "-m", "statistic", "--mode", "nth", "--every", "4", "--packet", "1", "-j", "DROP")
			host.Run(append([]string{"iptables", "-I"}, drop...)...)
			defer host.Run(append([]string{"iptables", "-D"}, drop...)...)
			other := map[string]string{"forward": "return", "return": "forward"}[dir]
			series := func(d string) string {
				return `subsegment_segment_one_way_lost_packets{direction="` + d + `",from="s",to="10.88.2.2"}`
			}

			m := l.scrape(t)
			t.Logf("/probe: %s lost %v, %s lost %v, unknown %v of %v sent", dir, m[series(dir)], other, m[series(other)],
				m[`subsegment_segment_unknown_direction_lost_packets{from="s",to="10.88.2.2"}`], m[`subsegment_segment_packets_sent{from="s",to="10.88.2.2"}`])
			if m[series(dir)] < 8 || m[series(other)] != 0 || m[`probe_success{}`] != 1 {
				t.Errorf("/probe names %v %s and %v %s lost", m[series(dir)], dir, m[series(other)], other)
			}

			out, stderr := l.s.Command(binary, "probe", "stamp://"+labReflector, "--relay.name", "s", "--count", "40", "--interval", "2ms", "--timeout", "200ms", "--output", "json"), ""
			b, err := out.Output()
			if err != nil {
				t.Fatalf("probe: %v %s", err, stderr)
			}
			js := parseJSON(t, string(b))
			loss := js.Segments[0].Loss
			named, otherNamed := loss.Forward, loss.Return
			if dir == "return" {
				named, otherNamed = loss.Return, loss.Forward
			}
			t.Logf("probe JSON: %+v %s %+v %s %+v", *loss, dir, *named, other, *otherNamed)
			if !js.Success || !loss.ByDirection || named.Lost < 8 || otherNamed.Lost != 0 || loss.Lost != named.Lost+loss.Unknown {
				t.Errorf("probe JSON: %s", b)
			}

			text, _ := l.s.Try(binary, "check", labReflector, "--config.file", l.cfg, "--module", "m", "--relay.name", "s")
			re := regexp.MustCompile(`s -> 10\.88\.2\.2: 41 packets, (\d+) lost \([0-9.]+%\): forward (\d+) \([0-9.]+%\), return (\d+) `)
			g := re.FindStringSubmatch(text)
			if g == nil {
				t.Fatalf("check:\n%s", text)
			}
			fwd, ret := atoi(g[2]), atoi(g[3])
			if dir == "return" {
				fwd, ret = ret, fwd
			}
			if fwd < 8 || ret != 0 || !strings.Contains(text, "'s_10.88.2.2_loss_"+map[string]string{"forward": "fwd", "return": "ret"}[dir]+"'=") {
				t.Errorf("check names %s %d, %s %d:\n%s", dir, fwd, other, ret, text)
			}
		})
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// A router re-marks DSCP 46 to 0 on one direction: /probe and check name
// the segment and the direction, and say what arrived.
func TestStampDSCPRemarkedNamed(t *testing.T) {
	l := newSTAMPLab(t)
	l.reflector(t)
	l.exporter(t, "    stamp: {packets: 5, interval: 2ms, dscp: 46}\n")
	for _, tc := range []struct{ dir, out string }{{"none", ""}, {"forward", "rf"}, {"return", "rs"}} {
		t.Run(tc.dir, func(t *testing.T) {
			if tc.out != "" {
				rule := []string{"-t", "mangle", "FORWARD", "-o", tc.out, "-j", "DSCP", "--set-dscp", "0"}
				l.r.Run("iptables", "-t", "mangle", "-A", "FORWARD", "-o", tc.out, "-j", "DSCP", "--set-dscp", "0")
				defer l.r.Run("iptables", "-t", "mangle", "-D", rule[2], rule[3], rule[4], rule[5], rule[6], rule[7], rule[8])
			}
			m := l.scrape(t)
			remarked := func(d string) float64 {
				return m[`subsegment_segment_dscp_remarked{direction="`+d+`",from="s",to="10.88.2.2"}`]
			}
			at := m[`subsegment_segment_dscp{from="s",to="10.88.2.2",where="at_reflector"}`]
			back := m[`subsegment_segment_dscp{from="s",to="10.88.2.2",where="returned"}`]
			t.Logf("%s: re-marked forward %v return %v; at the reflector %v, returned %v", tc.dir, remarked("forward"), remarked("return"), at, back)
			want := map[string][2]float64{"none": {0, 0}, "forward": {1, 0}, "return": {0, 1}}[tc.dir]
			if remarked("forward") != want[0] || remarked("return") != want[1] || m[`probe_success{}`] != 1 {
				t.Errorf("/probe says re-marked forward %v return %v, want %v", remarked("forward"), remarked("return"), want)
			}
			if tc.dir == "forward" && at != 0 || tc.dir != "forward" && at != 46 || tc.dir == "return" && back != 0 || tc.dir != "return" && back != 46 {
				t.Errorf("DSCP at the reflector %v, returned %v", at, back)
			}
			text, _ := l.s.Try(binary, "check", labReflector, "--config.file", l.cfg, "--module", "m", "--relay.name", "s")
			if want := "s -> 10.88.2.2: DSCP sent 46"; !strings.Contains(text, want) || (tc.dir != "none") != strings.Contains(text, "RE-MARKED "+tc.dir) {
				t.Errorf("check:\n%s", text)
			}
		})
	}
}

// A chain a -> b -> c -> r whose last hop is our reflector standing in
// for a router (its own namespace, nothing but --stamp.listen-address),
// c running --forward-to stamp://: 20 ms of delay added at IP level on
// the last link (an NFQUEUE delayer in a router x between c and r, on its
// way out to r) shows on the last segment, and on no other. (In c's own
// OUTPUT chain it would not: the sender's T1 is the kernel's transmit
// stamp, taken after the packet left netfilter.)
func TestChainEndingAtSTAMPReflectorDelay(t *testing.T) {
	lab := netlab.New(t)
	a, b, c, x, r := lab.Host("a"), lab.Host("b"), lab.Host("c"), lab.Host("x"), lab.Host("r")
	lab.Link(a, "ab", "10.89.1.1/24", b, "ba", "10.89.1.2/24")
	lab.Link(b, "bc", "10.89.2.1/24", c, "cb", "10.89.2.2/24")
	lab.Link(c, "cx", "10.89.3.1/24", x, "xc", "10.89.3.2/24")
	lab.Link(x, "xr", "10.89.4.1/24", r, "rx", "10.89.4.2/24")
	x.Router()
	c.Route("add", "10.89.4.0/24", "via", "10.89.3.2")
	r.Route("add", "default", "via", "10.89.4.1")
	refl := inNS(t, r, "reflector r", "--stamp.listen-address", "10.89.4.2:862")
	refl.waitOutput(t, stampListening, 10*time.Second)
	inNS(t, c, "relay c", "--listen", "10.89.2.2:9000", "--forward-to", "stamp://10.89.4.2:862?name=r", "--relay.name", "c").waitOutput(t, relayListening, 10*time.Second)
	inNS(t, b, "relay b", "--listen", "10.89.1.2:9000", "--forward-to", "10.89.2.2:9000", "--relay.name", "b").waitOutput(t, relayListening, 10*time.Second)
	probe := func() map[string]float64 {
		out, err := a.Command(binary, "probe", "10.89.1.2:9000", "--relay.name", "a", "--count", "30", "--interval", "5ms", "--output", "json").Output()
		js := parseJSON(t, string(out))
		if err != nil || !js.Success {
			t.Fatalf("probe: %v %+v\n%s", err, js.Failure, out)
		}
		rtt := map[string]float64{}
		for _, s := range js.Segments {
			rtt[s.From+">"+s.To] = s.RTT.Median
		}
		if len(rtt) != 3 || rtt["c>r"] == 0 {
			t.Fatalf("segments %v", rtt)
		}
		return rtt
	}
	before := probe()
	queue := uint16(1000 + rand.IntN(60000))
	const added = 20 * time.Millisecond
	d, err := nfqdelay.Start(nfqdelay.Config{Queue: queue, Delay: added, Namespace: x.NS})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rule := []string{"FORWARD", "-o", "xr", "-p", "udp", "--dport", "862", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(queue))}
	x.Run(append([]string{"iptables", "-A"}, rule...)...)
	after := probe()
	x.Run(append([]string{"iptables", "-D"}, rule...)...)
	grew := time.Duration((after["c>r"] - before["c>r"]) * float64(time.Second))
	t.Logf("c -> r median %.3f ms before, %.3f ms with %v added at IP level: +%v (a -> b %.3f -> %.3f ms, b -> c %.3f -> %.3f ms); delayer %+v",
		before["c>r"]*1e3, after["c>r"]*1e3, added, grew.Round(time.Microsecond), before["a>b"]*1e3, after["a>b"]*1e3, before["b>c"]*1e3, after["b>c"]*1e3, d.Stats())
	if grew < added*95/100 || grew > 2*added {
		t.Errorf("the last segment grew by %v with %v added", grew, added)
	}
	for _, s := range []string{"a>b", "b>c"} {
		if after[s] > after["c>r"]/4 {
			t.Errorf("segment %s took %.3f ms, a share of the delay added on c -> r (%.3f ms)", s, after[s]*1e3, after["c>r"]*1e3)
		}
	}

	// Every STAMP packet dropped on the last link: the probe fails on
	// c -> r, reason timeout, and c counts the lost packets.
	drop := []string{"FORWARD", "-o", "xr", "-p", "udp", "--dport", "862", "-j", "DROP"}
	x.Run(append([]string{"iptables", "-A"}, drop...)...)
	out, _ := a.Command(binary, "probe", "10.89.1.2:9000", "--relay.name", "a", "--count", "2", "--timeout", "300ms", "--output", "json").Output()
	x.Run(append([]string{"iptables", "-D"}, drop...)...)
	js := parseJSON(t, string(out))
	m := seriesOf(t, c.Run("curl", "-sS", "--max-time", "10", "http://127.0.0.1:9717/metrics"))
	t.Logf("dropped: %+v; c counted %v reflected, %v lost", js.Failure, m[`subsegment_relay_stamp_packets_total{result="reflected"}`], m[`subsegment_relay_stamp_packets_total{result="lost"}`])
	if js.Success || js.Failure == nil || js.Failure.From != "c" || js.Failure.To != "r" || js.Failure.Reason != "timeout" || !strings.Contains(js.Failure.Message, "was lost") ||
		m[`subsegment_relay_stamp_packets_total{result="lost"}`] != 1 || m[`subsegment_relay_stamp_packets_total{result="reflected"}`] != 62 {
		t.Errorf("a lost STAMP packet:\n%s", out)
	}
}

// Authenticated STAMP with a key the reflector does not have: the
// reflector refuses every packet and counts them (reason auth), the
// source's /probe fails with reason auth and says why; with the right
// key the same module works.
func TestStampAuthWrongKey(t *testing.T) {
	dir := t.TempDir()
	key := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	right, wrong := key("right", "a key the reflector has, 32 bytes"), key("wrong", "a key the reflector lacks, 32 b")
	port := freeUDPPort(t)
	refl := start(t, "reflector", binary, "--stamp.listen-address", "127.0.0.1:"+itoa(port), "--relay.auth-key-file", right, "--web.listen-address", "127.0.0.1:0")
	refl.waitOutput(t, stampListening, 10*time.Second)
	reflWeb := refl.waitOutput(t, webListening, 10*time.Second)[1]
	cfg := "modules:\n  m:\n    prober: stamp\n    targets: [\"127.0.0.1:*\"]\n    stamp: {packets: 3, interval: 1ms, packet_timeout: 100ms, authenticated: true}\n"
	target := "127.0.0.1:" + itoa(port)
	for _, tc := range []struct {
		key string
		ok  bool
	}{{wrong, false}, {right, true}} {
		before := seriesOf(t, httpGet(t, "http://"+reflWeb+"/metrics"))[`subsegment_stamp_refused_packets_total{reason="auth"}`]
		ex := startExporter(t, "a", cfg, "--relay.auth-key-file", tc.key)
		body := httpGet(t, "http://"+ex.web+"/probe?module=m&target="+target)
		m := seriesOf(t, body)
		after := seriesOf(t, httpGet(t, "http://"+reflWeb+"/metrics"))[`subsegment_stamp_refused_packets_total{reason="auth"}`]
		failed := m[`subsegment_probe_failed_segment_info{from="a",reason="auth",to="127.0.0.1"}`]
		t.Logf("key %s: probe_success %v, failed for auth %v; the reflector refused %v packets for auth", filepath.Base(tc.key), m[`probe_success{}`], failed, after-before)
		if tc.ok != (m[`probe_success{}`] == 1) || tc.ok != (failed == 0) || tc.ok != (after == before) || !tc.ok && after-before != 4 {
			t.Errorf("key %s:\n%s", tc.key, body)
		}
		if !tc.ok {
			out, _, code := runBinary(t, nil, "check", target, "--relay.name", "a", "--relay.auth-key-file", tc.key, "--config.file", writeConfig(t, cfg), "--module", "m")
			if code != 2 || !strings.Contains(out, "(auth)") || !strings.Contains(out, "another key") {
				t.Errorf("check with the wrong key: exit %d\n%s", code, out)
			}
		}
	}
}

func writeConfig(t *testing.T, cfg string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), fmt.Sprintf("c%d.yml", rand.Int()))
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// SLAs and SNMP context by the reflector's name: a reflector's residence
// over its SLA (sla.hops) and its segment over its rtt SLA get the
// context of the agent the module names for it, as a relay's would.
func TestStampSLAAndSNMPContext(t *testing.T) {
	agent := startSNMPD(t, "7.25", "3.10")
	port := freeUDPPort(t)
	refl := start(t, "reflector", binary, "--stamp.listen-address", "127.0.0.1:"+itoa(port), "--web.listen-address", "127.0.0.1:0")
	refl.waitOutput(t, stampListening, 10*time.Second)
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  m:
    prober: stamp
    probes: 3
    interval: 1ms
    targets: ["127.0.0.1:*"]
    stamp: {name: r1}
    sla:
      segments: [{from: a, to: r1, rtt: 1ns}]
      hops: {r1: 1ns}
    snmp:
      hops: {r1: {target: %q, auth: v2}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
auths:
  v2: {version: 2, community: public}
`, agent.addr))
	body := httpGet(t, "http://"+ex.web+"/probe?module=m&target=127.0.0.1:"+itoa(port))
	for _, want := range []string{
		`subsegment_segment_sla_exceeded{from="a",to="r1"} 1`,
		`subsegment_hop_sla_exceeded{hop="r1"} 1`,
		`subsegment_sla_violation_info{from="a",hop="r1",load1="7.25",source="snmp",to="r1"} 1`,
		`subsegment_sla_violation_info{from="",hop="r1",load1="7.25",source="snmp",to=""} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/probe lacks %s:\n%s", want, body)
		}
	}
}
