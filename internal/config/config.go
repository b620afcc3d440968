// Package config is the exporter's configuration file: the modules a
// /probe request names (how to probe, which targets they may reach, the
// segments' SLAs) and, for SNMP, the credentials kept apart from modules.
// Loading is strict: an unknown key or a bad value is an error naming the
// file, the line and the key.
//
// Layering (internal/architecture_test.go): floor 2; it imports only
// internal/host and internal/wire, never the source end, relay, snmp or
// anything that reads a configuration.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// Config is the whole file.
type Config struct {
	Modules map[string]*Module `yaml:"modules"`
	// Auths are SNMP credentials, referred to by name from modules.
	Auths map[string]*Auth `yaml:"auths,omitempty"`
	// Continuous lists the chains probed between scrapes.
	Continuous []Continuous `yaml:"continuous,omitempty"`
	// dir is the file's directory: relative paths in it start there.
	dir string
	// keys is a digest of the chain's keys the process probes with
	// (UseKeys; not in the file).
	keys string
}

// Module is one way of probing, chosen with /probe?module=NAME.
type Module struct {
	// Timeout bounds the whole /probe (cut down further by Prometheus'
	// scrape timeout header).
	Timeout Duration `yaml:"timeout"`
	// Probes is the number of measured probes per scrape.
	Probes int `yaml:"probes"`
	// Interval is the pause between probes.
	Interval Duration `yaml:"interval"`
	// PayloadBytes pads each probe, to catch MTU/MSS black holes.
	PayloadBytes int `yaml:"payload_bytes"`
	// Targets are the first hops this module may probe: host:port
	// patterns with * as the port or as the end of the host.
	Targets []string `yaml:"targets"`
	SLA     SLA      `yaml:"sla"`
	// SNMP is the context to query when a segment breaks its SLA.
	SNMP *SNMP `yaml:"snmp,omitempty"`
	// Inband asks the hops to attach their local variables to the probe:
	// never, on_violation or always.
	Inband InbandMode `yaml:"inband,omitempty"`
	// Prober is tcp (a chain of relays, the default), http (a URL
	// through HTTP proxies that stamp a Subsegment-Timing header) or stamp
	// (a STAMP reflector: a router, or a relay's --stamp.listen-address).
	Prober string `yaml:"prober,omitempty"`
	// HTTP is how an http module asks for its URL.
	HTTP *HTTPProbe `yaml:"http,omitempty"`
	// STAMP is how a stamp module measures to its reflector.
	STAMP *STAMPProbe `yaml:"stamp,omitempty"`
	// Trace says when the relays trace the routers under their
	// segments: never, on_violation (the default) or always.
	Trace TraceMode `yaml:"trace,omitempty"`
}

// SLA is the rtt each segment should stay under, and the residence each
// hop should stay under.
type SLA struct {
	// Default applies to every segment without its own entry; 0 means none.
	Default  Duration     `yaml:"default"`
	Segments []SegmentSLA `yaml:"segments,omitempty"`
	// Hops are residence SLAs by hop: the median time probes spend inside
	// the hop, its wait for a CPU included. A hop without one has none.
	Hops map[string]Duration `yaml:"hops,omitempty"`
}

// SegmentSLA is one segment's own threshold, by hop names.
type SegmentSLA struct {
	From string   `yaml:"from"`
	To   string   `yaml:"to"`
	RTT  Duration `yaml:"rtt"`
}

// Threshold is the SLA of the segment from → to; 0 means none.
func (s SLA) Threshold(from, to string) time.Duration {
	for _, seg := range s.Segments {
		if seg.From == from && seg.To == to {
			return time.Duration(seg.RTT)
		}
	}
	return time.Duration(s.Default)
}

// HopThreshold is the residence SLA of a hop; 0 means none.
func (s SLA) HopThreshold(hop string) time.Duration { return time.Duration(s.Hops[hop]) }

// Module defaults.
const (
	DefaultTimeout  = 5 * time.Second
	DefaultProbes   = 3
	DefaultInterval = 50 * time.Millisecond
)

