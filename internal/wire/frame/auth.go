package frame

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"hash"
	"sync/atomic"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// MinKeyLen is the shortest shared key accepted: shorter keys are guessable.
const MinKeyLen = 16

// ErrAuth marks frames refused because of their signature.
var ErrAuth = peer.NewError(peer.ReasonAuth, "authentication failed")

// Keys are the shared HMAC keys of a chain. The first key signs; every key
// verifies, so a rollover is: add the new key second everywhere, then move
// it first everywhere, then drop the old one.
type Keys [][]byte

// ParseKeys parses the contents of a key file (read by the rule of every
// secret file, config.ReadKeyFile): one key per non-empty line, the first
// signing; name says which file in errors.
func ParseKeys(data []byte, name string) (Keys, error) {
	var keys Keys
	for i, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if len(line) < MinKeyLen {
			return nil, fmt.Errorf("auth key file %s line %d: key is %d bytes, at least %d needed (e.g. `openssl rand -hex 32`)", name, i+1, len(line), MinKeyLen)
		}
		keys = append(keys, line)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("auth key file %s holds no key: put one key per line (e.g. `openssl rand -hex 32 > %s`)", name, name)
	}
	if len(keys) > 2 {
		return nil, fmt.Errorf("auth key file %s holds %d keys: at most 2 (the signing key, and the other one during a rollover)", name, len(keys))
	}
	return keys, nil
}

// KeyRing holds a process's current keys: a reload replaces them (Set).
// A session follows them (KeyRing.Signer, Signer.Follow): a key dropped
// from the ring is refused on the connections already open too, not only
// on those opened afterwards, so that dropping a key revokes it. A nil
// ring holds no keys.
type KeyRing struct {
	keys    atomic.Pointer[Keys]
	version atomic.Uint64
}

// NewKeyRing returns a ring holding keys.
func NewKeyRing(keys Keys) *KeyRing {
	r := &KeyRing{}
	r.Set(keys)
	return r
}

// Current is the keys sessions use from now on.
func (r *KeyRing) Current() Keys {
	if r == nil {
		return nil
	}
	if k := r.keys.Load(); k != nil {
		return *k
	}
	return nil
}

// Set makes keys the ones every session uses from its next frame on.
func (r *KeyRing) Set(keys Keys) {
	r.keys.Store(&keys)
	r.version.Add(1)
}

// Version changes with every Set: what holds keys (a session's Signer, a
// STAMP reflector) sees that it must take them again.
func (r *KeyRing) Version() uint64 {
	if r == nil {
		return 0
	}
	return r.version.Load()
}

// Signer signs and verifies frames for one goroutine; it keeps its hash
// state and scratch space so that signing does not allocate.
type Signer struct {
	macs []hash.Hash
	sum  [sha256.Size]byte
	// ring, when set, is where Follow takes new keys from; version is the
	// ring's version macs were made from.
	ring    *KeyRing
	version uint64
}

// NewSigner returns a signer for keys; with no keys it signs nothing and
// accepts only unsigned frames. It keeps its keys (Follow does nothing).
func NewSigner(keys Keys) *Signer {
	s := &Signer{}
	s.use(keys)
	return s
}

// Signer returns a signer of the ring's current keys that Follow keeps
// current: a relay session's, for as long as its connection lasts.
func (r *KeyRing) Signer() *Signer {
	s := &Signer{ring: r, version: r.Version()}
	s.use(r.Current())
	return s
}

// Follow takes the ring's keys when a reload changed them since the
// signer's were taken: from then on frames signed with a key the ring no
// longer holds are refused (ErrAuth), and what the signer signs carries
// the ring's first key. While nothing changed it costs one atomic load
// and allocates nothing. The goroutine that owns the signer calls it
// before each read's frames and each batch it signs.
func (s *Signer) Follow() {
	if s.ring == nil {
		return
	}
	v := s.ring.version.Load()
	if v == s.version {
		return
	}
	// The version first, then the keys: a Set in between gives newer
	// keys, taken again (unchanged) at the next call.
	s.version = v
	s.use(s.ring.Current())
}

func (s *Signer) use(keys Keys) {
	s.macs = s.macs[:0]
	for _, k := range keys {
		s.macs = append(s.macs, hmac.New(sha256.New, k))
	}
}

// Enabled reports whether frames are signed.
func (s *Signer) Enabled() bool { return s != nil && len(s.macs) > 0 }

// HeaderFlags are the header flags a frame from this signer carries.
func (s *Signer) HeaderFlags() uint8 {
	if s.Enabled() {
		return FlagSigned
	}
	return 0
}

// TrailerLen is the number of bytes the signature adds to a frame.
func (s *Signer) TrailerLen() int {
	if s.Enabled() {
		return MACLen
	}
	return 0
}

// Sign returns the MAC over the concatenation of parts (the frame as it
// will be written, without its trailer). The result is valid until the next
// call. It returns nil when signing is disabled.
func (s *Signer) Sign(parts ...[]byte) []byte {
	if !s.Enabled() {
		return nil
	}
	m := s.macs[0]
	m.Reset()
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(s.sum[:0])
}

// Verify checks a complete frame against every key. Without keys only
// unsigned frames pass; with keys only correctly signed ones do.
func (s *Signer) Verify(frame []byte) error {
	if !s.Enabled() {
		// Only the flag matters here; the header itself is every
		// caller's next check (Parse, ParseHeader).
		if len(frame) >= HeaderLen && frame[6]&FlagSigned != 0 {
			return fmt.Errorf("%w: frame is signed but this hop has no key (set --relay.auth-key-file)", ErrAuth)
		}
		return nil
	}
	h, err := ParseHeader(frame, len(frame))
	if err != nil {
		return err
	}
	if !h.Signed() {
		return fmt.Errorf("%w: unsigned frame refused: this hop requires HMAC-signed frames", ErrAuth)
	}
	end := h.FrameLen()
	if end > len(frame) || end < HeaderLen+MACLen {
		return fmt.Errorf("%w: signed frame too short for its trailer", ErrTruncated)
	}
	body, mac := frame[:end-MACLen], frame[end-MACLen:end]
	for _, m := range s.macs {
		m.Reset()
		m.Write(body)
		if hmac.Equal(m.Sum(s.sum[:0]), mac) {
			return nil
		}
	}
	return fmt.Errorf("%w: bad signature (forged frame, or a different key)", ErrAuth)
}
