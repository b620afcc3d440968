// Package snmp asks hops for context when a segment breaks its SLA: load,
// interface errors, whatever a module's playbook names. It queries the
// hops' SNMP agents (v2c and v3) with gosnmp within what is left of the
// scrape, and reads a relay's own variables for in-band annotation. SNMP
// failures never fail a probe; they are counted and reported.
//
// Layering (internal/architecture_test.go): floor 4; it may import the
// prober's results, sla's verdicts, internal/config and internal/wire,
// never relay, collector, internal/output or internal/exporter.
package snmp

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gosnmp/gosnmp"

	"github.com/subsegment/subsegment_exporter/internal/config"
)

// Target is one hop's agent with its credentials.
type Target struct {
	Hop     string
	Address string // host:port
	Auth    *config.Auth
}

// Attempt is how one request is tried: its timeout and retries.
type Attempt struct {
	Timeout time.Duration
	Retries int
}

// PDU is one variable binding of an answer.
type PDU struct {
	OID string
	// Value is the number the variable holds; Missing says why there is
	// none (no_such_object, no_such_instance, not_a_number).
	Value   float64
	Text    string
	Missing string
}

// Client is what the queries need of SNMP: gosnmp here, a fake in tests.
type Client interface {
	Get(ctx context.Context, t Target, oids []string, a Attempt) ([]PDU, error)
	// Walk returns the subtree under root.
	Walk(ctx context.Context, t Target, root string, a Attempt) ([]PDU, error)
}

// GoSNMP is the real client. It is safe for concurrent use: every request
// gets its own socket.
type GoSNMP struct {
	// WalkLimits bound what a walk may collect; zero fields: the defaults.
	WalkLimits WalkLimits
}

// WalkLimits bound one walk of an agent's table (the interface names an
// interface variable is looked up by): an agent that answers with an
// endless or huge table is cut off at these, not at the scrape deadline.
type WalkLimits struct {
	// MaxEntries is the most variables a walk collects
	// (--snmp.walk-max-entries).
	MaxEntries int
	// MaxBytes is the most bytes of OIDs and values a walk collects
	// (--snmp.walk-max-bytes).
	MaxBytes int
}

// Defaults of WalkLimits: the interface tables of the largest routers
// (tens of thousands of rows, names of tens of bytes) fit.
const (
	DefaultWalkMaxEntries = 50000
	DefaultWalkMaxBytes   = 4 << 20
)

func (l WalkLimits) withDefaults() WalkLimits {
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultWalkMaxEntries
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultWalkMaxBytes
	}
	return l
}

// ErrWalkLimit is a walk cut off by WalkLimits.
var ErrWalkLimit = errors.New("walk too large")

