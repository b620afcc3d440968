package config

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// SNMP says what to ask the hops of a segment that breaks its SLA.
type SNMP struct {
	// Query picks the hops: far_end (default), near_end or both.
	Query Query `yaml:"query"`
	// Timeout bounds one request to one hop; Retries repeat it. Both are
	// cut down to what is left of the scrape. Retries is nil when the file
	// leaves it out (DefaultSNMPRetries; validation fills it in), so that
	// retries: 0 means none.
	Timeout Duration `yaml:"timeout"`
	Retries *int     `yaml:"retries"`
	// Hops maps hop names to their SNMP agents.
	Hops map[string]*SNMPHop `yaml:"hops"`
	// Variables are what is queried when a segment breaks its SLA and no
	// playbook says otherwise; playbook levels refer to them by name.
	Variables []Variable `yaml:"variables"`
	// Playbooks choose variables by how far a segment is over its SLA.
	Playbooks []Playbook `yaml:"playbooks,omitempty"`
}

// Query is which end of a segment is asked.
type Query string

// Query modes.
const (
	QueryFarEnd  Query = "far_end"
	QueryNearEnd Query = "near_end"
	QueryBoth    Query = "both"
)

// UnmarshalYAML accepts the three modes.
func (q *Query) UnmarshalYAML(n *yaml.Node) error {
	switch Query(n.Value) {
	case QueryFarEnd, QueryNearEnd, QueryBoth:
		*q = Query(n.Value)
		return nil
	}
	return fmt.Errorf("line %d: query %q unknown: use far_end, near_end or both", n.Line, n.Value)
}

// SNMPHop is one hop's agent.
type SNMPHop struct {
	// Target is host:port of the agent (port 161 when omitted).
	Target string `yaml:"target"`
	// Auth names an entry of the top-level auths.
	Auth string `yaml:"auth"`
}

// Variable is a named OID. With Interface set, the OID is a column of
// IF-MIB's ifTable and the row is the interface with that ifName or ifDescr.
type Variable struct {
	Name      string `yaml:"name"`
	OID       string `yaml:"oid"`
	Interface string `yaml:"interface,omitempty"`
	// Scale multiplies the value (e.g. 0.01 for UCD's laLoadInt).
	Scale float64 `yaml:"scale,omitempty"`
}

// Playbook applies to one segment, to one hop's residence, or (with
// neither) to every segment and hop.
type Playbook struct {
	Segment *SegmentRef `yaml:"segment,omitempty"`
	Hop     string      `yaml:"hop,omitempty"`
	Levels  []Level     `yaml:"levels"`
}

// SegmentRef names a segment by its hops.
type SegmentRef struct {
	From string `yaml:"from"`
	To   string `yaml:"to"`
}

// Level queries more variables the further the rtt is over the SLA: a
// level applies when rtt > Above × SLA, and all levels that apply add up.
type Level struct {
	Above     Ratio    `yaml:"above"`
	Variables []string `yaml:"variables"`
}

// Ratio is a multiple of the SLA, written 1x, 2x, 1.5x (or a plain number).
type Ratio float64

// UnmarshalYAML parses "2x" or "2".
func (r *Ratio) UnmarshalYAML(n *yaml.Node) error {
	v, err := strconv.ParseFloat(strings.TrimSuffix(n.Value, "x"), 64)
	if err != nil || !(v >= 1) || math.IsInf(v, 0) {
		return fmt.Errorf("line %d: above %q: want a multiple of the SLA of at least 1, like 1x or 2x", n.Line, n.Value)
	}
	*r = Ratio(v)
	return nil
}