// Duration is a time.Duration written as "5s", "50ms".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration like 5s or 50ms, got a %s", n.Line, kindName(n.Kind))
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration: write it like 5s or 50ms", n.Line, n.Value)
	}
	if v < 0 {
		return fmt.Errorf("line %d: duration %q is negative", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// InbandMode says when hops attach their local variables to a probe.
type InbandMode string

// In-band modes.
const (
	InbandNever       InbandMode = "never"
	InbandOnViolation InbandMode = "on_violation"
	InbandAlways      InbandMode = "always"
)

// UnmarshalYAML accepts the three modes.
func (m *InbandMode) UnmarshalYAML(n *yaml.Node) error {
	switch InbandMode(n.Value) {
	case InbandNever, InbandOnViolation, InbandAlways:
		*m = InbandMode(n.Value)
		return nil
	}
	return fmt.Errorf("line %d: inband %q unknown: use never, on_violation or always", n.Line, n.Value)
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "value"
}

// Limits are what the process that loads the file can do: a module's
// probes must fit its frame limits, and an authenticated STAMP module
// needs its key.
type Limits struct {
	MaxFrameBytes int
	MaxHops       int
	// AuthKey: the process has the chain's key (--relay.auth-key-file).
	AuthKey bool
}

func (l Limits) withDefaults() Limits {
	if l.MaxFrameBytes <= 0 {
		l.MaxFrameBytes = frame.DefaultMaxFrameBytes
	}
	if l.MaxHops <= 0 {
		l.MaxHops = frame.DefaultMaxHops
	}
	return l
}

// Load reads and validates a configuration file against the frame
// limits of the process (zero: the defaults).
func Load(path string, limits Limits) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file %w", fileError(path, err, "create it or fix --config.file"))
	}
	return Parse(data, path, limits)
}

// Parse decodes and validates configuration text; name labels errors.
func Parse(data []byte, name string, limits Limits) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	keys := keyLines(&root)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	c := Config{dir: filepath.Dir(name)}
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, errEOF) || strings.Contains(err.Error(), "EOF") && len(bytes.TrimSpace(data)) == 0 {
			return nil, fmt.Errorf("%s: the file is empty: it needs a modules: section", name)
		}
		return nil, locate(err, name, keys)
	}
	if err := c.validate(limits.withDefaults()); err != nil {
		var ve *validationError
		if errors.As(err, &ve) {
			line := keys.lineOf(ve.path)
			return nil, fmt.Errorf("%s:%d: %s: %s", name, line, ve.path, ve.msg)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &c, nil
}

var errEOF = errors.New("EOF")

// keyIndex maps lines to the dotted path of the key on them, and back.
type keyIndex struct {
	byLine map[int]string
	byPath map[string]int
}

func keyLines(root *yaml.Node) keyIndex {
	k := keyIndex{byLine: map[int]string{}, byPath: map[string]int{}}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				key, val := n.Content[i], n.Content[i+1]
				p := key.Value
				if path != "" {
					p = path + "." + key.Value
				}
				k.byLine[key.Line] = p
				k.byPath[p] = key.Line
				if val.Line != key.Line {
					k.byLine[val.Line] = p
				}
				walk(val, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				k.byPath[p] = c.Line
				if _, ok := k.byLine[c.Line]; !ok {
					k.byLine[c.Line] = p
				}
				walk(c, p)
			}
		}
	}
	walk(root, "")
	return k
}

func (k keyIndex) lineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := k.byPath[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 1
}

var lineRE = regexp.MustCompile(`line (\d+): `)

// locate rewrites yaml's "line N: …" messages to "file:N: key: …".
func locate(err error, name string, keys keyIndex) error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var out []string
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		if loc := lineRE.FindStringSubmatchIndex(m); loc != nil {
			line, _ := strconv.Atoi(m[loc[2]:loc[3]])
			rest := explainUnknownField(m[loc[1]:])
			key := keys.byLine[line]
			if key != "" {
				out = append(out, fmt.Sprintf("%s:%d: %s: %s", name, line, key, rest))
			} else {
				out = append(out, fmt.Sprintf("%s:%d: %s", name, line, rest))
			}
			continue
		}
		out = append(out, fmt.Sprintf("%s: %s", name, m))
	}
	return errors.New(strings.Join(out, "\n"))
}

var unknownFieldRE = regexp.MustCompile(`^field (\S+) not found in type config\.(\w+)$`)

// explainUnknownField turns yaml's "field x not found in type
// config.Module" into a message that names the keys allowed there.
func explainUnknownField(msg string) string {
	m := unknownFieldRE.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	keys := allowedKeys[m[2]]
	if len(keys) == 0 {
		return msg
	}
	return fmt.Sprintf("unknown key %q: allowed here are %s", m[1], strings.Join(keys, ", "))
}

