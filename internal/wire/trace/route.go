package trace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// route is where this host sends the connection's packets: the kernel's
// answer to a route lookup of the connection's own flow (addresses,
// protocol, ports, mark), which picks the same nexthop of an equal-cost
// multipath route as the connection's packets take.
type route struct {
	oif     int
	dev     string
	gateway netip.Addr // zero on a direct link
}

func (r route) String() string {
	if r.gateway.IsValid() {
		return fmt.Sprintf("via %s dev %s", r.gateway, r.dev)
	}
	return "dev " + r.dev
}

// Route attributes (linux/rtnetlink.h).
const (
	rtaDst     = 1
	rtaSrc     = 2
	rtaOif     = 4
	rtaGateway = 5
	rtaMark    = 16
	rtaVia     = 18
	rtaIPProto = 27
	rtaSport   = 28
	rtaDport   = 29

	sizeofRtMsg = 12
)

// lookupRoute asks the kernel (rtnetlink, no privilege needed) for the
// route of the flow local -> remote over proto; oif > 0 restricts the
// lookup to that interface, as a probe socket pinned to it is routed.
func lookupRoute(local, remote netip.AddrPort, proto uint8, mark uint32, oif int) (route, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return route{}, fmt.Errorf("route lookup: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(time.Second))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return route{}, fmt.Errorf("route lookup: %w", err)
	}
	const seq = 1
	req := routeRequest(local, remote, proto, mark, oif, seq)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return route{}, fmt.Errorf("route lookup: %w", err)
	}
	buf := make([]byte, 8192)
	for range 8 {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return route{}, fmt.Errorf("route lookup: %w", err)
		}
		r, done, err := parseRouteReply(buf[:n], seq)
		if err != nil {
			return route{}, fmt.Errorf("route lookup of %v -> %v: %w", local, remote, err)
		}
		if done {
			if ifi, err := net.InterfaceByIndex(r.oif); err == nil {
				r.dev = ifi.Name
			} else {
				r.dev = fmt.Sprintf("if%d", r.oif)
			}
			return r, nil
		}
	}
	return route{}, errors.New("route lookup: no answer from the kernel")
}

// routeRequest is an RTM_GETROUTE request for one flow.
func routeRequest(local, remote netip.AddrPort, proto uint8, mark uint32, oif, seq int) []byte {
	family, bits := byte(unix.AF_INET), byte(32)
	if !remote.Addr().Is4() {
		family, bits = unix.AF_INET6, 128
	}
	b := make([]byte, unix.NLMSG_HDRLEN+sizeofRtMsg, 128)
	binary.NativeEndian.PutUint16(b[4:], unix.RTM_GETROUTE)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(b[8:], uint32(seq))
	rt := b[unix.NLMSG_HDRLEN:]
	rt[0], rt[1], rt[2] = family, bits, bits
	b = appendAttr(b, rtaDst, remote.Addr().AsSlice())
	b = appendAttr(b, rtaSrc, local.Addr().AsSlice())
	b = appendAttr(b, rtaIPProto, []byte{proto})
	b = appendAttr(b, rtaSport, binary.BigEndian.AppendUint16(nil, local.Port()))
	b = appendAttr(b, rtaDport, binary.BigEndian.AppendUint16(nil, remote.Port()))
	if mark != 0 {
		b = appendAttr(b, rtaMark, binary.NativeEndian.AppendUint32(nil, mark))
	}
	if oif > 0 {
		b = appendAttr(b, rtaOif, binary.NativeEndian.AppendUint32(nil, uint32(oif)))
	}
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	return b
}

func appendAttr(b []byte, typ uint16, payload []byte) []byte {
	l := unix.SizeofRtAttr + len(payload)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// parseRouteReply reads the kernel's answer to request seq: done is true
// once the route (or the kernel's error) was found. It never reads past b.
func parseRouteReply(b []byte, seq uint32) (r route, done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return route{}, false, fmt.Errorf("netlink message of length %d in %d bytes", l, len(b))
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		mseq := binary.NativeEndian.Uint32(b[8:])
		body := b[unix.NLMSG_HDRLEN:l]
		if mseq == seq {
			switch typ {
			case unix.NLMSG_ERROR:
				if len(body) < 4 {
					return route{}, true, errors.New("short netlink error")
				}
				if e := int32(binary.NativeEndian.Uint32(body)); e != 0 {
					return route{}, true, unix.Errno(-e)
				}
			case unix.RTM_NEWROUTE:
				r, err := parseRouteAttrs(body)
				return r, true, err
			}
		}
		b = b[min(len(b), (l+3)&^3):]
	}
	return route{}, false, nil
}

func parseRouteAttrs(body []byte) (route, error) {
	var r route
	if len(body) < sizeofRtMsg {
		return r, fmt.Errorf("route message of %d bytes", len(body))
	}
	a := body[sizeofRtMsg:]
	for len(a) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(a[0:]))
		typ := binary.NativeEndian.Uint16(a[2:])
		if l < unix.SizeofRtAttr || l > len(a) {
			return r, fmt.Errorf("route attribute of length %d in %d bytes", l, len(a))
		}
		v := a[unix.SizeofRtAttr:l]
		switch {
		case typ == rtaOif && len(v) >= 4:
			r.oif = int(binary.NativeEndian.Uint32(v))
		case typ == rtaGateway:
			r.gateway, _ = netip.AddrFromSlice(v)
		case typ == rtaVia && len(v) >= 2:
			r.gateway, _ = netip.AddrFromSlice(v[2:])
		}
		a = a[min(len(a), (l+3)&^3):]
	}
	if r.oif == 0 {
		return r, errors.New("route without an output interface")
	}
	return r, nil
}
