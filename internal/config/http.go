package config

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// Probers a module can use.
const (
	// ProberTCP probes a chain of relays (the default).
	ProberTCP = "tcp"
	// ProberHTTP probes a URL through HTTP proxies that each add a
	// Subsegment-Timing response header.
	ProberHTTP = "http"
)

// HTTPProbe is how an http module asks for its URL.
type HTTPProbe struct {
	// Method of every request (GET).
	Method string `yaml:"method,omitempty"`
	// Headers added to every request. Their values are never shown
	// (/config, debug output): they often carry credentials. After
	// loading, Headers holds the values of HeaderFiles too.
	Headers map[string]Secret `yaml:"headers,omitempty"`
	// HeaderFiles are headers whose values are read from files (a
	// relative path starts at the configuration file's directory), at
	// load and at every reload: header name -> file.
	HeaderFiles map[string]string `yaml:"header_files,omitempty"`
	// Host overrides the Host header (default: the URL's host).
	Host string `yaml:"host,omitempty"`
	// ValidStatusCodes are the statuses that count as success (any 2xx).
	ValidStatusCodes []int `yaml:"valid_status_codes,omitempty"`
	// TLS is for https targets.
	TLS *HTTPTLS `yaml:"tls,omitempty"`
	// Hops are the proxies expected to stamp, outermost first: a proxy
	// that stops stamping is then reported (bad_header) instead of
	// silently merging two segments into one.
	Hops []string `yaml:"hops,omitempty"`
	// Backend labels what the innermost proxy forwards to ("backend").
	// When the backend stamps a Subsegment-Timing entry under this name
	// itself, it gets a residence and the segment to it is exact.
	Backend string `yaml:"backend,omitempty"`
	// tls is built from TLS at load, so that a probe reads no file.
	tls *tls.Config
	// tlsFiles is a digest of the TLS files' contents as loaded: a new
	// certificate or key changes the module's fingerprint.
	tlsFiles [sha256.Size]byte
}

// MarshalYAML shows the headers read from files by their files only.
func (h HTTPProbe) MarshalYAML() (any, error) {
	type plain HTTPProbe
	p := plain(h)
	if len(h.HeaderFiles) > 0 {
		p.Headers = map[string]Secret{}
		for k, v := range h.Headers {
			if _, fromFile := h.HeaderFiles[k]; !fromFile {
				p.Headers[k] = v
			}
		}
	}
	return p, nil
}

// HTTPTLS verifies an https target's first proxy.
type HTTPTLS struct {
	CAFile     string `yaml:"ca_file,omitempty"`
	CertFile   string `yaml:"cert_file,omitempty"`
	KeyFile    string `yaml:"key_file,omitempty"`
	ServerName string `yaml:"server_name,omitempty"`
	// InsecureSkipVerify accepts any certificate: for labs only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify,omitempty"`
}

// DefaultBackend labels the hop behind the innermost proxy.
const DefaultBackend = "backend"