// allowedKeys lists each configuration type's keys, for the message above.
var allowedKeys = func() map[string][]string {
	out := map[string][]string{}
	for _, v := range []any{Config{}, Module{}, SLA{}, SegmentSLA{}, SNMP{}, SNMPHop{}, Variable{}, Playbook{}, SegmentRef{}, Level{}, Auth{}, HTTPProbe{}, HTTPTLS{}, STAMPProbe{}, Continuous{}} {
		t := reflect.TypeOf(v)
		for i := 0; i < t.NumField(); i++ {
			tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if tag != "" && tag != "-" {
				out[t.Name()] = append(out[t.Name()], tag)
			}
		}
	}
	return out
}()

// validationError is a bad value found after decoding, at a key path.
type validationError struct {
	path, msg string
}

func (e *validationError) Error() string { return e.path + ": " + e.msg }

func bad(path, format string, args ...any) error {
	return &validationError{path: path, msg: fmt.Sprintf(format, args...)}
}

// validate fills in defaults and checks every value.
func (c *Config) validate(limits Limits) error {
	if len(c.Modules) == 0 {
		return bad("modules", "no module defined: add at least one, e.g. modules: {default: {targets: [\"127.0.0.1:*\"]}}")
	}
	for _, name := range sortedKeys(c.Modules) {
		m := c.Modules[name]
		path := "modules." + name
		if m == nil {
			return bad(path, "module is empty: it needs at least targets")
		}
		if err := m.validate(path, c, limits); err != nil {
			return err
		}
	}
	for _, name := range sortedKeys(c.Auths) {
		if err := c.Auths[name].validate("auths."+name, c.dir); err != nil {
			return err
		}
	}
	return c.validateContinuous()
}

func (m *Module) validate(path string, c *Config, limits Limits) error {
	if m.Timeout == 0 {
		m.Timeout = Duration(DefaultTimeout)
	}
	if m.Probes == 0 {
		m.Probes = DefaultProbes
	}
	if m.Interval == 0 {
		m.Interval = Duration(DefaultInterval)
	}
	if m.Inband == "" {
		m.Inband = InbandNever
	}
	if err := m.validateProber(path, c.dir, limits); err != nil {
		return err
	}
	if err := m.validateTrace(path); err != nil {
		return err
	}
	if m.Timeout < Duration(10*time.Millisecond) || m.Timeout > Duration(10*time.Minute) {
		return bad(path+".timeout", "%v out of range: use 10ms to 10m", time.Duration(m.Timeout))
	}
	if m.Probes < 1 || m.Probes > 1000 {
		return bad(path+".probes", "%d out of range: use 1 to 1000", m.Probes)
	}
	if err := frame.CheckPayload(m.PayloadBytes, limits.MaxFrameBytes, limits.MaxHops); err != nil {
		return bad(path+".payload_bytes", "%v", err)
	}
	if len(m.Targets) == 0 {
		return bad(path+".targets", "no target allowed: list the first hops this module may probe, e.g. [\"10.0.0.1:9000\", \"relay-*.example.net:*\"]")
	}
	for i, t := range m.Targets {
		if err := checkPattern(t); err != nil {
			return bad(fmt.Sprintf("%s.targets[%d]", path, i), "%v", err)
		}
	}
	if err := m.SLA.validate(path + ".sla"); err != nil {
		return err
	}
	if m.SNMP != nil {
		if err := m.SNMP.validate(path+".snmp", c); err != nil {
			return err
		}
	}
	return nil
}

