package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync/atomic"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// Fingerprint is a digest of everything that decides what the probes of
// a continuous entry send and record: the entry, its module, the SNMP
// credentials of the module's hops, every secret by value (including
// those read from *_file keys) and the contents of the TLS files the
// module names, and for modules that sign with them (all but http) the
// chain's keys (UseKeys). Two loads give equal fingerprints only when the entry
// would probe alike, so a reload keeps an entry's runner exactly when
// nothing it sends changed. Secrets leave this function only inside a
// SHA-256.
func (c *Config) Fingerprint(e Continuous) string {
	m := c.Modules[e.Module]
	in := struct {
		Entry    Continuous
		Module   *Module
		Auths    map[string]*Auth
		TLSFiles string
		Keys     string
	}{Entry: e, Module: m, Auths: map[string]*Auth{}}
	if m != nil && m.Prober != ProberHTTP {
		in.Keys = c.keys
	}
	if m != nil && m.SNMP != nil {
		for _, h := range m.SNMP.Hops {
			if h != nil {
				in.Auths[h.Auth] = c.Auths[h.Auth]
			}
		}
	}
	if m != nil && m.HTTP != nil {
		in.TLSFiles = hex.EncodeToString(m.HTTP.tlsFiles[:])
	}
	// JSON, not YAML: Secret redacts itself in YAML only, and JSON
	// writes map keys in order.
	b, err := json.Marshal(in)
	if err != nil {
		// Not expected (every value is validated finite); a fingerprint
		// that equals no other makes the entry restart, which is safe.
		return fmt.Sprintf("unfingerprinted %d: %v", unfingerprinted.Add(1), err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

var unfingerprinted atomic.Uint64

// UseKeys records the chain's keys the process probes with (the keys of
// --relay.auth-key-file as loaded with this configuration), so that a
// reload that rotates them restarts the continuous entries that sign
// with them: their sessions open again, with the new keys.
func (c *Config) UseKeys(keys frame.Keys) {
	h := sha256.New()
	for _, k := range keys {
		h.Write(k)
		h.Write([]byte{'\n'})
	}
	c.keys = hex.EncodeToString(h.Sum(nil))
}
