package trace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// answerKind is what an answer says about its probe.
type answerKind uint8

const (
	kindTimeExceeded answerKind = iota + 1
	kindUnreachable
	kindFarEnd
)

// answer is one reply to a probe, as a reader saw it.
type answer struct {
	from     netip.Addr
	kind     answerKind
	code     uint8
	id       uint32 // the probe's identity, when the reply quotes it
	hasID    bool
	at       time.Time
	kernelNs int64
}

// prober sends probes of one method and reports the answers.
type prober interface {
	// send sends the probe with identity id and time to live ttl, and
	// returns when it went.
	send(ttl int, id uint32) (time.Time, error)
	// start delivers answers to out until close: those without identity,
	// and those whose identity ours says is one of the trace's probes
	// (forged or stale ones never reach out). When out is full an answer
	// is dropped: memory stays bounded whatever arrives.
	start(out chan<- answer, ours func(id uint32) bool)
	close()
}

// deliver hands an answer to the trace without ever blocking a reader.
func deliver(out chan<- answer, a answer) {
	select {
	case out <- a:
	default:
	}
}

// readBuf is the largest packet a reader keeps: an ICMP error quotes at
// most 576 bytes (IPv4) or 1280 (IPv6) of the probe.
const readBuf = 1500

// sameAddr compares addresses without their IPv6 zone.
func sameAddr(a, b netip.Addr) bool { return a.WithZone("") == b.WithZone("") }

// setTTL sets the time to live (hop limit) of the next packets.
func setTTL(s *sock, v4 bool, ttl int) error {
	if v4 {
		return s.setInt(unix.IPPROTO_IP, unix.IP_TTL, ttl, "IP_TTL")
	}
	return s.setInt(unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, ttl, "IPV6_UNICAST_HOPS")
}

// pinAndMark sends the socket's packets out of the connection's
// interface, with its mark and TOS, so that the probes are routed as the
// connection's packets are. It returns a note when the mark could not be
// copied (SO_MARK needs CAP_NET_RAW or CAP_NET_ADMIN).
func pinAndMark(s *sock, info connInfo, rt route) (string, error) {
	var err error
	// IP_UNICAST_IF and IPV6_UNICAST_IF take the index in network byte
	// order.
	idx := int(binary.NativeEndian.Uint32(binary.BigEndian.AppendUint32(nil, uint32(rt.oif))))
	if info.v4() {
		err = s.setInt(unix.IPPROTO_IP, unix.IP_UNICAST_IF, idx, "IP_UNICAST_IF")
		if err == nil && info.tos != 0 {
			err = s.setInt(unix.IPPROTO_IP, unix.IP_TOS, info.tos, "IP_TOS")
		}
	} else {
		err = s.setInt(unix.IPPROTO_IPV6, unix.IPV6_UNICAST_IF, idx, "IPV6_UNICAST_IF")
		if err == nil && info.tos != 0 {
			err = s.setInt(unix.IPPROTO_IPV6, unix.IPV6_TCLASS, info.tos, "IPV6_TCLASS")
		}
	}
	if err != nil {
		return "", err
	}
	if info.mark != 0 {
		if err := s.setInt(unix.SOL_SOCKET, unix.SO_MARK, int(info.mark), "SO_MARK"); err != nil {
			return fmt.Sprintf("; the connection's mark %#x not copied (%v)", info.mark, err), nil
		}
	}
	return "", nil
}

// tcpProber sends SYN segments on the connection's own flow from a raw
// socket and reads ICMP errors from a raw ICMP socket, and the far end's
// challenge ACKs from the raw TCP socket.
type tcpProber struct {
	info connInfo
	tcp  *sock
	icmp *sock
	buf  [tcpHeaderLen]byte
	wg   sync.WaitGroup
}