func (s *SLA) validate(path string) error {
	seen := map[[2]string]bool{}
	for i, seg := range s.Segments {
		p := fmt.Sprintf("%s.segments[%d]", path, i)
		if err := peer.ValidateLabel(seg.From); err != nil {
			return bad(p+".from", "%v", err)
		}
		if err := peer.ValidateLabel(seg.To); err != nil {
			return bad(p+".to", "%v", err)
		}
		if seg.RTT <= 0 {
			return bad(p+".rtt", "missing: give the segment's rtt threshold, e.g. rtt: 20ms")
		}
		if seen[[2]string{seg.From, seg.To}] {
			return bad(p, "segment %s -> %s is listed twice", seg.From, seg.To)
		}
		seen[[2]string{seg.From, seg.To}] = true
	}
	for _, hop := range sortedKeys(s.Hops) {
		if err := peer.ValidateLabel(hop); err != nil {
			return bad(path+".hops."+hop, "%v", err)
		}
		if s.Hops[hop] <= 0 {
			return bad(path+".hops."+hop, "missing: give the hop's residence threshold, e.g. %s: 2ms", hop)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkPattern validates a target pattern.
func checkPattern(p string) error {
	host, port, err := net.SplitHostPort(p)
	if err != nil {
		return fmt.Errorf("target %q is not host:port (use * for any port, e.g. \"10.0.0.1:*\")", p)
	}
	if host == "" || host == "*" {
		return fmt.Errorf("target %q allows any host, which would make /probe an open proxy: list the hosts (a trailing * is allowed, e.g. \"10.0.0.*:9000\")", p)
	}
	if strings.Count(host, "*") > 1 {
		return fmt.Errorf("target %q: at most one * in the host (e.g. \"10.0.0.*:9000\" or \"relay-*.example.net:9000\")", p)
	}
	if port != "*" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("target %q: port %q is not 1-65535 or *", p, port)
		}
	}
	return nil
}

// NotAllowedError is a well-formed target the module's targets do not
// list.
type NotAllowedError struct {
	Target  string
	Targets []string
}

func (e *NotAllowedError) Error() string {
	return fmt.Sprintf("target %q is not in the module's targets %q", e.Target, e.Targets)
}

// Allows reports whether the module may probe target (host:port, or a URL
// for an http module, checked by its host:port); when
// not, the error says why: a malformed target, or a *NotAllowedError.
func (m *Module) Allows(target string) error {
	if m.IsHTTP() {
		if !peer.IsHTTPTarget(target) {
			return fmt.Errorf("target %q: this module probes URLs (prober: http): give target=http://host:port/path", target)
		}
		t, err := peer.ParseHTTPTarget(target)
		if err != nil {
			return fmt.Errorf("target: %w", err)
		}
		return m.allowsAddress(t.Address)
	}
	if peer.IsHTTPTarget(target) {
		return fmt.Errorf("target %q is a URL: this module probes %s; use a module with prober: http", target, m.probes())
	}
	if peer.IsSTAMPTarget(target) {
		if !m.IsSTAMP() {
			return fmt.Errorf("target %q is a STAMP reflector: this module probes relay chains (prober: tcp); use a module with prober: stamp", target)
		}
		t, err := peer.ParseSTAMPTarget(target)
		if err != nil {
			return fmt.Errorf("target: %w", err)
		}
		target = t.Address
	}
	if err := peer.ValidateAddress(target); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	return m.allowsAddress(target)
}

// allowsAddress checks host:port against the module's target patterns.
func (m *Module) allowsAddress(target string) error {
	host, port, _ := net.SplitHostPort(target)
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("target %q: port %q is not 1-65535", target, port)
	}
	host = strings.ToLower(host)
	for _, p := range m.Targets {
		ph, pp, _ := net.SplitHostPort(p)
		ph = strings.ToLower(ph)
		if pp != "*" && pp != port {
			continue
		}
		if prefix, suffix, ok := strings.Cut(ph, "*"); ok {
			if wildcardMatch(prefix, suffix, host) {
				return nil
			}
		} else if ph == host {
			return nil
		}
	}
	return &NotAllowedError{Target: target, Targets: m.Targets}
}

// wildcardMatch matches a host against a pattern with one *. In an
// address pattern ("10.0.0.*", "fd00::*") the * stands for the rest of an
// address and matches only addresses, so "10.0.0.*" does not allow the host
// name 10.0.0.1.example.org, which resolves anywhere. In a name pattern
// ("relay-*.example.net", "relay-*") it stands for part of one DNS label,
// as in a TLS wildcard, so "relay-*" does not allow relay-b.example.org.
func wildcardMatch(prefix, suffix, host string) bool {
	if len(host) < len(prefix)+len(suffix) || !strings.HasPrefix(host, prefix) || !strings.HasSuffix(host, suffix) {
		return false
	}
	if addressPattern(prefix + suffix) {
		return net.ParseIP(host) != nil
	}
	return !strings.Contains(host[len(prefix):len(host)-len(suffix)], ".")
}

// addressPattern reports whether a pattern (without its *) is part of an
// IPv4 or IPv6 address rather than of a name.
func addressPattern(p string) bool {
	return strings.Contains(p, ":") || strings.Trim(p, "0123456789.") == ""
}

// Redacted returns the module as YAML with every secret hidden, for the
// debug output.
func (c *Config) Redacted(module string) string {
	out := map[string]any{"module": c.Modules[module]}
	if m := c.Modules[module]; m != nil && m.SNMP != nil {
		auths := map[string]*Auth{}
		for _, h := range m.SNMP.Hops {
			if a := c.Auths[h.Auth]; a != nil {
				auths[h.Auth] = a
			}
		}
		out["auths"] = auths
	}
	b, err := yaml.Marshal(out)
	if err != nil {
		return fmt.Sprintf("cannot render the module: %v", err)
	}
	return string(b)
}
