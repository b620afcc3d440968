package snmp

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// Local is a relay's own variables, attached to probes that ask for them
// (in-band context): the source then learns a hop's load even where it
// cannot reach the hop's SNMP port. Values come from /proc or from the
// local SNMP agent, are refreshed in the background, and are never read on
// the relay's hot path.
type Local struct {
	vars     []localVar
	procRoot string
	client   Client
	agent    Target
	refresh  time.Duration

	mu         sync.Mutex
	snapshot   []frame.Var
	at         time.Time
	refreshing bool
	lastErr    error
}

type localVar struct {
	name  string
	kind  string // "loadavg", "netdev", "oid"
	index int    // loadavg field, or /proc/net/dev column
	iface string
	oid   string
}

// Interface counters from /proc/net/dev, by their column.
var netdevColumns = map[string]int{
	"if_in_bytes": 0, "if_in_packets": 1, "if_in_errors": 2, "if_in_drops": 3,
	"if_out_bytes": 8, "if_out_packets": 9, "if_out_errors": 10, "if_out_drops": 11,
}

var localOIDRE = regexp.MustCompile(`^\.?[0-9]+(\.[0-9]+)+$`)

// LocalOptions configure a relay's in-band variables.
type LocalOptions struct {
	// Specs are "[name=]source": load1, load5, load15, a counter of an
	// interface (if_in_errors:eth0; see netdevColumns) or a numeric OID of
	// the local agent.
	Specs []string
	// Agent is the local agent (host:port) for OID variables, v2c.
	Agent     string
	Community string
	// Refresh is how old the attached values may be.
	Refresh  time.Duration
	ProcRoot string
	Client   Client
}

// NewLocal parses the specs and reads the values once.
func NewLocal(o LocalOptions) (*Local, error) {
	if o.Refresh <= 0 {
		o.Refresh = time.Second
	}
	if o.ProcRoot == "" {
		o.ProcRoot = "/proc"
	}
	if o.Client == nil {
		o.Client = GoSNMP{}
	}
	l := &Local{procRoot: o.ProcRoot, client: o.Client, refresh: o.Refresh,
		agent: Target{Hop: "local", Address: o.Agent, Auth: &config.Auth{Version: 2, Community: config.Secret(o.Community)}}}
	seen := map[string]bool{}
	for _, spec := range o.Specs {
		v, err := parseLocal(spec)
		if err != nil {
			return nil, err
		}
		if seen[v.name] {
			return nil, fmt.Errorf("in-band variable %q named twice: give one of them a name (name=source)", v.name)
		}
		seen[v.name] = true
		if v.kind == "oid" && o.Agent == "" {
			return nil, fmt.Errorf("in-band variable %q reads OID %s: set --inband.snmp-agent", v.name, v.oid)
		}
		l.vars = append(l.vars, v)
	}
	if len(l.vars) > frame.MaxVars {
		return nil, fmt.Errorf("%d in-band variables: at most %d fit in a record", len(l.vars), frame.MaxVars)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	l.read(ctx)
	return l, nil
}

func parseLocal(spec string) (localVar, error) {
	name, source, named := strings.Cut(spec, "=")
	if !named {
		source = spec
		name, _, _ = strings.Cut(spec, ":")
	}
	var v localVar
	switch {
	case source == "load1" || source == "load5" || source == "load15":
		v = localVar{kind: "loadavg", index: map[string]int{"load1": 0, "load5": 1, "load15": 2}[source]}
	case strings.Contains(source, ":"):
		counter, iface, _ := strings.Cut(source, ":")
		col, ok := netdevColumns[counter]
		if !ok || iface == "" {
			return localVar{}, fmt.Errorf("in-band variable %q: %q is not an interface counter: use if_in_bytes, if_in_packets, if_in_errors, if_in_drops or their if_out_ forms, then :interface", spec, counter)
		}
		v = localVar{kind: "netdev", index: col, iface: iface}
	case localOIDRE.MatchString(source):
		if !named {
			return localVar{}, fmt.Errorf("in-band variable %q: an OID needs a name: name=%s", spec, source)
		}
		v = localVar{kind: "oid", oid: strings.TrimPrefix(source, ".")}
	default:
		return localVar{}, fmt.Errorf("in-band variable %q: source %q unknown: use load1, load5, load15, a counter like if_in_errors:eth0, or name=OID", spec, source)
	}
	if err := peer.ValidateVarName(name); err != nil {
		return localVar{}, fmt.Errorf("in-band variable %q: %w", spec, err)
	}
	v.name = name
	return v, nil
}

// Snapshot returns the latest values without waiting; when they are older
// than the refresh interval it starts a refresh in the background.
func (l *Local) Snapshot() []frame.Var {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.at) > l.refresh && !l.refreshing {
		l.refreshing = true
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), l.refresh)
			defer cancel()
			l.read(ctx)
		}()
	}
	return l.snapshot
}