// Auth is a set of SNMP credentials. Each secret may instead be read
// from a file (community_file, password_file, priv_password_file; a
// relative path starts at the configuration file's directory), at load
// and at every reload.
type Auth struct {
	// Version is 2 (v2c) or 3.
	Version       int    `yaml:"version"`
	Community     Secret `yaml:"community,omitempty"`
	CommunityFile string `yaml:"community_file,omitempty"`
	// v3: security_level noAuthNoPriv, authNoPriv or authPriv.
	SecurityLevel string `yaml:"security_level,omitempty"`
	Username      string `yaml:"username,omitempty"`
	// AuthProtocol: SHA, SHA224, SHA256, SHA384, SHA512 (MD5 is refused).
	AuthProtocol string `yaml:"auth_protocol,omitempty"`
	Password     Secret `yaml:"password,omitempty"`
	PasswordFile string `yaml:"password_file,omitempty"`
	// PrivProtocol: AES, AES192, AES256 (DES is refused).
	PrivProtocol     string `yaml:"priv_protocol,omitempty"`
	PrivPassword     Secret `yaml:"priv_password,omitempty"`
	PrivPasswordFile string `yaml:"priv_password_file,omitempty"`
	ContextName      string `yaml:"context_name,omitempty"`
}

// MarshalYAML shows a secret read from a file by its file only.
func (a Auth) MarshalYAML() (any, error) {
	type plain Auth
	p := plain(a)
	for _, s := range []struct {
		value *Secret
		file  string
	}{{&p.Community, a.CommunityFile}, {&p.Password, a.PasswordFile}, {&p.PrivPassword, a.PrivPasswordFile}} {
		if s.file != "" {
			*s.value = ""
		}
	}
	return p, nil
}

// Defaults of the SNMP section.
const (
	DefaultSNMPTimeout = time.Second
	DefaultSNMPRetries = 1
)

var oidRE = regexp.MustCompile(`^\.?[0-9]+(\.[0-9]+)+$`)

// validate fills in defaults and checks the section, step by step.
func (s *SNMP) validate(path string, c *Config) error {
	if err := s.validateLimits(path); err != nil {
		return err
	}
	names, err := s.validateVariables(path)
	if err != nil {
		return err
	}
	if err := s.validateHops(path, c); err != nil {
		return err
	}
	return s.validatePlaybooks(path, names)
}

func (s *SNMP) validateLimits(path string) error {
	if s.Query == "" {
		s.Query = QueryFarEnd
	}
	if s.Timeout == 0 {
		s.Timeout = Duration(DefaultSNMPTimeout)
	}
	if s.Timeout < Duration(10*time.Millisecond) {
		return bad(path+".timeout", "%v is too short: use at least 10ms", time.Duration(s.Timeout))
	}
	if s.Retries == nil {
		retries := DefaultSNMPRetries
		s.Retries = &retries
	}
	if *s.Retries < 0 || *s.Retries > 10 {
		return bad(path+".retries", "%d out of range: use 0 to 10", *s.Retries)
	}
	return nil
}

// RetryCount is how often a request to one hop is repeated: retries, or
// DefaultSNMPRetries when the file leaves it out.
func (s *SNMP) RetryCount() int {
	if s.Retries == nil {
		return DefaultSNMPRetries
	}
	return *s.Retries
}

// validateVariables checks the variables and returns their names.
func (s *SNMP) validateVariables(path string) (map[string]bool, error) {
	if len(s.Variables) == 0 {
		return nil, bad(path+".variables", "no variable: list what to query, e.g. [{name: load1, oid: 1.3.6.1.4.1.2021.10.1.3.1}]")
	}
	names := map[string]bool{}
	for i, v := range s.Variables {
		p := fmt.Sprintf("%s.variables[%d]", path, i)
		if err := peer.ValidateVarName(v.Name); err != nil {
			return nil, bad(p+".name", "%v", err)
		}
		if names[v.Name] {
			return nil, bad(p+".name", "variable %q is defined twice", v.Name)
		}
		names[v.Name] = true
		if !oidRE.MatchString(v.OID) {
			return nil, bad(p+".oid", "%q is not a numeric OID like 1.3.6.1.4.1.2021.10.1.3.1", v.OID)
		}
		if math.IsNaN(v.Scale) || math.IsInf(v.Scale, 0) {
			return nil, bad(p+".scale", "%v is not a finite number", v.Scale)
		}
		oid := strings.TrimPrefix(v.OID, ".")
		if v.Interface != "" && !strings.HasPrefix(oid, "1.3.6.1.2.1.2.2.1.") && !strings.HasPrefix(oid, "1.3.6.1.2.1.31.1.1.1.") {
			return nil, bad(p+".interface", "interface is only for IF-MIB columns (ifTable 1.3.6.1.2.1.2.2.1.N, ifXTable 1.3.6.1.2.1.31.1.1.1.N)")
		}
	}
	return names, nil
}