// openTCP opens the raw sockets; an error that isPermission means no
// CAP_NET_RAW. The ICMP socket's filter keeps only errors that quote one
// of the n probes from identity base on.
func openTCP(info connInfo, rt route, base, n uint32) (_ *tcpProber, note string, err error) {
	domain, icmpProto := unix.AF_INET, unix.IPPROTO_ICMP
	if !info.v4() {
		domain, icmpProto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	p := &tcpProber{info: info}
	defer func() {
		if err != nil {
			p.icmp.close()
			p.tcp.close()
		}
	}()
	if p.icmp, err = openSock(domain, unix.SOCK_RAW, icmpProto, "trace icmp"); err != nil {
		return nil, "", fmt.Errorf("raw socket: %w", err)
	}
	if p.tcp, err = openSock(domain, unix.SOCK_RAW, unix.IPPROTO_TCP, "trace tcp"); err != nil {
		return nil, "", fmt.Errorf("raw socket: %w", err)
	}
	local := netip.AddrPortFrom(info.local.Addr(), 0)
	remote := netip.AddrPortFrom(info.remote.Addr(), 0)
	steps := []func() error{
		func() error { return icmpFilter(p.icmp, info.v4()) },
		func() error { return quoteFilter(p.icmp, info, base, n) },
		func() error { return p.icmp.setInt(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS") },
		func() error { return wrap("bind ICMP socket", unix.Bind(p.icmp.fd, sockaddr(local))) },
		func() error { return p.tcp.setInt(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS") },
		func() error { return portFilter(p.tcp, info) },
		func() error { return wrap("bind TCP socket", unix.Bind(p.tcp.fd, sockaddr(local))) },
		func() error { return wrap("connect TCP socket", unix.Connect(p.tcp.fd, sockaddr(remote))) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, "", err
		}
	}
	if note, err = pinAndMark(p.tcp, info, rt); err != nil {
		return nil, "", err
	}
	return p, note, nil
}

func wrap(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// icmpFilter lets only the errors a probe can cause reach the ICMP socket.
func icmpFilter(s *sock, v4 bool) error {
	if v4 {
		// struct icmp_filter: a set bit filters that type out.
		block := ^uint32(1<<icmp4Unreachable | 1<<icmp4TimeExceeded)
		return s.setInt(unix.SOL_RAW, unix.ICMP_FILTER, int(int32(block)), "ICMP_FILTER")
	}
	var f unix.ICMPv6Filter
	for i := range f.Data {
		f.Data[i] = ^uint32(0)
	}
	for _, t := range []uint8{icmp6Unreachable, icmp6TimeExceeded} {
		f.Data[t>>5] &^= 1 << (t & 31)
	}
	return wrap("ICMP6_FILTER", unix.SetsockoptICMPv6Filter(s.fd, unix.IPPROTO_ICMPV6, unix.ICMPV6_FILTER, &f))
}

// quoteFilter attaches a socket filter that keeps only ICMP errors quoting
// one of the trace's probes: protocol TCP, the flow's ports, a sequence
// number in [base, base+n). Forged or stray errors are dropped in the
// kernel and never fill the socket's buffer (where they would crowd out
// the routers' answers). An IPv4 raw socket sees the outer IP header, an
// IPv6 one starts at the ICMPv6 header.
func quoteFilter(s *sock, info connInfo, base, n uint32) error {
	lport, rport := uint32(info.local.Port()), uint32(info.remote.Port())
	const (
		ld  = unix.BPF_LD | unix.BPF_ABS
		ldi = unix.BPF_LD | unix.BPF_IND
		jeq = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
	)
	var prog []unix.SockFilter
	if info.v4() {
		prog = []unix.SockFilter{
			{Code: unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH, K: 0},    // 0: X = outer header length
			{Code: ldi | unix.BPF_B, K: 8 + 9},                        // 1: quoted protocol
			{Code: jeq, K: protoTCP, Jf: 13},                          // 2
			{Code: ldi | unix.BPF_B, K: 8},                            // 3: quoted version and length
			{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 0x0f}, // 4
			{Code: unix.BPF_ALU | unix.BPF_LSH | unix.BPF_K, K: 2},    // 5
			{Code: unix.BPF_ALU | unix.BPF_ADD | unix.BPF_X},          // 6: outer + quoted header
			{Code: unix.BPF_MISC | unix.BPF_TAX},                      // 7
			{Code: ldi | unix.BPF_H, K: 8},                            // 8: quoted source port
			{Code: jeq, K: lport, Jf: 6},                              // 9
			{Code: ldi | unix.BPF_H, K: 10},                           // 10: quoted destination port
			{Code: jeq, K: rport, Jf: 4},                              // 11
			{Code: ldi | unix.BPF_W, K: 12},                           // 12: quoted sequence number
			{Code: unix.BPF_ALU | unix.BPF_SUB | unix.BPF_K, K: base}, // 13
			{Code: jge, K: n, Jt: 1},                                  // 14
			{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff},              // 15
			{Code: unix.BPF_RET | unix.BPF_K, K: 0},                   // 16
		}
	} else {
		prog = []unix.SockFilter{
			{Code: ld | unix.BPF_B, K: 8 + 6},                         // 0: quoted next header
			{Code: jeq, K: protoTCP, Jf: 8},                           // 1
			{Code: ld | unix.BPF_H, K: 8 + ipv6HeaderLen},             // 2: quoted source port
			{Code: jeq, K: lport, Jf: 6},                              // 3
			{Code: ld | unix.BPF_H, K: 8 + ipv6HeaderLen + 2},         // 4: quoted destination port
			{Code: jeq, K: rport, Jf: 4},                              // 5
			{Code: ld | unix.BPF_W, K: 8 + ipv6HeaderLen + 4},         // 6: quoted sequence number
			{Code: unix.BPF_ALU | unix.BPF_SUB | unix.BPF_K, K: base}, // 7
			{Code: jge, K: n, Jt: 1},                                  // 8
			{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff},              // 9
			{Code: unix.BPF_RET | unix.BPF_K, K: 0},                   // 10
		}
	}
	return attachFilter(s, prog)
}

func attachFilter(s *sock, prog []unix.SockFilter) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: unsafe.SliceData(prog)}
	return wrap("socket filter", unix.SetsockoptSockFprog(s.fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog))
}

// portFilter attaches a socket filter that keeps only the connection's
// segments from the far end (the raw TCP socket otherwise gets a copy of
// every TCP segment from that address). An IPv4 raw socket sees the IP
// header, an IPv6 one starts at the TCP header.
func portFilter(s *sock, info connInfo) error {
	rport, lport := uint32(info.remote.Port()), uint32(info.local.Port())
	var prog []unix.SockFilter
	if info.v4() {
		prog = []unix.SockFilter{
			{Code: unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH, K: 0},
			{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: 0},
			{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: rport, Jt: 0, Jf: 3},
			{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: 2},
			{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: lport, Jt: 0, Jf: 1},
			{Code: unix.BPF_RET | unix.BPF_K, K: 256},
			{Code: unix.BPF_RET | unix.BPF_K, K: 0},
		}
	} else {
		prog = []unix.SockFilter{
			{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 0},
			{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: rport, Jt: 0, Jf: 3},
			{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 2},
			{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: lport, Jt: 0, Jf: 1},
			{Code: unix.BPF_RET | unix.BPF_K, K: 256},
			{Code: unix.BPF_RET | unix.BPF_K, K: 0},
		}
	}
	return attachFilter(s, prog)
}

func (p *tcpProber) send(ttl int, id uint32) (time.Time, error) {
	if err := setTTL(p.tcp, p.info.v4(), ttl); err != nil {
		return time.Time{}, err
	}
	seg := synProbe(p.buf[:], p.info.local, p.info.remote, id)
	now := time.Now()
	_, err := unix.Write(p.tcp.fd, seg)
	return now, wrap("send", err)
}

func (p *tcpProber) start(out chan<- answer, ours func(id uint32) bool) {
	p.wg.Add(2)
	go p.readICMP(out, ours)
	go p.readTCP(out)
}

func (p *tcpProber) close() {
	p.icmp.close()
	p.tcp.close()
	p.wg.Wait()
}

// readICMP reports the ICMP errors that quote one of the probes: the
// flow's addresses and ports, protocol TCP (the sequence number is
// checked by the trace, which knows the identities it sent).
func (p *tcpProber) readICMP(out chan<- answer, ours func(id uint32) bool) {
	defer p.wg.Done()
	r := newReader(p.icmp, readBuf, 0)
	for {
		pk, err := r.read()
		if err != nil {
			return
		}
		at := time.Now()
		var m icmpError
		if p.info.v4() {
			m, err = parseICMPv4(r.buf[:pk.n])
		} else {
			m, err = parseICMPv6(r.buf[:pk.n], pk.from)
		}
		if err != nil || !m.hasSeq || !p.quotesFlow(m) || !ours(m.seq) {
			continue
		}
		deliver(out, answer{from: m.from, kind: icmpKind(p.info.v4(), m.icmpType), code: m.code,
			id: m.seq, hasID: true, at: at, kernelNs: pk.kernelNs})
	}
}

func (p *tcpProber) quotesFlow(m icmpError) bool {
	return m.proto == protoTCP && sameAddr(m.src, p.info.local.Addr()) && sameAddr(m.dst, p.info.remote.Addr()) &&
		m.sport == p.info.local.Port() && m.dport == p.info.remote.Port()
}

// icmpKind classifies an ICMP error type.
func icmpKind(v4 bool, typ uint8) answerKind {
	if (v4 && typ == icmp4TimeExceeded) || (!v4 && typ == icmp6TimeExceeded) {
		return kindTimeExceeded
	}
	return kindUnreachable
}

// readTCP reports the far end's answers to probes that reached it. The
// far end answers a SYN on an established connection with a challenge
// ACK (RFC 5961 section 4): a pure ACK that acknowledges nothing new. So
// an answer is a segment of the flow from the far end with only ACK set,
// no data, and the same acknowledgement number as the segment before it
// (an ACK of the connection's own data moves that number on). Its window
// may differ from the last segment's (the far end's application read
// meanwhile), so a window update of a busy connection looks the same:
// such a guess is voided by a router's quoted answer for the same TTL,
// and a TTL is the far end only when most of its probes were answered
// so (session.status).
func (p *tcpProber) readTCP(out chan<- answer) {
	defer p.wg.Done()
	r := newReader(p.tcp, readBuf, 0)
	var lastAck uint32
	seen := false
	for {
		pk, err := r.read()
		if err != nil {
			return
		}
		at := time.Now()
		var seg segment
		if p.info.v4() {
			seg, err = parseTCPv4(r.buf[:pk.n])
		} else {
			seg, err = parseTCP(r.buf[:pk.n], pk.n)
		}
		if err != nil || seg.sport != p.info.remote.Port() || seg.dport != p.info.local.Port() {
			continue
		}
		pure := seg.flags&tcpACK != 0 && seg.flags&(tcpSYN|tcpRST|tcpFIN) == 0 && seg.payload == 0
		dup := !seen || seg.ack == lastAck
		seen, lastAck = true, seg.ack
		if pure && dup {
			deliver(out, answer{from: p.info.remote.Addr(), kind: kindFarEnd, at: at, kernelNs: pk.kernelNs})
		}
	}
}

// udpProber sends UDP datagrams with the connection's addresses and port
// numbers and reads the ICMP errors the kernel queues for it (IP_RECVERR,
// as tracepath does): no privilege needed.
type udpProber struct {
	info  connInfo
	local netip.AddrPort
	s     *sock
	buf   [udpProbeLen]byte
	wg    sync.WaitGroup
}

func openUDP(info connInfo, rt route) (_ *udpProber, note string, err error) {
	domain := unix.AF_INET
	if !info.v4() {
		domain = unix.AF_INET6
	}
	p := &udpProber{info: info}
	if p.s, err = openSock(domain, unix.SOCK_DGRAM, unix.IPPROTO_UDP, "trace udp"); err != nil {
		return nil, "", fmt.Errorf("UDP socket: %w", err)
	}
	defer func() {
		if err != nil {
			p.s.close()
		}
	}()
	recverr := func() error {
		if info.v4() {
			return p.s.setInt(unix.IPPROTO_IP, unix.IP_RECVERR, 1, "IP_RECVERR")
		}
		return p.s.setInt(unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1, "IPV6_RECVERR")
	}
	if err := recverr(); err != nil {
		return nil, "", err
	}
	if err := p.s.setInt(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS"); err != nil {
		return nil, "", err
	}
	if note, err = pinAndMark(p.s, info, rt); err != nil {
		return nil, "", err
	}
	// UDP's ports are not TCP's: the connection's port number is usually
	// free for UDP. When it is not, any port keeps the addresses.
	if err := unix.Bind(p.s.fd, sockaddr(info.local)); err != nil {
		if !errors.Is(err, unix.EADDRINUSE) {
			return nil, "", fmt.Errorf("bind UDP socket to %v: %w", info.local, err)
		}
		if err := unix.Bind(p.s.fd, sockaddr(netip.AddrPortFrom(info.local.Addr(), 0))); err != nil {
			return nil, "", fmt.Errorf("bind UDP socket: %w", err)
		}
		note += fmt.Sprintf("; UDP port %d is taken, probes from another port", info.local.Port())
	}
	if err := unix.Connect(p.s.fd, sockaddr(info.remote)); err != nil {
		return nil, "", fmt.Errorf("connect UDP socket to %v: %w", info.remote, err)
	}
	sa, err := unix.Getsockname(p.s.fd)
	if err != nil {
		return nil, "", fmt.Errorf("UDP socket address: %w", err)
	}
	p.local = addrPortOf(sa)
	return p, note, nil
}

func (p *udpProber) send(ttl int, id uint32) (time.Time, error) {
	if err := setTTL(p.s, p.info.v4(), ttl); err != nil {
		return time.Time{}, err
	}
	payload := udpProbe(p.buf[:], id)
	var err error
	// An ICMP error for an earlier probe is also reported on the next
	// send (once): send again.
	for range 4 {
		now := time.Now()
		if _, err = unix.Write(p.s.fd, payload); err == nil || !pendingICMP(err) {
			return now, wrap("send", err)
		}
	}
	return time.Time{}, wrap("send", err)
}

// pendingICMP is an error a connected UDP socket reports once for an ICMP
// error it received earlier.
func pendingICMP(err error) bool {
	for _, e := range []error{unix.ECONNREFUSED, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EPROTO, unix.EHOSTDOWN, unix.EACCES} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (p *udpProber) start(out chan<- answer, ours func(id uint32) bool) {
	p.wg.Add(1)
	go p.read(out, ours)
}

func (p *udpProber) close() {
	p.s.close()
	p.wg.Wait()
}

// read reports the ICMP errors of the error queue, and data from the far
// end (a far end with a UDP service on the port answers that way).
func (p *udpProber) read(out chan<- answer, ours func(id uint32) bool) {
	defer p.wg.Done()
	r := newReader(p.s, readBuf, unix.MSG_ERRQUEUE, 0)
	for {
		pk, err := r.read()
		if err != nil {
			return
		}
		at := time.Now()
		if r.got != 0 {
			deliver(out, answer{from: p.info.remote.Addr(), kind: kindFarEnd, at: at, kernelNs: pk.kernelNs})
			continue
		}
		if a, ok := p.errAnswer(pk, r.buf[:pk.n]); ok && (!a.hasID || ours(a.id)) {
			a.at = at
			deliver(out, a)
		}
	}
}

// errAnswer turns an error-queue message into an answer.
func (p *udpProber) errAnswer(pk packet, quoted []byte) (answer, bool) {
	ee := pk.ee
	if !pk.hasEE || !ee.offender.IsValid() || (ee.origin != eeOriginICMP && ee.origin != eeOriginICMP6) {
		return answer{}, false
	}
	a := answer{from: ee.offender, kind: icmpKind(ee.origin == eeOriginICMP, ee.icmpType), code: ee.code, kernelNs: pk.kernelNs}
	a.id, a.hasID = udpProbeID(quoted)
	if a.kind == kindUnreachable && sameAddr(ee.offender, p.info.remote.Addr()) {
		a.kind = kindFarEnd
	}
	return a, true
}
