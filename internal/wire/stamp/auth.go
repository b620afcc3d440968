package stamp

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"hash"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
)

// ErrAuth marks a packet whose HMAC does not verify with any key.
var ErrAuth = errors.New("STAMP HMAC does not verify (forged packet, or a different key)")

// ErrNoKey is authenticated mode without a key.
var ErrNoKey = errors.New("authenticated STAMP needs a key (--relay.auth-key-file)")

// Auth computes and checks STAMP's HMAC-SHA-256 truncated to 128 bits
// (RFC 8762 §4.4) with the chain's keys (frame.ParseKeys: one per line, the
// first signs, every one verifies, so a rollover works as for frames). It
// keeps its hash states and scratch space so that it does not allocate;
// one Auth serves one goroutine.
type Auth struct {
	macs []hash.Hash
	sum  [sha256.Size]byte
}

// NewAuth returns an Auth for keys; nil when there are none.
func NewAuth(keys frame.Keys) *Auth {
	if len(keys) == 0 {
		return nil
	}
	a := &Auth{}
	for _, k := range keys {
		a.macs = append(a.macs, hmac.New(sha256.New, k))
	}
	return a
}

// mac returns the truncated HMAC of parts with key i; valid until the next
// call.
func (a *Auth) mac(i int, parts ...[]byte) []byte {
	m := a.macs[i]
	m.Reset()
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(a.sum[:0])[:HMACLen]
}

// find returns the index of the key whose HMAC of parts equals want; -1
// when none does. The comparison is constant-time.
func (a *Auth) find(want []byte, parts ...[]byte) int {
	if a == nil || len(want) != HMACLen {
		return -1
	}
	for i := range a.macs {
		if hmac.Equal(a.mac(i, parts...), want) {
			return i
		}
	}
	return -1
}

// Verify checks the HMAC field of an authenticated packet (sender's or
// reflector's: both cover the first 96 octets) and returns the index of
// the key that signed it, for the reply to be signed with the same key.
func (a *Auth) Verify(pkt []byte) (int, error) {
	if err := checkLen(pkt, Authenticated); err != nil {
		return -1, err
	}
	if a == nil {
		return -1, ErrNoKey
	}
	l := &layouts[Authenticated]
	k := a.find(pkt[l.hmac:l.hmac+HMACLen], pkt[:l.hmac])
	if k < 0 {
		return -1, ErrAuth
	}
	return k, nil
}

// Sign fills the HMAC field of an authenticated packet with key k (0: the
// signing key).
func (a *Auth) Sign(pkt []byte, k int) error {
	if err := checkLen(pkt, Authenticated); err != nil {
		return err
	}
	if a == nil {
		return ErrNoKey
	}
	if k < 0 || k >= len(a.macs) {
		k = 0
	}
	l := &layouts[Authenticated]
	copy(pkt[l.hmac:l.hmac+HMACLen], a.mac(k, pkt[:l.hmac]))
	return nil
}

// tlvMAC is the HMAC TLV's value (RFC 8972 §4.8): over the packet's
// Sequence Number and every TLV before the HMAC TLV.
func (a *Auth) tlvMAC(k int, seq, tlvs []byte) []byte {
	return a.mac(k, seq, tlvs)
}
