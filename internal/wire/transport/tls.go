// Package transport opens the connections of a chain the same way for
// relays and sources: plain TCP or TLS, with the kernel's receive
// timestamps enabled under either (rxstamp).
//
// Layering (internal/architecture_test.go): floor 1; it imports only
// internal/host and internal/wire, never internal/config, the source end,
// relay or anything above.
package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/rxstamp"
)

// TLSFiles are a hop's TLS settings. With Cert and Key the hop serves TLS
// to its upstream; with CA it dials its next hop (and a source its first
// hop) with TLS, verifying the peer against CA, and presents Cert when it
// has one. ClientAuth makes the serving side require a client certificate
// signed by CA: mutual TLS.
type TLSFiles struct {
	Cert, Key, CA string
	ClientAuth    bool
	// ServerName overrides the name the next hop's certificate is
	// verified for (default: the host of the address dialled).
	ServerName string
}

// Load builds the serving and dialing TLS configurations; either is nil
// when its files are not given.
func (f TLSFiles) Load() (server, client *tls.Config, err error) {
	if (f.Cert == "") != (f.Key == "") {
		return nil, nil, errors.New("--relay.tls-cert-file and --relay.tls-key-file go together")
	}
	var certs []tls.Certificate
	if f.Cert != "" {
		c, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, nil, fmt.Errorf("load TLS certificate %s and key %s: %w", f.Cert, f.Key, err)
		}
		certs = []tls.Certificate{c}
	}
	var pool *x509.CertPool
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, nil, fmt.Errorf("read --relay.tls-ca-file: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--relay.tls-ca-file %s holds no PEM certificate", f.CA)
		}
	}
	if f.ClientAuth && (pool == nil || certs == nil) {
		return nil, nil, errors.New("--relay.tls-client-auth needs --relay.tls-ca-file (to verify clients) and this hop's certificate and key")
	}
	if certs != nil {
		server = &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS12}
		if f.ClientAuth {
			server.ClientAuth = tls.RequireAndVerifyClientCert
			server.ClientCAs = pool
		}
	}
	if pool != nil {
		client = &tls.Config{RootCAs: pool, Certificates: certs, ServerName: f.ServerName, MinVersion: tls.VersionTLS12}
	}
	return server, client, nil
}

// Dialer opens a hop's next connection: TCP (Dial, or a plain dialer),
// kernel receive stamps on the socket, then TLS when TLS is set. The
// handshake is part of the connect time a hop reports.
type Dialer struct {
	// Dial opens the TCP connection; nil uses net.Dialer. Tests give
	// small socket buffers this way.
	Dial func(ctx context.Context, address string) (net.Conn, error)
	// TLS, when set, makes the connection TLS, verified against it.
	TLS *tls.Config
	// Clocks convert the kernel's stamps to the caller's monotonic clock.
	Clocks rxstamp.Clocks
	// KeepAlive is net.Dialer's: 0 for its default, negative for none.
	// Used only when Dial is nil.
	KeepAlive time.Duration
}

// DialContext opens a connection to address.
func (d Dialer) DialContext(ctx context.Context, address string) (net.Conn, error) {
	dial := d.Dial
	if dial == nil {
		nd := net.Dialer{KeepAlive: d.KeepAlive}
		dial = func(ctx context.Context, address string) (net.Conn, error) {
			return nd.DialContext(ctx, "tcp", address)
		}
	}
	conn, err := dial(ctx, address)
	if err != nil {
		return nil, err
	}
	conn = rxstamp.Wrap(conn, d.Clocks)
	if d.TLS == nil {
		return conn, nil
	}
	c := d.TLS.Clone()
	if c.ServerName == "" {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			conn.Close()
			return nil, err
		}
		c.ServerName = host
	}
	tc := tls.Client(conn, c)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS to %s: %w", address, err)
	}
	return tc, nil
}

// Accept prepares an accepted connection the way DialContext prepares a
// dialled one: kernel receive stamps, then TLS when cfg is set (the
// handshake happens at the first read).
func Accept(conn net.Conn, cfg *tls.Config, clocks rxstamp.Clocks) net.Conn {
	conn = rxstamp.Wrap(conn, clocks)
	if cfg == nil {
		return conn
	}
	return tls.Server(conn, cfg)
}
