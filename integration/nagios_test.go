package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// nagiosStatus parses Nagios' status.dat into its servicestatus blocks.
func nagiosStatus(path string) (map[string]map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]string{}
	for _, block := range strings.Split(string(data), "servicestatus {")[1:] {
		block, _, _ = strings.Cut(block, "}")
		kv := map[string]string{}
		for _, line := range strings.Split(block, "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
			if ok {
				kv[k] = v
			}
		}
		out[kv["service_description"]] = kv
	}
	return out, nil
}

func startNagios(t *testing.T, services string) string {
	t.Helper()
	bin := requireTool(t, "nagios4", "/usr/sbin/nagios4")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "checkresults"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`log_file=%[1]s/nagios.log
cfg_file=%[1]s/objects.cfg
object_cache_file=%[1]s/objects.cache
precached_object_file=%[1]s/objects.precache
resource_file=%[1]s/resource.cfg
status_file=%[1]s/status.dat
status_update_interval=1
nagios_user=%[2]s
nagios_group=%[3]s
check_external_commands=0
command_file=%[1]s/nagios.cmd
lock_file=%[1]s/nagios.lock
temp_file=%[1]s/nagios.tmp
temp_path=%[1]s
check_result_path=%[1]s/checkresults
retain_state_information=0
state_retention_file=%[1]s/retention.dat
interval_length=1
use_syslog=0
enable_notifications=0
execute_service_checks=1
max_service_check_spread=1
max_host_check_spread=1
service_inter_check_delay_method=n
host_inter_check_delay_method=n
check_result_reaper_frequency=1
log_rotation_method=n
enable_flap_detection=0
`, dir, currentUser(), currentGroup())
	objects := fmt.Sprintf(`define timeperiod {
  timeperiod_name 24x7
  alias always
  sunday 00:00-24:00
  monday 00:00-24:00
  tuesday 00:00-24:00
  wednesday 00:00-24:00
  thursday 00:00-24:00
  friday 00:00-24:00
  saturday 00:00-24:00
}
define command {
  command_name notify_none
  command_line /bin/true
}
define command {
  command_name check_subsegment
  command_line %s check $ARG1$ -w $ARG2$ -c $ARG3$ --relay.name nagios -t 5s
}
define contact {
  contact_name nobody
  service_notification_period 24x7
  host_notification_period 24x7
  service_notification_options n
  host_notification_options n
  service_notification_commands notify_none
  host_notification_commands notify_none
}
define host {
  host_name chain
  address 127.0.0.1
  max_check_attempts 1
  check_period 24x7
  contacts nobody
  notification_period 24x7
  active_checks_enabled 0
}
%s`, binary, services)
	for name, content := range map[string]string{"nagios.cfg": cfg, "objects.cfg": objects, "resource.cfg": "$USER1$=/bin\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	start(t, "nagios", bin, filepath.Join(dir, "nagios.cfg"))
	return filepath.Join(dir, "status.dat")
}

func nagiosService(name, args string) string {
	return fmt.Sprintf(`define service {
  host_name chain
  service_description %s
  check_command check_subsegment!%s
  check_interval 1
  retry_interval 1
  max_check_attempts 1
  check_period 24x7
  notification_period 24x7
  contacts nobody
}
`, name, args)
}

