// Package udpmsg sends and receives UDP datagrams in batches (recvmmsg,
// sendmmsg) together with what the kernel knows of each: the software
// receive timestamp (SO_TIMESTAMPNS), the DS field (TOS / Traffic Class),
// the TTL (Hop Limit) and the destination address (PKTINFO) of a received
// datagram; the source address, DS field and a request for a software
// transmit timestamp of a sent one, whose stamp comes back on the socket's
// error queue (SO_TIMESTAMPING, MSG_ERRQUEUE).
//
// It is STAMP's transport: the reflector's loop and the sender's session
// use it. Receiving and sending make their system calls raw on a
// non-blocking socket and wait in Go's poller only when the socket has
// nothing; a batch's buffers and control space are allocated once, so the
// loop allocates nothing per datagram.
//
// Layering (internal/architecture_test.go): floor 1; it imports only
// internal/host and internal/wire, never internal/config, the source end,
// relay or anything above.
package udpmsg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a UDP socket with kernel metadata on every datagram.
type Conn struct {
	uc  *net.UDPConn
	raw syscall.RawConn
	// v6 is an AF_INET6 socket (IPv4 peers appear v4-mapped).
	v6 bool
	// connected sockets send without a destination address.
	connected bool
	tx        bool
	// callbacks kept, so that a call allocates no closure
	remote4   bool
	recvFn    func(fd uintptr) bool
	tryRecvFn func(fd uintptr)
	sendFn    func(fd uintptr) bool
	errqFn    func(fd uintptr)
	// The state of the call in progress, one group per kind of call:
	// Recv and TryRecv from one goroutine, Send from one, ReadTxStamps
	// from one (any of them may be the same).
	rx struct {
		b   *Batch
		n   int
		err unix.Errno
	}
	txs struct {
		b    *Batch
		done int
		err  unix.Errno
	}
	errq struct {
		b   *Batch
		n   int
		err unix.Errno
		fn  func(key uint32, unixNano int64)
	}
}

// Config sets a socket up.
type Config struct {
	// TxTimestamps makes the kernel stamp the transmission of datagrams
	// sent with Message.TxStamp (SO_TIMESTAMPING with OPT_ID and
	// OPT_TSONLY: stamps are numbered from 0 in sending order).
	TxTimestamps bool
	// TOS is the DS field of every datagram that does not set its own
	// (0: leave the default).
	TOS uint8
	// ReadBuffer sets SO_RCVBUF when positive.
	ReadBuffer int
}

// Listen opens a socket bound to address (host:port; an empty host binds
// every address, IPv6 and IPv4).
func Listen(address string, cfg Config) (*Conn, error) {
	ua, err := net.ResolveUDPAddr("udp", address)
	if err != nil {
		return nil, fmt.Errorf("udp address %q: %w", address, err)
	}
	uc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	return wrap(uc, false, cfg)
}

// Dial opens a socket connected to address: it receives only from there.
func Dial(ctx context.Context, address string, cfg Config) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", address)
	if err != nil {
		return nil, err
	}
	return wrap(c.(*net.UDPConn), true, cfg)
}

func wrap(uc *net.UDPConn, connected bool, cfg Config) (*Conn, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		_ = uc.Close()
		return nil, err
	}
	c := &Conn{uc: uc, raw: raw, connected: connected, tx: cfg.TxTimestamps}
	var serr error
	err = raw.Control(func(fd uintptr) { serr = c.setup(int(fd), cfg) })
	if err == nil {
		err = serr
	}
	if err != nil {
		_ = uc.Close()
		return nil, err
	}
	c.recvFn, c.sendFn, c.tryRecvFn, c.errqFn = c.recv, c.send, c.tryRecv, c.readErrQueue
	if connected {
		c.remote4 = c.RemoteAddr().Addr().Unmap().Is4()
	}
	return c, nil
}

