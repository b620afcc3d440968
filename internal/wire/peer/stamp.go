package peer

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// STAMPScheme starts a STAMP reflector's address where a hop's address
// could be another kind (--forward-to, the probe command's target).
const STAMPScheme = "stamp://"

// STAMPPort is STAMP's registered port (IANA), used when an address
// gives none.
const STAMPPort = "862"

// STAMPTarget is a STAMP Session-Reflector (RFC 8762) a source or a relay
// measures to: a router or host that runs none of our code.
type STAMPTarget struct {
	// Address is host:port (port 862 when none was given).
	Address string
	// Name labels the reflector's hop: ?name= of the URL, else
	// AddressName of the address.
	Name string
}

// IsSTAMPTarget tells stamp://host:port from other addresses.
func IsSTAMPTarget(s string) bool { return strings.HasPrefix(strings.ToLower(s), STAMPScheme) }

// ParseSTAMPTarget reads stamp://host[:port][?name=NAME].
func ParseSTAMPTarget(s string) (STAMPTarget, error) {
	if !IsSTAMPTarget(s) {
		return STAMPTarget{}, fmt.Errorf("%q is not a STAMP reflector: write stamp://host:port", s)
	}
	if len(s) > 512 {
		return STAMPTarget{}, fmt.Errorf("STAMP reflector address of %d bytes is too long: at most 512", len(s))
	}
	u, err := url.Parse(s)
	if err != nil {
		return STAMPTarget{}, fmt.Errorf("STAMP reflector %q: %w", s, err)
	}
	if u.User != nil || u.Fragment != "" || (u.Path != "" && u.Path != "/") || u.Opaque != "" {
		return STAMPTarget{}, fmt.Errorf("STAMP reflector %q: only stamp://host:port, optionally with ?name=HOPNAME", s)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(strings.Trim(u.Host, "[]"), STAMPPort)
	}
	if err := ValidateAddress(addr); err != nil {
		return STAMPTarget{}, fmt.Errorf("STAMP reflector %q: %w", s, err)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return STAMPTarget{}, fmt.Errorf("STAMP reflector %q: %w", s, err)
	}
	t := STAMPTarget{Address: addr, Name: q.Get("name")}
	for k := range q {
		if k != "name" {
			return STAMPTarget{}, fmt.Errorf("STAMP reflector %q: unknown parameter %q (only name=HOPNAME)", s, k)
		}
	}
	if t.Name == "" {
		t.Name = AddressName(addr)
	} else if err := ValidateName(t.Name); err != nil {
		return STAMPTarget{}, fmt.Errorf("STAMP reflector %q: name: %w", s, err)
	}
	return t, nil
}

// AddressName is the hop name of a host:port that reports none of its
// own (a STAMP reflector): its host, every byte a name may not hold
// (the colons of an IPv6 address) written as '_', at most MaxNameLen bytes.
func AddressName(address string) string {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	b := []byte(host)
	for i, c := range b {
		if !nameByte(c) {
			b[i] = '_'
		}
	}
	if len(b) > MaxNameLen {
		b = b[:MaxNameLen]
	}
	if len(b) == 0 {
		return "reflector"
	}
	return string(b)
}