// headersSetByTheProber cannot be set in http.headers: the prober writes
// them (Host has its own key), and a second copy would make the request
// ambiguous to the proxies.
var headersSetByTheProber = []string{"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "trailer"}

func (m *Module) validateProber(path, dir string, limits Limits) error {
	switch m.Prober {
	case "":
		m.Prober = ProberTCP
	case ProberTCP, ProberHTTP:
	case ProberSTAMP:
		return m.validateSTAMP(path, limits)
	default:
		return bad(path+".prober", "%q unknown: use tcp (a chain of relays), http (a URL through HTTP proxies) or stamp (a STAMP reflector)", m.Prober)
	}
	if m.STAMP != nil {
		return bad(path+".stamp", "stamp options need prober: stamp in the same module")
	}
	if m.Prober == ProberTCP {
		if m.HTTP != nil {
			return bad(path+".http", "http options need prober: http in the same module")
		}
		return nil
	}
	if m.PayloadBytes != 0 {
		return bad(path+".payload_bytes", "not used by prober: http (requests carry no padding): remove it")
	}
	if m.Inband != "" && m.Inband != InbandNever {
		return bad(path+".inband", "HTTP proxies cannot attach variables to a request: use snmp for their context")
	}
	if m.HTTP == nil {
		m.HTTP = &HTTPProbe{}
	}
	return m.HTTP.validate(path+".http", dir)
}

func (h *HTTPProbe) validate(path, dir string) error {
	if h.Method == "" {
		h.Method = "GET"
	}
	if !isToken(h.Method) || strings.ToUpper(h.Method) != h.Method {
		return bad(path+".method", "%q is not an HTTP method: use GET, HEAD, POST, …", h.Method)
	}
	if err := h.validateHeaders(path, dir); err != nil {
		return err
	}
	if h.Host != "" {
		host := h.Host
		if hh, _, err := net.SplitHostPort(h.Host); err == nil {
			host = hh
		}
		if host == "" || strings.ContainsAny(h.Host, " \t\r\n\x00/@") {
			return bad(path+".host", "%q is not host or host:port", h.Host)
		}
	}
	for i, code := range h.ValidStatusCodes {
		if code < 100 || code > 599 {
			return bad(fmt.Sprintf("%s.valid_status_codes[%d]", path, i), "%d is not an HTTP status (100-599)", code)
		}
	}
	for i, hop := range h.Hops {
		if err := peer.ValidateName(hop); err != nil {
			return bad(fmt.Sprintf("%s.hops[%d]", path, i), "%v", err)
		}
	}
	if h.Backend == "" {
		h.Backend = DefaultBackend
	}
	if err := peer.ValidateName(h.Backend); err != nil {
		return bad(path+".backend", "%v", err)
	}
	if t := h.TLS; t != nil && (t.CertFile == "") != (t.KeyFile == "") {
		return bad(path+".tls", "cert_file and key_file go together")
	}
	c, digest, err := h.TLS.build(dir)
	if err != nil {
		return bad(path+".tls", "%v", err)
	}
	h.tls, h.tlsFiles = c, digest
	return nil
}

// validateHeaders checks headers and header_files, and reads the files
// into Headers.
func (h *HTTPProbe) validateHeaders(path, dir string) error {
	name := func(p, name string) error {
		if !isToken(name) {
			return bad(p, "%q is not a header name", name)
		}
		if slices.Contains(headersSetByTheProber, strings.ToLower(name)) {
			return bad(p, "%s is set by the prober (for Host use http.host)", name)
		}
		return nil
	}
	for _, k := range sortedKeys(h.Headers) {
		p := path + ".headers." + k
		if err := name(p, k); err != nil {
			return err
		}
		if strings.ContainsAny(string(h.Headers[k]), "\r\n\x00") {
			return bad(p, "value holds a line break or NUL")
		}
	}
	for _, k := range sortedKeys(h.HeaderFiles) {
		p := path + ".header_files." + k
		if err := name(p, k); err != nil {
			return err
		}
		for other := range h.Headers {
			if strings.EqualFold(other, k) {
				return bad(p, "%s is in headers too: keep one", k)
			}
		}
	}
	for _, k := range sortedKeys(h.HeaderFiles) {
		p := path + ".header_files." + k
		file := resolvePath(dir, h.HeaderFiles[k])
		h.HeaderFiles[k] = file
		v, err := ReadSecretFile(file)
		if err != nil {
			return bad(p, "%v", err)
		}
		if strings.ContainsAny(string(v), "\r\n\x00") {
			return bad(p, "%s holds more than one line, or a NUL: a header value is one line", file)
		}
		if h.Headers == nil {
			h.Headers = map[string]Secret{}
		}
		h.Headers[k] = v
	}
	return nil
}

// TLSConfig is the configuration of https targets' connections.
func (h *HTTPProbe) TLSConfig() *tls.Config { return h.tls }

// build makes the TLS configuration of an https target's connection,
// and a digest of the files it read.
func (t *HTTPTLS) build(dir string) (*tls.Config, [sha256.Size]byte, error) {
	digest := sha256.New()
	var sum [sha256.Size]byte
	if t == nil {
		return &tls.Config{MinVersion: tls.VersionTLS12}, sum, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // an explicit, documented lab option
	t.CAFile, t.CertFile, t.KeyFile = resolvePath(dir, t.CAFile), resolvePath(dir, t.CertFile), resolvePath(dir, t.KeyFile)
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, sum, fmt.Errorf("read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, sum, fmt.Errorf("ca_file %s holds no PEM certificate", t.CAFile)
		}
		c.RootCAs = pool
		digest.Write(pem)
	}
	if t.CertFile != "" {
		certPEM, err := os.ReadFile(t.CertFile)
		if err != nil {
			return nil, sum, fmt.Errorf("read cert_file: %w", err)
		}
		keyPEM, err := os.ReadFile(t.KeyFile)
		if err != nil {
			return nil, sum, fmt.Errorf("read key_file: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, sum, fmt.Errorf("load cert_file %s and key_file %s: %w", t.CertFile, t.KeyFile, err)
		}
		c.Certificates = []tls.Certificate{cert}
		digest.Write(certPEM)
		digest.Write(keyPEM)
	}
	digest.Sum(sum[:0])
	return c, sum, nil
}

// IsHTTP reports whether the module probes URLs.
func (m *Module) IsHTTP() bool { return m.Prober == ProberHTTP }

// ValidStatus reports whether an http module counts status as success.
func (h *HTTPProbe) ValidStatus(status int) bool {
	if len(h.ValidStatusCodes) == 0 {
		return status >= 200 && status < 300
	}
	return slices.Contains(h.ValidStatusCodes, status)
}

// isToken is RFC 9110's token: what a method and a header name are.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// DefaultModule is the module of a command run without --config.file:
// every default, probing relays, HTTP proxies for a URL target, or a
// STAMP reflector for a stamp:// target.
func DefaultModule(target string, timeout time.Duration) *Module {
	m := &Module{Probes: DefaultProbes, Interval: Duration(DefaultInterval), Timeout: Duration(timeout), Inband: InbandNever, Prober: ProberTCP, Trace: TraceOnViolation}
	if peer.IsHTTPTarget(target) {
		m.Prober, m.HTTP, m.Trace = ProberHTTP, &HTTPProbe{}, TraceNever
		_ = m.HTTP.validate("http", "") // fills in the defaults; they are valid
	}
	if peer.IsSTAMPTarget(target) {
		m.Prober, m.STAMP, m.Trace = ProberSTAMP, &STAMPProbe{}, TraceNever
		_ = m.STAMP.validate("stamp") // fills in the defaults; they are valid
	}
	return m
}
