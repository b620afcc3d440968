package peer

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// ListenAddress turns the original tool's "*:port" into Go's ":port" and
// checks the result.
func ListenAddress(s string) (string, error) {
	if strings.HasPrefix(s, "*:") {
		s = s[1:]
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", fmt.Errorf("listen address %q: %w (use host:port, *:port or [::1]:port)", s, err)
	}
	return s, nil
}

// ValidateAddress checks a host:port a hop may dial, and says what is
// missing when it is not one (most often the port).
func ValidateAddress(s string) error {
	if s == "" {
		return fmt.Errorf("address is empty: give host:port")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if !strings.Contains(s, ":") || strings.Count(s, ":") > 1 && !strings.HasPrefix(s, "[") {
			if ip := net.ParseIP(s); ip != nil && ip.To4() == nil {
				return fmt.Errorf("address %q has no port: write an IPv6 address as [%s]:port", s, s)
			}
			return fmt.Errorf("address %q has no port: add one, e.g. %s", s, net.JoinHostPort(strings.Trim(s, "[]"), "9000"))
		}
		return fmt.Errorf("address %q: %v (use host:port or [ipv6]:port)", s, strings.TrimPrefix(err.Error(), "address "+s+": "))
	}
	if host == "" {
		return fmt.Errorf("address %q has no host: give host:port", s)
	}
	if port == "" {
		return fmt.Errorf("address %q has no port: add one, e.g. %s", s, net.JoinHostPort(host, "9000"))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		if _, err := net.LookupPort("tcp", port); err != nil {
			return fmt.Errorf("address %q: port %q is not 1-65535", s, port)
		}
	}
	return nil
}

// HTTPTarget is a URL to probe through a chain of HTTP proxies.
type HTTPTarget struct {
	// URL is the target as parsed: scheme http or https, no user
	// information, no fragment.
	URL *url.URL
	// Address is host:port of the first proxy (port 80 or 443 when the URL
	// has none): what a module's targets allow and what is dialled.
	Address string
	// Host is the URL's host without its port, for TLS verification.
	Host string
}

// IsHTTPTarget tells a URL target (http://, https://) from a host:port.
func IsHTTPTarget(s string) bool {
	l := strings.ToLower(s)
	return strings.HasPrefix(l, "http://") || strings.HasPrefix(l, "https://")
}

// ParseHTTPTarget checks a URL an HTTP module may probe. Only what the
// request line and the dial need is accepted: http or https, a host, an
// optional port; user information is refused (credentials go in the
// module's headers, never in a URL a scrape shows), a fragment dropped.
func ParseHTTPTarget(s string) (HTTPTarget, error) {
	if len(s) > 2048 {
		return HTTPTarget{}, fmt.Errorf("URL of %d bytes is too long: at most 2048", len(s))
	}
	u, err := url.Parse(s)
	if err != nil {
		return HTTPTarget{}, fmt.Errorf("URL %q: %w", s, errors.Unwrap(err))
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.Scheme != "http" && u.Scheme != "https" {
		return HTTPTarget{}, fmt.Errorf("URL %q: scheme %q: use http:// or https://", s, u.Scheme)
	}
	if u.User != nil {
		return HTTPTarget{}, fmt.Errorf("URL %q carries user information: put credentials in the module's http.headers", u.Redacted())
	}
	if u.Opaque != "" || u.Host == "" {
		return HTTPTarget{}, fmt.Errorf("URL %q has no host: write it like http://proxy.example.net:8080/health", s)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	addr := net.JoinHostPort(host, port)
	if err := ValidateAddress(addr); err != nil {
		return HTTPTarget{}, fmt.Errorf("URL %q: %w", s, err)
	}
	u.Fragment, u.RawFragment = "", ""
	return HTTPTarget{URL: u, Address: addr, Host: host}, nil
}
