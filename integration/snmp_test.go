package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/snmp"
)

// snmpAgent is a real snmpd on a loopback UDP port, with a v2c community
// and a v3 authPriv user, serving load values the test controls.
type snmpAgent struct {
	*proc
	addr string
}

func startSNMPD(t *testing.T, load1, load5 string) *snmpAgent {
	t.Helper()
	bin := requireTool(t, "snmpd", "/usr/sbin/snmpd")
	dir := t.TempDir()
	port := freeUDPPort(t)
	addr := "127.0.0.1:" + itoa(port)
	conf := fmt.Sprintf(`agentAddress udp:%s
rocommunity public 127.0.0.1
createUser v3user SHA-256 "authpass123" AES "privpass123"
rouser v3user priv
override .1.3.6.1.4.1.2021.10.1.3.1 octet_str "%s"
override .1.3.6.1.4.1.2021.10.1.3.2 octet_str "%s"
`, addr, load1, load5)
	confPath := filepath.Join(dir, "snmpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "persist"), 0o700)
	t.Setenv("SNMP_PERSISTENT_DIR", filepath.Join(dir, "persist"))
	t.Setenv("MIBS", "")
	p := start(t, "snmpd", bin, "-f", "-Lo", "-C", "-c", confPath, "-p", filepath.Join(dir, "snmpd.pid"))
	a := &snmpAgent{proc: p, addr: addr}
	// Ready when it answers a v2c get.
	auth := &config.Auth{Version: 2, Community: "public"}
	eventually(t, 15*time.Second, "snmpd answering on "+addr, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		pdus, err := snmp.GoSNMP{}.Get(ctx, snmp.Target{Hop: "c", Address: addr, Auth: auth}, []string{"1.3.6.1.4.1.2021.10.1.3.1"}, snmp.Attempt{Timeout: 300 * time.Millisecond})
		if err != nil {
			return err
		}
		if len(pdus) != 1 || pdus[0].Missing != "" {
			return fmt.Errorf("answer %+v", pdus)
		}
		return nil
	})
	return a
}

