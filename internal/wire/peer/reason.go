package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
)

// Reason is why a segment failed; a small fixed set, so that it can be a
// Prometheus label value. It travels in error records as one byte.
type Reason uint8

// Failure reasons.
const (
	ReasonUnknown Reason = iota
	ReasonRefused
	ReasonTimeout
	ReasonReset
	ReasonClosed
	ReasonUnreachable
	ReasonLoop
	ReasonTooManyHops
	ReasonBadFrame
	ReasonAuth
	ReasonOverloaded
	// ReasonTooLarge: a frame was over a hop's --relay.max-frame-bytes.
	ReasonTooLarge
	// ReasonBadHeader: an HTTP proxy's timing header was missing,
	// duplicated or malformed.
	ReasonBadHeader
	// ReasonHTTPStatus: an HTTP chain answered with a status the module
	// does not accept (a proxy's own error page, a 5xx).
	ReasonHTTPStatus
	reasonCount
)

var reasonNames = [...]string{"unknown", "refused", "timeout", "reset", "closed", "unreachable", "loop", "too_many_hops", "bad_frame", "auth", "overloaded", "too_large", "bad_header", "http_status"}

func (r Reason) String() string {
	if r < reasonCount {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason_%d", uint8(r))
}

// Valid reports whether r is one of the known reasons; an error record
// with another value is refused.
func (r Reason) Valid() bool { return r < reasonCount }

// Reasons lists every reason, for documentation and pre-initialised metrics.
func Reasons() []Reason {
	out := make([]Reason, 0, reasonCount)
	for r := ReasonUnknown; r < reasonCount; r++ {
		out = append(out, r)
	}
	return out
}

// ReasonList is every reason's name, comma-separated, for help texts.
func ReasonList() string {
	return strings.Join(reasonNames[:], ", ")
}

// Error is an error that knows its reason: the wire format's errors are
// of this kind, so classifying them needs no knowledge of that package.
type Error struct {
	Reason Reason
	Text   string
}

func (e *Error) Error() string { return e.Text }

// NewError returns a sentinel error of a reason.
func NewError(r Reason, text string) *Error { return &Error{Reason: r, Text: text} }

// Classify maps an error (of the network, of TLS, or a peer.Error) to the
// reason a segment failed.
func Classify(err error) Reason {
	var pe *Error
	var ne net.Error
	var dnsErr *net.DNSError
	switch {
	case err == nil:
		return ReasonUnknown
	case errors.As(err, &pe):
		return pe.Reason
	case isTLSAuth(err):
		return ReasonAuth
	case errors.As(err, new(tls.RecordHeaderError)):
		// The peer does not speak TLS (or speaks it where we do not).
		return ReasonBadFrame
	case errors.Is(err, syscall.ECONNREFUSED):
		return ReasonRefused
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return ReasonReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return ReasonClosed
	case errors.As(err, &dnsErr), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EADDRNOTAVAIL):
		return ReasonUnreachable
	}
	return ReasonUnknown
}

// ClassifyOr is Classify with a fallback for errors it cannot place.
func ClassifyOr(err error, fallback Reason) Reason {
	if r := Classify(err); r != ReasonUnknown {
		return r
	}
	return fallback
}

// isTLSAuth reports certificate and TLS alert failures: the peer and this
// hop do not trust each other.
func isTLSAuth(err error) bool {
	var alert tls.AlertError
	var unknownCA x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostname x509.HostnameError
	var verify *tls.CertificateVerificationError
	return errors.As(err, &alert) || errors.As(err, &unknownCA) || errors.As(err, &invalid) || errors.As(err, &hostname) || errors.As(err, &verify) ||
		strings.Contains(err.Error(), "tls: ") && strings.Contains(err.Error(), "certificate")
}
