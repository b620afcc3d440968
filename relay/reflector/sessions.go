package reflector

import (
	"net/netip"

	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// sessionKey identifies a STAMP session: the sender's address and port,
// and its SSID (RFC 8972 §3).
type sessionKey struct {
	addr [16]byte
	port uint16
	ssid uint16
}

type session struct {
	key     sessionKey
	gen     uint32
	used    bool
	nextSeq uint32
	rx, tx  uint32
	seen    int64
	prev    stamp.PrevReflected
}

// sessions is a fixed-size table: the map is sized for its bound up front
// and the entries live in one slice, so that a new session allocates
// nothing. Each sender holds at most perAddr of them, so that one host
// cannot take the table: an IPv4 address, or an IPv6 /64 (senderOf).
type sessions struct {
	index     map[sessionKey]int32
	list      []session
	free      []int32
	perAddr   int32
	byAddr    map[[16]byte]int32 // sessions per senderOf
	timeout   int64
	lastEvict int64
}

// senderOf is what the per-address share counts by: an IPv4 sender's
// address (IPv4-mapped included), an IPv6 sender's /64 — the usual
// assignment to one host or link, whose 2^64 addresses would otherwise
// each get a share of their own.
func senderOf(addr [16]byte) [16]byte {
	if netip.AddrFrom16(addr).Is4In6() {
		return addr
	}
	clear(addr[8:])
	return addr
}

func newSessions(max, perAddr int, timeout int64) *sessions {
	s := &sessions{index: make(map[sessionKey]int32, max), list: make([]session, max), free: make([]int32, max), timeout: timeout,
		perAddr: int32(perAddr), byAddr: make(map[[16]byte]int32, max)}
	for i := range s.free {
		s.free[i] = int32(max - 1 - i)
	}
	return s
}

// Why get could not give a packet a session (stateless reasons).
const (
	noSessionFull = iota
	noSessionAddress
	noSessionCount
)

// get finds or creates the session of a packet; -1 and why when it
// cannot: the table is full of live sessions, or the sender (its IPv4
// address, its IPv6 /64) holds its share (the packet is then answered statelessly).
func (s *sessions) get(from netip.AddrPort, ssid uint16, now int64) (int32, int) {
	k := sessionKey{addr: from.Addr().As16(), port: from.Port(), ssid: ssid}
	if i, ok := s.index[k]; ok {
		s.list[i].seen = now
		return i, 0
	}
	sender := senderOf(k.addr)
	if (len(s.free) == 0 || s.byAddr[sender] >= s.perAddr) && now-s.lastEvict >= int64(100e6) {
		// Full: forget idle sessions now, at most 10 times a second
		// (a flood of new senders must not make every packet scan).
		s.lastEvict = now
		s.sweep(now)
	}
	switch {
	case len(s.free) == 0:
		return -1, noSessionFull
	case s.byAddr[sender] >= s.perAddr:
		return -1, noSessionAddress
	}
	i := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	e := &s.list[i]
	*e = session{key: k, gen: e.gen + 1, used: true, seen: now}
	s.index[k] = i
	s.byAddr[sender]++
	return i, 0
}

// sweep forgets the sessions idle longer than the timeout.
func (s *sessions) sweep(now int64) {
	for i := range s.list {
		e := &s.list[i]
		if e.used && now-e.seen > s.timeout {
			delete(s.index, e.key)
			sender := senderOf(e.key.addr)
			if s.byAddr[sender]--; s.byAddr[sender] <= 0 {
				delete(s.byAddr, sender)
			}
			e.used = false
			s.free = append(s.free, int32(i))
		}
	}
}

func (s *sessions) live() int { return len(s.index) }

// tokenBucket bounds the packets answered per second, with a burst of a
// tenth of a second.
type tokenBucket struct {
	rate, burst, tokens float64
	last                int64
}

func newTokenBucket(rate int) tokenBucket {
	burst := max(float64(rate)/10, batchSize)
	return tokenBucket{rate: float64(rate), burst: burst, tokens: burst}
}

func (b *tokenBucket) refill(now int64) {
	if b.last != 0 {
		b.tokens = min(b.burst, b.tokens+float64(now-b.last)*b.rate/1e9)
	}
	b.last = now
}

func (b *tokenBucket) take() bool {
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
