package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
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

// DialTLS dials with TCP and completes a TLS handshake; the handshake is
// part of the connect time a hop reports.
func DialTLS(cfg *tls.Config) func(ctx context.Context, address string) (net.Conn, error) {
	return func(ctx context.Context, address string) (net.Conn, error) {
		c := cfg.Clone()
		if c.ServerName == "" {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return nil, err
			}
			c.ServerName = host
		}
		d := tls.Dialer{Config: c}
		conn, err := d.DialContext(ctx, "tcp", address)
		if err != nil {
			return nil, fmt.Errorf("TLS to %s: %w", address, err)
		}
		return conn, nil
	}
}
