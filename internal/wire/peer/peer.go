// Package peer holds the rules about what a hop of a chain is and what it
// may say: its name and identity, the addresses it dials, the reasons a
// segment fails, the longest duration it may report, and which strings from the network may become labels,
// perfdata or terminal output. Both ends of a chain (relays and sources)
// import it; it imports nothing of the project, so the wire format can
// apply the same rules when it decodes what a peer sent.
//
// Layering (internal/architecture_test.go): floor 1.
package peer

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxNameLen bounds hop names and variable names.
const MaxNameLen = 64

// MaxPeerLen bounds the other end of a failed segment as an error record
// names it (a hop name, or an address).
const MaxPeerLen = 255

// MaxMessageLen bounds the human-readable text of an error record.
const MaxMessageLen = 512

// MaxDuration bounds every duration a peer reports (a relay's record, a
// proxy's Subsegment-Timing entry, a reflector's timestamps): no
// operation of a hop lasts a day, so a larger value is a broken or
// hostile peer.
const MaxDuration = 24 * time.Hour

// ValidateName checks a hop name: it becomes a label value, a perfdata
// label and a table cell, so it is short and plain: letters, digits, '.',
// '-' and '_', at most 64 bytes.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("relay name is empty: set --relay.name")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("relay name %q is %d bytes, at most %d allowed", name, len(name), MaxNameLen)
	}
	if i := badNameByte(name); i >= 0 {
		return fmt.Errorf("relay name %q has %s at byte %d: use letters, digits, '.', '-' and '_'", name, describeByte(name, i), i)
	}
	return nil
}

// CheckNameBytes is ValidateName for bytes read in place from a frame; it
// does not allocate unless it fails.
func CheckNameBytes(b []byte) error {
	if len(b) == 0 {
		return errors.New("empty name")
	}
	if len(b) > MaxNameLen {
		return fmt.Errorf("name of %d bytes, at most %d allowed", len(b), MaxNameLen)
	}
	for i, c := range b {
		if !nameByte(c) {
			return fmt.Errorf("name %q has %s at byte %d (allowed: letters, digits, '.', '-', '_')", b, describeByte(string(b), i), i)
		}
	}
	return nil
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}

func badNameByte(s string) int {
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return i
		}
	}
	return -1
}

// describeByte names the offending byte of s at i for an error message,
// safely for any input.
func describeByte(s string, i int) string {
	r, size := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && size <= 1 {
		return fmt.Sprintf("the byte %#02x (not UTF-8)", s[i])
	}
	return fmt.Sprintf("%q", r)
}

// DefaultName is the full host name, the original tool's notion of a hop:
// web1.dc1 and web1.dc2 stay apart. Characters a name may not hold become
// '-', and a name longer than 64 bytes keeps its first 64.
func DefaultName() string {
	h, err := os.Hostname()
	if err != nil {
		return "source"
	}
	return SanitizeName(h)
}

// SanitizeName turns any text into a valid name ("source" when nothing
// of it is usable).
func SanitizeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !nameByte(c) {
			b[i] = '-'
		}
	}
	out := strings.Trim(string(b), "-")
	if len(out) > MaxNameLen {
		out = out[:MaxNameLen]
	}
	if out == "" {
		return "source"
	}
	return out
}

// NewID returns a random hop identity: the key every computation uses to
// tell hops apart (names only label them), and the key of loop detection.
func NewID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			// crypto/rand does not fail on Linux; if it ever does, a
			// time-derived identity still tells processes apart.
			return fallbackID()
		}
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// ValidateVarName checks the name of a variable (SNMP or in-band): it
// becomes a label name of subsegment_sla_violation_info, next to the
// labels every such metric has.
func ValidateVarName(name string) error {
	if name == "" {
		return errors.New("variable name is empty")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("variable name %q is %d bytes, at most %d allowed", name, len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !labelNameByte(c, i) {
			return fmt.Errorf("variable name %q is not usable as a label name: use letters, digits and _, not starting with a digit", name)
		}
	}
	if strings.HasPrefix(name, "__") {
		return fmt.Errorf("variable name %q starts with __, which Prometheus reserves", name)
	}
	if reservedLabels[name] {
		return fmt.Errorf("variable name %q is taken by a fixed label: none of %s", name, ReservedLabelList)
	}
	return nil
}

func labelNameByte(c byte, i int) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9'
}

// reservedLabels are label names the metrics carrying variables already
// have, or that Prometheus attaches while scraping.
var reservedLabels = map[string]bool{"from": true, "to": true, "hop": true, "source": true, "name": true, "instance": true, "job": true, "module": true, "target": true, "le": true, "quantile": true}

// ReservedLabelList lists the reserved label names for messages and docs.
const ReservedLabelList = "from, to, hop, source, name, instance, job, module, target, le, quantile"

// CheckText checks a free text from a peer (an error message): valid UTF-8
// without control characters, at most max bytes. Such text reaches logs,
// plugin output and the terminal.
func CheckText(b []byte, max int) error {
	if len(b) > max {
		return fmt.Errorf("text of %d bytes, at most %d allowed", len(b), max)
	}
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			return fmt.Errorf("text is not UTF-8 (byte %#02x at %d)", b[i], i)
		}
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("text has the control character %U at byte %d", r, i)
		}
		i += size
	}
	return nil
}

// CheckPeerBytes checks how an error record names the other end of a
// failed segment: a hop name or an address (host:port, [v6]:port).
func CheckPeerBytes(b []byte) error {
	if len(b) == 0 {
		return errors.New("empty peer")
	}
	if len(b) > MaxPeerLen {
		return fmt.Errorf("peer of %d bytes, at most %d allowed", len(b), MaxPeerLen)
	}
	for i, c := range b {
		if !nameByte(c) && c != ':' && c != '[' && c != ']' && c != '%' {
			return fmt.Errorf("peer %q has %s at byte %d (allowed: a hop name or host:port)", b, describeByte(string(b), i), i)
		}
	}
	return nil
}

// SanitizeText makes text safe to send as an error message: invalid UTF-8
// and control characters become '?' and ' ', and it is cut to at most max
// bytes at a character boundary, so the receiver's CheckText accepts it.
func SanitizeText(s string, max int) string {
	var b []byte
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			r = '?'
		case r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 || r == '\u2028' || r == '\u2029':
			r = ' '
		}
		if len(b)+utf8.RuneLen(r) > max {
			break
		}
		b = utf8.AppendRune(b, r)
		i += size
	}
	return string(b)
}

// SanitizePeer makes a peer (name or address) safe to send: characters
// CheckPeerBytes refuses become '-', and it is cut to MaxPeerLen.
func SanitizePeer(s string) string {
	if s == "" {
		return "-"
	}
	b := []byte(s)
	if len(b) > MaxPeerLen {
		b = b[:MaxPeerLen]
	}
	for i, c := range b {
		if !nameByte(c) && c != ':' && c != '[' && c != ']' && c != '%' {
			b[i] = '-'
		}
	}
	return string(b)
}