func (c *Conn) setup(fd int, cfg Config) error {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return err
	}
	_, c.v6 = sa.(*unix.SockaddrInet6)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return fmt.Errorf("kernel receive timestamps (SO_TIMESTAMPNS): %w", err)
	}
	// IPv4 (also v4-mapped traffic on a dual-stack socket, where an
	// IPv6-only socket refuses them: then there is no IPv4 traffic).
	v4 := []int{unix.IP_PKTINFO, unix.IP_RECVTOS, unix.IP_RECVTTL}
	for _, o := range v4 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, o, 1); err != nil && !c.v6 {
			return fmt.Errorf("IPv4 socket option %d: %w", o, err)
		}
	}
	if c.v6 {
		for _, o := range []int{unix.IPV6_RECVPKTINFO, unix.IPV6_RECVTCLASS, unix.IPV6_RECVHOPLIMIT} {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, o, 1); err != nil {
				return fmt.Errorf("IPv6 socket option %d: %w", o, err)
			}
		}
	}
	if cfg.TOS != 0 {
		if err := setTOS(fd, c.v6, cfg.TOS); err != nil {
			return err
		}
	}
	if cfg.ReadBuffer > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.ReadBuffer)
	}
	if cfg.TxTimestamps {
		flags := unix.SOF_TIMESTAMPING_SOFTWARE | unix.SOF_TIMESTAMPING_OPT_ID | unix.SOF_TIMESTAMPING_OPT_TSONLY
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPING, flags); err != nil {
			return fmt.Errorf("kernel transmit timestamps (SO_TIMESTAMPING): %w", err)
		}
	}
	return nil
}

func setTOS(fd int, v6 bool, tos uint8) error {
	// Both, on a dual-stack socket: IPv4 peers take IP_TOS.
	err4 := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS, int(tos))
	if v6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, int(tos)); err != nil {
			return fmt.Errorf("IPV6_TCLASS: %w", err)
		}
		return nil
	}
	if err4 != nil {
		return fmt.Errorf("IP_TOS: %w", err4)
	}
	return nil
}

// Close closes the socket; a waiting Recv returns net.ErrClosed.
func (c *Conn) Close() error { return c.uc.Close() }

// LocalAddr is the address the socket is bound to.
func (c *Conn) LocalAddr() netip.AddrPort { return c.uc.LocalAddr().(*net.UDPAddr).AddrPort() }