func (s *SNMP) validateHops(path string, c *Config) error {
	if len(s.Hops) == 0 {
		return bad(path+".hops", "no hop: map hop names to their agents, e.g. {c: {target: \"10.0.0.3:161\", auth: v2}}")
	}
	for _, name := range sortedKeys(s.Hops) {
		h := s.Hops[name]
		p := path + ".hops." + name
		if err := peer.ValidateLabel(name); err != nil {
			return bad(p, "%v", err)
		}
		if h == nil || h.Target == "" {
			return bad(p+".target", "missing: the agent's host:port")
		}
		if _, _, err := net.SplitHostPort(h.Target); err != nil {
			h.Target = net.JoinHostPort(h.Target, "161")
		}
		if h.Auth == "" {
			return bad(p+".auth", "missing: name an entry of auths")
		}
		if c.Auths[h.Auth] == nil {
			return bad(p+".auth", "auth %q is not defined under auths", h.Auth)
		}
	}
	return nil
}

func (s *SNMP) validatePlaybooks(path string, names map[string]bool) error {
	for i, pb := range s.Playbooks {
		p := fmt.Sprintf("%s.playbooks[%d]", path, i)
		if err := pb.validateSubject(p); err != nil {
			return err
		}
		if len(pb.Levels) == 0 {
			return bad(p+".levels", "no level: e.g. [{above: 1x, variables: [load1]}, {above: 2x, variables: [if_in_errors]}]")
		}
		for j, l := range pb.Levels {
			if err := l.validate(fmt.Sprintf("%s.levels[%d]", p, j), names); err != nil {
				return err
			}
		}
	}
	return nil
}

// validateSubject checks what a playbook is for: a segment, a hop, or
// (neither) everything.
func (pb Playbook) validateSubject(p string) error {
	if pb.Segment != nil && pb.Hop != "" {
		return bad(p, "a playbook is for a segment or for a hop, not both")
	}
	if pb.Segment != nil {
		if err := peer.ValidateLabel(pb.Segment.From); err != nil {
			return bad(p+".segment.from", "%v", err)
		}
		if err := peer.ValidateLabel(pb.Segment.To); err != nil {
			return bad(p+".segment.to", "%v", err)
		}
	}
	if pb.Hop != "" {
		if err := peer.ValidateLabel(pb.Hop); err != nil {
			return bad(p+".hop", "%v", err)
		}
	}
	return nil
}

// validate checks a level against the module's variable names.
func (l Level) validate(lp string, names map[string]bool) error {
	if l.Above == 0 {
		return bad(lp+".above", "missing: a multiple of the SLA like 1x")
	}
	if len(l.Variables) == 0 {
		return bad(lp+".variables", "no variable named")
	}
	for k, v := range l.Variables {
		if !names[v] {
			return bad(fmt.Sprintf("%s.variables[%d]", lp, k), "variable %q is not defined in the module's snmp.variables", v)
		}
	}
	return nil
}