// Err is the last read's error, if any.
func (l *Local) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

// read collects every variable and publishes a new snapshot.
func (l *Local) read(ctx context.Context) {
	r := localRead{procRoot: l.procRoot}
	var oidVars []localVar
	for _, v := range l.vars {
		switch v.kind {
		case "loadavg":
			r.loadavg(v)
		case "netdev":
			r.netdev(v)
		case "oid":
			oidVars = append(oidVars, v)
		}
	}
	if len(oidVars) > 0 {
		l.readOIDs(ctx, &r, oidVars)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.snapshot, l.at, l.refreshing = r.vals, time.Now(), false
	l.lastErr = nil
	if len(r.errs) > 0 {
		l.lastErr = fmt.Errorf("in-band variables: %s", strings.Join(r.errs, "; "))
	}
}

// localRead is one read of the local variables: what was read, what
// failed, and the /proc files, each read once (again only after a
// failure).
type localRead struct {
	procRoot   string
	vals       []frame.Var
	errs       []string
	loadavgs   []string
	interfaces map[string][]string
}

func (r *localRead) loadavg(v localVar) {
	if r.loadavgs == nil {
		b, err := os.ReadFile(filepath.Join(r.procRoot, "loadavg"))
		if err != nil {
			r.errs = append(r.errs, err.Error())
			return
		}
		r.loadavgs = strings.Fields(string(b))
	}
	f, err := column(r.loadavgs, v.index)
	if err != nil {
		r.errs = append(r.errs, fmt.Sprintf("%s: %s/loadavg: %v", v.name, r.procRoot, err))
		return
	}
	r.vals = append(r.vals, frame.Var{Name: v.name, Value: f})
}

func (r *localRead) netdev(v localVar) {
	if len(r.interfaces) == 0 {
		var err error
		if r.interfaces, err = readNetdev(filepath.Join(r.procRoot, "net", "dev")); err != nil {
			r.errs = append(r.errs, err.Error())
			return
		}
	}
	cols, ok := r.interfaces[v.iface]
	if !ok {
		r.errs = append(r.errs, fmt.Sprintf("%s: no interface %q in /proc/net/dev", v.name, v.iface))
		return
	}
	f, err := column(cols, v.index)
	if err != nil {
		r.errs = append(r.errs, fmt.Sprintf("%s: %s/net/dev interface %s: %v", v.name, r.procRoot, v.iface, err))
		return
	}
	r.vals = append(r.vals, frame.Var{Name: v.name, Value: f})
}

// readOIDs asks the local agent for the OID variables, in one request.
func (l *Local) readOIDs(ctx context.Context, r *localRead, vars []localVar) {
	oids := make([]string, len(vars))
	for i, v := range vars {
		oids[i] = v.oid
	}
	timeout := time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), 10*time.Millisecond)
	}
	pdus, err := l.client.Get(ctx, l.agent, oids, Attempt{Timeout: timeout})
	if err != nil {
		r.errs = append(r.errs, fmt.Sprintf("local agent %s: %v", l.agent.Address, err))
	}
	for i, p := range pdus {
		if i < len(vars) && p.Missing == "" {
			r.vals = append(r.vals, frame.Var{Name: vars[i].name, Value: p.Value})
		}
	}
}

// readNetdev reads /proc/net/dev into interface → counter columns.
func readNetdev(path string) (map[string][]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseNetdev(b), nil
}

// parseNetdev splits /proc/net/dev: "iface: counters…" lines; the two
// header lines have no colon.
func parseNetdev(b []byte) map[string][]string {
	out := map[string][]string{}
	for line := range strings.Lines(string(b)) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		out[strings.TrimSpace(name)] = strings.Fields(rest)
	}
	return out
}

// column parses field i of a /proc line as a number.
func column(fields []string, i int) (float64, error) {
	if i >= len(fields) {
		return 0, fmt.Errorf("%d fields, column %d missing", len(fields), i+1)
	}
	f, err := strconv.ParseFloat(fields[i], 64)
	if err != nil {
		return 0, fmt.Errorf("column %d: %w", i+1, err)
	}
	return f, nil
}