// RemoteAddr is the connected peer (Dial); zero for a listening socket.
func (c *Conn) RemoteAddr() netip.AddrPort {
	if a, ok := c.uc.RemoteAddr().(*net.UDPAddr); ok && a != nil {
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// SetReadDeadline bounds the wait of Recv (and of nothing else).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// Message is one datagram of a Batch.
type Message struct {
	// Buf is the datagram's storage (its capacity is the largest
	// datagram the batch takes); N octets of it are the datagram.
	Buf []byte
	N   int
	// Addr is the peer: the source of a received datagram, the
	// destination of one to send (ignored on a connected socket).
	Addr netip.AddrPort
	// Local is the destination address of a received datagram; sent back
	// as the source address of a reply (zero: the kernel chooses).
	Local netip.Addr
	// IfIndex is the interface a datagram arrived on.
	IfIndex int32
	// RxTime is the kernel's software receive stamp, Unix nanoseconds;
	// 0 when the kernel gave none.
	RxTime int64
	// TOS is the DS field (DSCP << 2 | ECN) and TTL the TTL (Hop Limit)
	// of a received datagram; HasTOS, HasTTL say the kernel told them.
	TOS, TTL       uint8
	HasTOS, HasTTL bool
	// Truncated: the datagram was larger than Buf and was cut.
	Truncated bool

	// Send marks a message Send transmits.
	Send bool
	// SendTOS, when SetTOS, is the DS field of the datagram sent.
	SendTOS uint8
	SetTOS  bool
	// TxStamp asks the kernel to stamp this datagram's transmission
	// (Config.TxTimestamps must be set).
	TxStamp bool
}

// oobLen holds every control message of a received datagram (timestamp,
// PKTINFO, TOS, TTL and, with SO_TIMESTAMPING, a second timestamp).
const oobLen = 256

// Batch is a set of messages with the kernel structures for one recvmmsg
// or sendmmsg, allocated once.
type Batch struct {
	Msgs  []Message
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	oob   []byte
	// sending: the messages the headers describe, in order
	txIdx []int
	txOOB []byte
}

// NewBatch returns a batch of n messages of up to size octets each.
func NewBatch(n, size int) *Batch {
	if n < 1 {
		n = 1
	}
	b := &Batch{
		Msgs:  make([]Message, n),
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
		oob:   make([]byte, n*oobLen),
		txIdx: make([]int, 0, n),
		txOOB: make([]byte, n*txOOBLen),
	}
	store := make([]byte, n*size)
	for i := range b.Msgs {
		b.Msgs[i].Buf = store[i*size : (i+1)*size : (i+1)*size]
	}
	return b
}

// ErrClosed is returned by calls on a closed socket.
var ErrClosed = net.ErrClosed

// Recv waits for datagrams (until the read deadline) and returns how many
// of b's messages it filled, at least one.
func (c *Conn) Recv(b *Batch) (int, error) {
	c.rx.b, c.rx.n, c.rx.err = b, 0, 0
	err := c.raw.Read(c.recvFn)
	c.rx.b = nil
	if err != nil {
		return 0, err
	}
	if c.rx.err != 0 {
		return 0, c.rx.err
	}
	return c.rx.n, nil
}

// TryRecv is Recv without waiting: 0 when nothing is queued.
func (c *Conn) TryRecv(b *Batch) (int, error) {
	c.rx.b, c.rx.n, c.rx.err = b, 0, 0
	err := c.raw.Control(c.tryRecvFn)
	c.rx.b = nil
	if err != nil {
		return 0, err
	}
	if c.rx.err == unix.EAGAIN {
		return 0, nil
	}
	if c.rx.err != 0 {
		return 0, c.rx.err
	}
	return c.rx.n, nil
}

func (c *Conn) tryRecv(fd uintptr) { c.rx.n, c.rx.err = recvmmsg(int(fd), c.rx.b, c.v6, 0) }

func (c *Conn) recv(fd uintptr) bool {
	n, errno := recvmmsg(int(fd), c.rx.b, c.v6, 0)
	if errno == unix.EAGAIN {
		return false
	}
	c.rx.n, c.rx.err = n, errno
	return true
}

func recvmmsg(fd int, b *Batch, v6 bool, flags int) (int, unix.Errno) {
	for i := range b.Msgs {
		m := &b.Msgs[i]
		b.iovs[i].Base = &m.Buf[:cap(m.Buf)][0]
		b.iovs[i].SetLen(cap(m.Buf))
		h := &b.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
		h.Control = &b.oob[i*oobLen]
		h.SetControllen(oobLen)
		h.Flags = 0
		b.hdrs[i].Len = 0
	}
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), uintptr(flags|unix.MSG_DONTWAIT), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		n := int(r)
		for i := 0; i < n; i++ {
			parseReceived(&b.Msgs[i], &b.hdrs[i], &b.names[i], b.oob[i*oobLen:(i+1)*oobLen])
		}
		return n, 0
	}
}

func parseReceived(m *Message, h *unix.Mmsghdr, name *unix.RawSockaddrInet6, oob []byte) {
	m.N = int(h.Len)
	m.Buf = m.Buf[:m.N]
	m.Truncated = h.Hdr.Flags&unix.MSG_TRUNC != 0
	m.Addr = addrOf(name)
	m.Local, m.IfIndex, m.RxTime = netip.Addr{}, 0, 0
	m.TOS, m.TTL, m.HasTOS, m.HasTTL = 0, 0, false, false
	m.Send, m.SetTOS, m.TxStamp, m.SendTOS = false, false, false, 0
	if h.Hdr.Flags&unix.MSG_CTRUNC != 0 {
		return
	}
	parseControl(m, oob[:h.Hdr.Controllen])
}

func addrOf(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), ntohs(s4.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

func ntohs(p uint16) uint16 { return p>>8 | p<<8 }

// parseControl reads the control messages of a received datagram without
// allocating; unknown or short ones are skipped.
func parseControl(m *Message, oob []byte) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return
		}
		data := oob[unix.SizeofCmsghdr:l]
		readCmsg(m, h.Level, h.Type, data)
		next := cmsgAlign(l)
		if next > len(oob) {
			return
		}
		oob = oob[next:]
	}
}