func TestSNMPContextOnSLAViolation(t *testing.T) {
	agent := startSNMPD(t, "7.25", "3.10")
	// Relays attach their own load in band too.
	b, _, _ := slowChainProcs(t, 10*time.Millisecond, "--inband.var", "load1")
	cfg := fmt.Sprintf(`
modules:
  v2c:
    timeout: 5s
    probes: 3
    interval: 10ms
    targets: ["127.0.0.1:*"]
    sla:
      default: 100ms
      segments:
        - {from: b, to: c, rtt: 5ms}
    snmp:
      query: far_end
      timeout: 500ms
      hops:
        c: {target: "%[1]s", auth: v2}
        z: {target: "%[1]s", auth: v2}
      variables:
        - {name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}
        - {name: load5, oid: 1.3.6.1.4.1.2021.10.1.3.2}
      playbooks:
        - segment: {from: b, to: c}
          levels:
            - {above: 1x, variables: [load1]}
            - {above: 3x, variables: [load5]}
  v3:
    targets: ["127.0.0.1:*"]
    sla: {segments: [{from: b, to: c, rtt: 5ms}]}
    snmp:
      hops: {c: {target: "%[1]s", auth: v3_good}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
  wrongpass:
    targets: ["127.0.0.1:*"]
    sla: {segments: [{from: b, to: c, rtt: 5ms}]}
    snmp:
      timeout: 300ms
      retries: 0
      hops: {c: {target: "%[1]s", auth: v3_bad}}
      variables: [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]
  inband:
    targets: ["127.0.0.1:*"]
    inband: on_violation
    sla: {segments: [{from: b, to: c, rtt: 5ms}]}
auths:
  v2: {version: 2, community: public}
  v3_good: {version: 3, security_level: authPriv, username: v3user, auth_protocol: SHA256, password: authpass123, priv_protocol: AES, priv_password: privpass123}
  v3_bad: {version: 3, security_level: authPriv, username: v3user, auth_protocol: SHA256, password: wrongpass123, priv_protocol: AES, priv_password: privpass123}
`, agent.addr)
	ex := startExporter(t, "a", cfg)
	probe := func(module string) string {
		return httpGet(t, "http://"+ex.web+"/probe?module="+module+"&target="+b.addr)
	}

	t.Run("v2c", func(t *testing.T) {
		body := probe("v2c")
		for _, want := range []string{
			"probe_success 1",
			`subsegment_segment_sla_exceeded{from="b",to="c"} 1`,
			`subsegment_hop_snmp_value{hop="c",name="load1",source="snmp"} 7.25`,
			`subsegment_snmp_up{hop="c"} 1`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("answer lacks %q:\n%s", want, body)
			}
		}
		// The load as a label, for the violating segment only.
		info := regexp.MustCompile(`subsegment_sla_violation_info\{[^}]*\} 1`).FindAllString(body, -1)
		if len(info) != 1 || !strings.Contains(info[0], `from="b"`) || !strings.Contains(info[0], `to="c"`) || !strings.Contains(info[0], `hop="c"`) ||
			!strings.Contains(info[0], `load1="7.25"`) || !strings.Contains(info[0], `source="snmp"`) {
			t.Errorf("violation info %v, want one for b -> c with load1=\"7.25\"", info)
		}
		// b -> c is ~20ms against 5ms: over 3x, so load5 is asked too.
		if !strings.Contains(body, `subsegment_hop_snmp_value{hop="c",name="load5",source="snmp"} 3.1`) {
			t.Errorf("playbook level above 3x did not add load5:\n%s", body)
		}
		// Segments within their SLA get no context: z is never asked.
		if strings.Contains(body, `subsegment_hop_snmp_value{hop="z"`) || strings.Contains(body, `subsegment_snmp_up{hop="z"`) || strings.Contains(body, `from="a",hop=`) {
			t.Errorf("context for segments within their SLA:\n%s", body)
		}
	})
	t.Run("v3 authPriv", func(t *testing.T) {
		body := probe("v3")
		if !strings.Contains(body, `subsegment_hop_snmp_value{hop="c",name="load1",source="snmp"} 7.25`) || !strings.Contains(body, `subsegment_snmp_up{hop="c"} 1`) {
			t.Errorf("v3 authPriv answer:\n%s", body)
		}
	})
	t.Run("wrong v3 password", func(t *testing.T) {
		body := probe("wrongpass")
		if !strings.Contains(body, "probe_success 1") || !strings.Contains(body, `subsegment_snmp_up{hop="c"} 0`) || strings.Contains(body, "subsegment_hop_snmp_value") {
			t.Errorf("an SNMP auth failure must not fail the probe, and must show as snmp_up 0:\n%s", body)
		}
		metrics := httpGet(t, "http://"+ex.web+"/metrics")
		if !regexp.MustCompile(`subsegment_snmp_errors_total\{hop="c",reason="auth"\} [1-9]`).MatchString(metrics) {
			t.Errorf("/metrics lacks the auth error:\n%s", grepLines(metrics, "snmp"))
		}
		debug := httpGet(t, "http://"+ex.web+"/probe?debug=true&module=wrongpass&target="+b.addr)
		if !strings.Contains(debug, "error (auth)") || strings.Contains(debug, "wrongpass123") || strings.Contains(debug, "privpass123") {
			t.Errorf("debug output must show the auth error and no secret:\n%s", debug)
		}
	})
	t.Run("in band", func(t *testing.T) {
		body := probe("inband")
		if !regexp.MustCompile(`subsegment_sla_violation_info\{from="b",hop="c",load1="[0-9.]+",source="inband",to="c"\} 1`).MatchString(body) {
			t.Errorf("no in-band load for the violating segment:\n%s", grepLines(body, "inband"))
		}
	})
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