func TestNagiosRunsTheCheck(t *testing.T) {
	b, _, _ := slowChainProcs(t, 10*time.Millisecond)
	status := startNagios(t,
		nagiosService("subsegment_ok", b.addr+"!100!200")+
			nagiosService("subsegment_critical", b.addr+"!5!10ms"))
	var st map[string]map[string]string
	eventually(t, 90*time.Second, "Nagios checked both services", func() error {
		var err error
		if st, err = nagiosStatus(status); err != nil {
			return err
		}
		for _, svc := range []string{"subsegment_ok", "subsegment_critical"} {
			if st[svc]["has_been_checked"] != "1" || st[svc]["plugin_output"] == "" {
				return fmt.Errorf("%s not checked yet: %v", svc, st[svc])
			}
		}
		return nil
	})
	ok, crit := st["subsegment_ok"], st["subsegment_critical"]
	if ok["current_state"] != "0" || !strings.HasPrefix(ok["plugin_output"], "SUBSEGMENT OK - slowest segment b -> c rtt ") {
		t.Errorf("OK service: state %s output %q", ok["current_state"], ok["plugin_output"])
	}
	if crit["current_state"] != "2" || !regexp.MustCompile(`^SUBSEGMENT CRITICAL - b -> c rtt [0-9.]+ms \(critical: over 10ms\)$`).MatchString(crit["plugin_output"]) {
		t.Errorf("CRITICAL service: state %s output %q", crit["current_state"], crit["plugin_output"])
	}
	// The performance data as Nagios recorded it: one rtt per segment with
	// its thresholds, one residence per hop.
	perfRE := regexp.MustCompile(`'b_c_rtt'=(\d+\.\d{3})ms;5;10;0;`)
	m := perfRE.FindStringSubmatch(crit["performance_data"])
	if m == nil {
		t.Fatalf("CRITICAL perfdata %q lacks b_c_rtt with 5;10", crit["performance_data"])
	}
	for _, label := range []string{"'nagios_b_rtt'=", "'c_z_rtt'=", "'nagios_res'=", "'b_res'=", "'c_res'=", "'z_res'="} {
		if !strings.Contains(ok["performance_data"], label) {
			t.Errorf("OK perfdata lacks %s: %q", label, ok["performance_data"])
		}
	}
	if !strings.Contains(ok["performance_data"], ";100;200;0;") {
		t.Errorf("OK perfdata lacks the thresholds: %q", ok["performance_data"])
	}
	// The long text has one line per segment.
	if !strings.Contains(crit["long_plugin_output"], `b -> c rtt`) || !strings.Contains(crit["long_plugin_output"], "CRITICAL (critical: over 10ms)") {
		t.Errorf("long output %q", crit["long_plugin_output"])
	}
}

func TestCheckCommandExitCodes(t *testing.T) {
	b, _, _ := slowChainProcs(t, time.Millisecond)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "subsegment.yml")
	os.WriteFile(cfgPath, []byte("modules:\n  default:\n    targets: [\"127.0.0.1:*\"]\n"), 0o600)
	for _, tc := range []struct {
		args []string
		code int
		line string
	}{
		{[]string{"check", b.addr, "-w", "100", "-c", "200"}, 0, "SUBSEGMENT OK - "},
		{[]string{"check", b.addr, "-w", "0.5", "-c", "200"}, 1, "SUBSEGMENT WARNING - "},
		{[]string{"check", b.addr, "--relay.name", "a", "-w", "100", "-c", "0.5", "--segment", "a:b=,1s", "--segment", "c:z=,1s"}, 2, "SUBSEGMENT CRITICAL - b -> c"},
		{[]string{"check", b.addr, "--relay.name", "a", "--segment", "b:x=,1s"}, 3, "SUBSEGMENT UNKNOWN - --segment b:x: no such segment in the chain (its segments: a -> b, b -> c, c -> z)"},
		{[]string{"check", "127.0.0.1:1", "-w", "1"}, 2, "SUBSEGMENT CRITICAL - chain broken at "},
		{[]string{"check", b.addr, "-w", "abc"}, 3, "SUBSEGMENT UNKNOWN - -w: "},
		{[]string{"check", b.addr, "--segment", "bc"}, 3, "SUBSEGMENT UNKNOWN - --segment"},
		{[]string{"check", b.addr, "--config.file", "/nonexistent.yml"}, 3, "SUBSEGMENT UNKNOWN - read config file"},
		{[]string{"check", b.addr, "--config.file", cfgPath, "--module", "nope"}, 3, "SUBSEGMENT UNKNOWN - module \"nope\""},
		{[]string{"check", "10.1.1.1:9000", "--config.file", cfgPath}, 3, "SUBSEGMENT UNKNOWN - target \"10.1.1.1:9000\" is not in the module's targets"},
		{[]string{"check"}, 3, "SUBSEGMENT UNKNOWN - required argument"},
		{[]string{"check", b.addr, "--bogus"}, 3, "SUBSEGMENT UNKNOWN - unknown long flag"},
		{[]string{"check", "--help"}, 3, "usage: subsegment_exporter check"},
	} {
		out, errOut, code := runBinary(t, nil, tc.args...)
		if code != tc.code || !strings.HasPrefix(out, tc.line) {
			t.Errorf("%v: exit %d, stdout %q; want %d and %q", tc.args, code, out, tc.code, tc.line)
		}
		if !slices.Contains(tc.args, "--help") && errOut != "" {
			t.Errorf("%v: the plugin wrote to stderr: %q", tc.args, errOut)
		}
	}
}