func readCmsg(m *Message, level, typ int32, data []byte) {
	switch {
	case level == unix.SOL_SOCKET && typ == unix.SO_TIMESTAMPNS && len(data) >= 16:
		ts := (*unix.Timespec)(unsafe.Pointer(&data[0]))
		m.RxTime = ts.Nano()
	case level == unix.SOL_SOCKET && typ == unix.SO_TIMESTAMPING && len(data) >= 16 && m.RxTime == 0:
		ts := (*unix.Timespec)(unsafe.Pointer(&data[0]))
		m.RxTime = ts.Nano()
	case level == unix.IPPROTO_IP && typ == unix.IP_TOS && len(data) >= 1:
		m.TOS, m.HasTOS = data[0], true
	case level == unix.IPPROTO_IP && typ == unix.IP_TTL && len(data) >= 4:
		m.TTL, m.HasTTL = uint8(*(*int32)(unsafe.Pointer(&data[0]))), true
	case level == unix.IPPROTO_IP && typ == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
		p := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
		m.Local, m.IfIndex = netip.AddrFrom4(p.Addr), p.Ifindex
	case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_TCLASS && len(data) >= 4:
		m.TOS, m.HasTOS = uint8(*(*int32)(unsafe.Pointer(&data[0]))), true
	case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_HOPLIMIT && len(data) >= 4:
		m.TTL, m.HasTTL = uint8(*(*int32)(unsafe.Pointer(&data[0]))), true
	case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
		p := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
		m.Local, m.IfIndex = netip.AddrFrom16(p.Addr).Unmap(), int32(p.Ifindex)
	}
}

func cmsgAlign(l int) int {
	const align = int(unsafe.Sizeof(uintptr(0)))
	return (l + align - 1) &^ (align - 1)
}

// txOOBLen holds PKTINFO, the DS field and a timestamping request.
const txOOBLen = 128

// Send transmits the first n of b's messages that are marked Send, in
// order, with as few sendmmsg calls as the socket allows, waiting in the
// poller when its buffer is full. It returns how many it sent; a datagram
// the kernel refuses (an unreachable peer) is skipped, not retried.
func (c *Conn) Send(b *Batch, n int) (int, error) {
	b.txIdx = b.txIdx[:0]
	for i := 0; i < n && i < len(b.Msgs); i++ {
		if b.Msgs[i].Send {
			b.txIdx = append(b.txIdx, i)
		}
	}
	if len(b.txIdx) == 0 {
		return 0, nil
	}
	for k, i := range b.txIdx {
		c.prepareSend(b, k, &b.Msgs[i])
	}
	c.txs.b, c.txs.done, c.txs.err = b, 0, 0
	err := c.raw.Write(c.sendFn)
	c.txs.b = nil
	if err != nil {
		return c.txs.done, err
	}
	return c.txs.done, nil
}

func (c *Conn) send(fd uintptr) bool {
	b := c.txs.b
	for c.txs.done < len(b.txIdx) {
		rest := b.hdrs[c.txs.done:len(b.txIdx)]
		r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			c.txs.done += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			// The first datagram of the rest failed (ECONNREFUSED from
			// an earlier ICMP error, EPERM from a firewall): skip it.
			c.txs.done++
			c.txs.err = e
		}
	}
	return true
}

func (c *Conn) prepareSend(b *Batch, k int, m *Message) {
	b.iovs[k].Base = &m.Buf[:cap(m.Buf)][0]
	b.iovs[k].SetLen(m.N)
	h := &b.hdrs[k].Hdr
	h.Iov = &b.iovs[k]
	h.SetIovlen(1)
	h.Flags = 0
	b.hdrs[k].Len = 0
	if c.connected {
		h.Name, h.Namelen = nil, 0
	} else {
		h.Namelen = putSockaddr(&b.names[k], m.Addr, c.v6)
		h.Name = (*byte)(unsafe.Pointer(&b.names[k]))
	}
	oob := b.txOOB[k*txOOBLen : (k+1)*txOOBLen]
	used := c.putSendControl(oob, m)
	if used == 0 {
		h.Control = nil
		h.SetControllen(0)
		return
	}
	h.Control = &oob[0]
	h.SetControllen(used)
}

func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort, v6 bool) uint32 {
	a := ap.Addr()
	if !v6 && a.Unmap().Is4() {
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*s4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Port: ntohs(ap.Port()), Addr: a.Unmap().As4()}
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: ntohs(ap.Port()), Addr: a.As16()}
	return unix.SizeofSockaddrInet6
}