func (GoSNMP) session(ctx context.Context, t Target, a Attempt) (*gosnmp.GoSNMP, error) {
	host, port, err := net.SplitHostPort(t.Address)
	if err != nil {
		return nil, fmt.Errorf("agent address %q: %w", t.Address, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("agent port %q: %w", port, err)
	}
	g := &gosnmp.GoSNMP{
		Target: host, Port: uint16(p), Transport: "udp", Context: ctx,
		Timeout: a.Timeout, Retries: a.Retries, MaxOids: gosnmp.MaxOids,
	}
	au := t.Auth
	switch au.Version {
	case 2:
		g.Version = gosnmp.Version2c
		g.Community = string(au.Community)
	case 3:
		g.Version = gosnmp.Version3
		g.SecurityModel = gosnmp.UserSecurityModel
		g.ContextName = au.ContextName
		sp := &gosnmp.UsmSecurityParameters{UserName: au.Username}
		switch au.SecurityLevel {
		case "noAuthNoPriv":
			g.MsgFlags = gosnmp.NoAuthNoPriv
		case "authNoPriv":
			g.MsgFlags = gosnmp.AuthNoPriv
		case "authPriv":
			g.MsgFlags = gosnmp.AuthPriv
		}
		if g.MsgFlags != gosnmp.NoAuthNoPriv {
			sp.AuthenticationPassphrase = string(au.Password)
			sp.AuthenticationProtocol = map[string]gosnmp.SnmpV3AuthProtocol{
				"SHA": gosnmp.SHA, "SHA224": gosnmp.SHA224, "SHA256": gosnmp.SHA256, "SHA384": gosnmp.SHA384, "SHA512": gosnmp.SHA512,
			}[strings.ToUpper(au.AuthProtocol)]
		}
		if g.MsgFlags == gosnmp.AuthPriv {
			sp.PrivacyPassphrase = string(au.PrivPassword)
			sp.PrivacyProtocol = map[string]gosnmp.SnmpV3PrivProtocol{
				"AES": gosnmp.AES, "AES192": gosnmp.AES192, "AES256": gosnmp.AES256,
			}[strings.ToUpper(au.PrivProtocol)]
		}
		g.SecurityParameters = sp
	default:
		return nil, fmt.Errorf("SNMP version %d unsupported", au.Version)
	}
	if err := g.Connect(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", t.Address, err)
	}
	return g, nil
}

// Get implements Client.
func (c GoSNMP) Get(ctx context.Context, t Target, oids []string, a Attempt) ([]PDU, error) {
	g, err := c.session(ctx, t, a)
	if err != nil {
		return nil, err
	}
	defer g.Conn.Close()
	pkt, err := g.Get(oids)
	if err != nil {
		return nil, err
	}
	switch pkt.Error {
	case gosnmp.NoError:
	case gosnmp.AuthorizationError, gosnmp.NoAccess:
		return nil, fmt.Errorf("%w: agent answered %s", errAuthorization, pkt.Error)
	default:
		return nil, fmt.Errorf("agent answered %s", pkt.Error)
	}
	out := make([]PDU, len(pkt.Variables))
	for i, v := range pkt.Variables {
		out[i] = convert(v)
	}
	return out, nil
}

// Walk implements Client, within c.WalkLimits: the walk stops with
// ErrWalkLimit at the first variable beyond them.
func (c GoSNMP) Walk(ctx context.Context, t Target, root string, a Attempt) ([]PDU, error) {
	g, err := c.session(ctx, t, a)
	if err != nil {
		return nil, err
	}
	defer g.Conn.Close()
	limits := c.WalkLimits.withDefaults()
	var out []PDU
	size := 0
	collect := func(v gosnmp.SnmpPDU) error {
		p := convert(v)
		size += len(v.Name) + len(p.Text)
		if len(out) >= limits.MaxEntries {
			return fmt.Errorf("%w: %s answered more than %d variables under %s (--snmp.walk-max-entries)", ErrWalkLimit, t.Address, limits.MaxEntries, root)
		}
		if size > limits.MaxBytes {
			return fmt.Errorf("%w: %s answered more than %d bytes under %s (--snmp.walk-max-bytes)", ErrWalkLimit, t.Address, limits.MaxBytes, root)
		}
		out = append(out, p)
		return nil
	}
	if g.Version == gosnmp.Version1 {
		err = g.Walk(root, collect)
	} else {
		err = g.BulkWalk(root, collect)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// convert reads a variable as a number. Text values are read as numbers
// when they are (UCD's laLoad is "0.52").
func convert(v gosnmp.SnmpPDU) PDU {
	p := PDU{OID: strings.TrimPrefix(v.Name, ".")}
	switch v.Type {
	case gosnmp.NoSuchObject:
		p.Missing = "no_such_object"
	case gosnmp.NoSuchInstance, gosnmp.EndOfMibView:
		p.Missing = "no_such_instance"
	case gosnmp.OctetString:
		b, _ := v.Value.([]byte)
		p.Text = string(b)
		f, err := strconv.ParseFloat(strings.TrimSpace(p.Text), 64)
		if err != nil {
			p.Missing = "not_a_number"
		} else {
			p.Value = f
		}
	case gosnmp.OpaqueFloat:
		f, _ := v.Value.(float32)
		p.Value = float64(f)
	case gosnmp.OpaqueDouble:
		p.Value, _ = v.Value.(float64)
	case gosnmp.Integer, gosnmp.Counter32, gosnmp.Gauge32, gosnmp.TimeTicks, gosnmp.Counter64, gosnmp.Uinteger32:
		p.Value, _ = new(big.Float).SetInt(gosnmp.ToBigInt(v.Value)).Float64()
	default:
		p.Missing = "not_a_number"
	}
	if math.IsNaN(p.Value) || math.IsInf(p.Value, 0) {
		p.Missing = "not_a_number"
	}
	return p
}

// Failure reasons, the label values of subsegment_snmp_errors_total.
const (
	ReasonTimeout         = "timeout"
	ReasonAuth            = "auth"
	ReasonNoSuchObject    = "no_such_object"
	ReasonNoSuchInstance  = "no_such_instance"
	ReasonNotANumber      = "not_a_number"
	ReasonUnreachable     = "unreachable"
	ReasonNoSuchInterface = "no_such_interface"
	ReasonWalkLimit       = "walk_limit"
	ReasonError           = "error"
)

// Classify maps an SNMP error to a reason.
func Classify(err error) string {
	var ne net.Error
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, ErrWalkLimit):
		return ReasonWalkLimit
	case errors.Is(err, gosnmp.ErrWrongDigest), errors.Is(err, gosnmp.ErrUnknownUsername), errors.Is(err, gosnmp.ErrDecryption),
		errors.Is(err, gosnmp.ErrUnknownSecurityLevel), errors.Is(err, errAuthorization):
		return ReasonAuth
	case err != nil && (strings.Contains(err.Error(), "packet is not authentic") || strings.Contains(err.Error(), "requires authentication")):
		// gosnmp reports a reply it cannot authenticate (the agent's
		// report, signed with the right key when ours is wrong) with a
		// plain error, no sentinel: match its text.
		return ReasonAuth
	case errors.Is(err, gosnmp.ErrMaxRetriesExceeded), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	case errors.Is(err, syscall.ECONNREFUSED), errors.As(err, &dnsErr), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return ReasonUnreachable
	}
	return ReasonError
}

var errAuthorization = errors.New("authorization error")
