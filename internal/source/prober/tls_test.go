package prober

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/subsegment/subsegment_exporter/internal/testkit/certtest"
	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/transport"
	"github.com/subsegment/subsegment_exporter/relay"
)

// tlsFor loads a hop's TLS configuration from files issued by ca.
func tlsFor(t *testing.T, ca *certtest.CA, name string, clientAuth bool) (server, client *tls.Config) {
	t.Helper()
	cert, key := ca.Issue(t, name)
	s, c, err := transport.TLSFiles{Cert: cert, Key: key, CA: ca.CAFile, ClientAuth: clientAuth}.Load()
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func TestTLSBetweenHops(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.New(t, dir, "chain")
	other := certtest.New(t, dir, "other")
	for _, tc := range []struct {
		name       string
		clientAuth bool
		source     func() *tls.Config // the source's dialing config; nil: plain TCP
		bTrusts    *certtest.CA       // what b verifies c against
		wantFail   string             // "" or "from>to reason"
	}{
		{"TLS", false, func() *tls.Config { _, c := tlsFor(t, ca, "a", false); c.Certificates = nil; return c }, ca, ""},
		{"mutual TLS", true, func() *tls.Config { _, c := tlsFor(t, ca, "a", false); return c }, ca, ""},
		{"mutual TLS, source without a certificate", true, func() *tls.Config { _, c := tlsFor(t, ca, "a", false); c.Certificates = nil; return c }, ca, "a>"},
		{"source trusting another CA", false, func() *tls.Config { _, c := tlsFor(t, other, "a", false); return c }, ca, "a>"},
		{"plain source to a TLS hop", false, func() *tls.Config { return nil }, ca, "a>"},
		{"b does not trust c", false, func() *tls.Config { _, c := tlsFor(t, ca, "a", false); return c }, other, "b>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := chaintest.Chain(t, chaintest.ChainOptions{Configure: func(name string, cfg *relay.Config) {
				server, client := tlsFor(t, ca, name, tc.clientAuth)
				cfg.TLS = server
				if name == "b" && tc.bTrusts != ca {
					_, client = tlsFor(t, tc.bTrusts, name, false)
				}
				if cfg.ForwardTo != "" {
					cfg.DialTLS = client
				}
			}}, "b", "c", "z")
			o := opts(target)
			if src := tc.source(); src != nil {
				o.TLS = src
			}
			r := run(t, o)
			if tc.wantFail == "" {
				checkTLSSuccess(t, r)
				return
			}
			checkTLSRefusal(t, r, tc.wantFail)
			t.Logf("%s: %s (%s): %s", tc.name, r.Failure.From+" -> "+r.Failure.To, r.Failure.Reason, r.Failure.Message)
		})
	}
}

func checkTLSSuccess(t *testing.T, r *Result) {
	t.Helper()
	if !r.Success {
		t.Fatalf("probe over TLS failed: %+v", r.Failure)
	}
	if s := r.Segment("a", "b"); s.Connect == nil || s.TCP == nil {
		t.Errorf("TLS segment lost connect time or TCP_INFO: %+v", s)
	}
}

// checkTLSRefusal: the failure is on the segment wantFail names
// ("from>to" prefix) for one of the reasons a TLS refusal can show as.
func checkTLSRefusal(t *testing.T, r *Result, wantFail string) {
	t.Helper()
	if r.Failure == nil || !strings.HasPrefix(r.Failure.From+">"+r.Failure.To, wantFail) {
		t.Fatalf("failure %+v, want %s…", r.Failure, wantFail)
	}
	switch r.Failure.Reason {
	case "auth", "closed", "reset", "bad_frame":
	default:
		t.Errorf("reason %q for a TLS refusal", r.Failure.Reason)
	}
}

func TestTLSFilesErrors(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.New(t, dir, "x")
	cert, key := ca.Issue(t, "b")
	for _, tc := range []struct {
		f    transport.TLSFiles
		want string
	}{
		{transport.TLSFiles{Cert: cert}, "go together"},
		{transport.TLSFiles{Cert: cert, Key: key, ClientAuth: true}, "needs --relay.tls-ca-file"},
		{transport.TLSFiles{CA: cert + ".missing"}, "read --relay.tls-ca-file"},
		{transport.TLSFiles{Cert: key, Key: cert}, "load TLS certificate"},
	} {
		if _, _, err := tc.f.Load(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.f, err, tc.want)
		}
	}
}