// putSendControl writes a datagram's control messages and returns their
// length.
func (c *Conn) putSendControl(oob []byte, m *Message) int {
	off := 0
	is4 := m.Addr.Addr().Unmap().Is4()
	if c.connected {
		is4 = c.remote4
	}
	if m.Local.IsValid() && !c.connected {
		if is4 {
			var p unix.Inet4Pktinfo
			p.Spec_dst = m.Local.Unmap().As4()
			off = putCmsg(oob, off, unix.IPPROTO_IP, unix.IP_PKTINFO, unsafe.Slice((*byte)(unsafe.Pointer(&p)), unix.SizeofInet4Pktinfo))
		} else {
			var p unix.Inet6Pktinfo
			p.Addr = m.Local.As16()
			if m.Local.IsLinkLocalUnicast() {
				p.Ifindex = uint32(m.IfIndex)
			}
			off = putCmsg(oob, off, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, unsafe.Slice((*byte)(unsafe.Pointer(&p)), unix.SizeofInet6Pktinfo))
		}
	}
	if m.SetTOS {
		v := int32(m.SendTOS)
		if is4 {
			// The kernel takes IP_TOS as an int or one octet.
			off = putCmsg(oob, off, unix.IPPROTO_IP, unix.IP_TOS, unsafe.Slice((*byte)(unsafe.Pointer(&v)), 4))
		} else {
			off = putCmsg(oob, off, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, unsafe.Slice((*byte)(unsafe.Pointer(&v)), 4))
		}
	}
	if m.TxStamp && c.tx {
		v := uint32(unix.SOF_TIMESTAMPING_TX_SOFTWARE)
		off = putCmsg(oob, off, unix.SOL_SOCKET, unix.SO_TIMESTAMPING, unsafe.Slice((*byte)(unsafe.Pointer(&v)), 4))
	}
	return off
}

func putCmsg(oob []byte, off int, level, typ int, data []byte) int {
	l := unix.SizeofCmsghdr + len(data)
	if off+cmsgAlign(l) > len(oob) {
		return off
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(l)
	copy(oob[off+unix.SizeofCmsghdr:], data)
	clear(oob[off+l : off+cmsgAlign(l)])
	return off + cmsgAlign(l)
}

// ReadTxStamps drains the error queue without waiting and calls fn with
// each transmit stamp: its key (the datagram's number among those sent
// with TxStamp, from 0) and the kernel's software stamp in Unix
// nanoseconds. It returns how many it read. b is scratch space: a batch
// of its own, not one whose messages are in use.
func (c *Conn) ReadTxStamps(b *Batch, fn func(key uint32, unixNano int64)) (int, error) {
	c.errq.b, c.errq.fn, c.errq.n, c.errq.err = b, fn, 0, 0
	err := c.raw.Control(c.errqFn)
	c.errq.b, c.errq.fn = nil, nil
	if err != nil {
		return c.errq.n, err
	}
	if c.errq.err != 0 && c.errq.err != unix.EAGAIN {
		return c.errq.n, c.errq.err
	}
	return c.errq.n, nil
}

func (c *Conn) readErrQueue(fd uintptr) {
	b := c.errq.b
	for {
		n, errno := recvmmsg(int(fd), b, c.v6, unix.MSG_ERRQUEUE)
		if errno != 0 {
			c.errq.err = errno
			return
		}
		for i := 0; i < n; i++ {
			c.txStamp(b.oob[i*oobLen : i*oobLen+int(b.hdrs[i].Hdr.Controllen)])
		}
		if n < len(b.Msgs) {
			return
		}
	}
}

// txStamp finds a transmit stamp and its key in an error-queue message.
func (c *Conn) txStamp(oob []byte) {
	var ns int64
	var key uint32
	var haveKey bool
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			break
		}
		data := oob[unix.SizeofCmsghdr:l]
		switch {
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_TIMESTAMPING && len(data) >= 16:
			ns = (*unix.Timespec)(unsafe.Pointer(&data[0])).Nano()
		case (h.Level == unix.IPPROTO_IP && h.Type == unix.IP_RECVERR || h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_RECVERR) && len(data) >= int(unsafe.Sizeof(unix.SockExtendedErr{})):
			e := (*unix.SockExtendedErr)(unsafe.Pointer(&data[0]))
			if e.Origin == unix.SO_EE_ORIGIN_TIMESTAMPING && e.Errno == uint32(unix.ENOMSG) {
				key, haveKey = e.Data, true
			}
		}
		next := cmsgAlign(l)
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	if haveKey && ns != 0 && c.errq.fn != nil {
		c.errq.n++
		c.errq.fn(key, ns)
	}
}

// IsClosed reports whether err says the socket was closed.
func IsClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