func (a *Auth) validate(path, dir string) error {
	if a == nil {
		return bad(path, "empty auth")
	}
	for _, s := range []struct {
		key   string
		value *Secret
		file  *string
	}{{"community", &a.Community, &a.CommunityFile}, {"password", &a.Password, &a.PasswordFile}, {"priv_password", &a.PrivPassword, &a.PrivPasswordFile}} {
		if err := secretPair(path+"."+s.key, dir, s.value, s.file); err != nil {
			return err
		}
	}
	switch a.Version {
	case 2:
		if a.Community == "" {
			return bad(path+".community", "missing for version 2: give community or community_file")
		}
		if a.Username != "" || a.SecurityLevel != "" {
			return bad(path, "username and security_level are for version 3")
		}
		return nil
	case 3:
	default:
		return bad(path+".version", "%d unsupported: use 2 (v2c) or 3", a.Version)
	}
	if a.Username == "" {
		return bad(path+".username", "missing for version 3")
	}
	if a.Community != "" {
		return bad(path+".community", "is for version 2")
	}
	switch a.SecurityLevel {
	case "noAuthNoPriv":
	case "authNoPriv", "authPriv":
		switch strings.ToUpper(a.AuthProtocol) {
		case "SHA", "SHA224", "SHA256", "SHA384", "SHA512":
		case "MD5":
			return bad(path+".auth_protocol", "MD5 is refused: use SHA or the SHA-2 family (SHA224 … SHA512)")
		default:
			return bad(path+".auth_protocol", "%q unknown: use SHA, SHA224, SHA256, SHA384 or SHA512", a.AuthProtocol)
		}
		if len(a.Password) < 8 {
			return bad(path+".password", "missing or shorter than 8 characters (SNMPv3 requires 8): give password or password_file")
		}
		if a.SecurityLevel == "authPriv" {
			switch strings.ToUpper(a.PrivProtocol) {
			case "AES", "AES192", "AES256":
			case "DES":
				return bad(path+".priv_protocol", "DES is refused: use AES, AES192 or AES256")
			default:
				return bad(path+".priv_protocol", "%q unknown: use AES, AES192 or AES256", a.PrivProtocol)
			}
			if len(a.PrivPassword) < 8 {
				return bad(path+".priv_password", "missing or shorter than 8 characters: give priv_password or priv_password_file")
			}
		}
	case "":
		return bad(path+".security_level", "missing for version 3: noAuthNoPriv, authNoPriv or authPriv")
	default:
		return bad(path+".security_level", "%q unknown: use noAuthNoPriv, authNoPriv or authPriv", a.SecurityLevel)
	}
	return nil
}

// Subject is what is out of its SLA: a segment (From, To) or a hop's
// residence (Hop).
type Subject struct {
	From, To, Hop string
}

// VariablesFor returns the variables to query for a subject whose value
// is ratio × its SLA (ratio > 1), in definition order: its own playbook's,
// else the general playbook's, else every variable.
func (s *SNMP) VariablesFor(subj Subject, ratio float64) []Variable {
	var pb *Playbook
	for i := range s.Playbooks {
		p := &s.Playbooks[i]
		own := subj.Hop != "" && p.Hop == subj.Hop ||
			subj.Hop == "" && p.Segment != nil && p.Segment.From == subj.From && p.Segment.To == subj.To
		if own {
			pb = p
			break
		}
		if p.Segment == nil && p.Hop == "" && pb == nil {
			pb = p
		}
	}
	if pb == nil {
		return s.Variables
	}
	want := map[string]bool{}
	for _, l := range pb.Levels {
		if ratio > float64(l.Above) {
			for _, v := range l.Variables {
				want[v] = true
			}
		}
	}
	var out []Variable
	for _, v := range s.Variables {
		if want[v.Name] {
			out = append(out, v)
		}
	}
	return out
}

// HopsFor returns the hops whose agents explain a subject: the hop itself
// for a residence, and for a segment the ends that query selects.
func (s *SNMP) HopsFor(subj Subject) []string {
	if subj.Hop != "" {
		return []string{subj.Hop}
	}
	from, to := subj.From, subj.To
	switch s.Query {
	case QueryNearEnd:
		return []string{from}
	case QueryBoth:
		return []string{from, to}
	}
	return []string{to}
}
