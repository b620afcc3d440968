package relay

import (
	"sync/atomic"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

// admission follows a connection until its first valid frame. Idle and
// slow connections (a slowloris, a port scanner) then cannot starve
// probes: at the connection limit a relay closes the oldest connection that
// has not proven itself, instead of refusing the new one.
//
// A connection is in the relay's unproven list only while it has not
// proven itself and is open: it leaves the list the moment it sends a
// valid frame or ends, wherever it stands in it. No connection can then
// keep another's admission, and with it that one's session, alive — not
// even one that never proves itself (a trickle of bytes, which the frame
// deadline ends anyway).
type admission struct {
	// proven: a valid frame arrived, or the connection is gone; either
	// way there is nothing to evict.
	proven atomic.Bool
	since  time.Time
	evict  func()
	// session is the epoll engine's session; touched only on its thread.
	session *lsession
	// prev, next and listed place the admission in Server.unproven;
	// guarded by Server.unprovenMu.
	prev, next *admission
	listed     bool
}

// unprovenList is the connections without a valid frame yet, oldest first.
type unprovenList struct {
	head, tail *admission
	n          int
}

func (l *unprovenList) push(a *admission) {
	a.prev, a.next, a.listed = l.tail, nil, true
	if l.tail != nil {
		l.tail.next = a
	} else {
		l.head = a
	}
	l.tail = a
	l.n++
}

func (l *unprovenList) remove(a *admission) {
	if !a.listed {
		return
	}
	if a.prev != nil {
		a.prev.next = a.next
	} else {
		l.head = a.next
	}
	if a.next != nil {
		a.next.prev = a.prev
	} else {
		l.tail = a.prev
	}
	a.prev, a.next, a.listed = nil, nil, false
	l.n--
}

// evictAge protects connections younger than this from eviction: a real
// source sends its first frame well within it.
const evictAge = 100 * time.Millisecond

// admit lists a new connection as not proven yet; evict closes it.
func (s *Server) admit(evict func()) *admission {
	a := &admission{since: time.Now(), evict: evict}
	s.unprovenMu.Lock()
	s.unproven.push(a)
	s.unprovenMu.Unlock()
	return a
}

// settle takes a connection off the unproven list for good: at its first
// valid frame, or when it ends.
func (s *Server) settle(a *admission) {
	if a.proven.Load() {
		return
	}
	s.unprovenMu.Lock()
	a.proven.Store(true)
	s.unproven.remove(a)
	s.unprovenMu.Unlock()
}

// unprovenCount is how many connections have not sent a valid frame yet.
func (s *Server) unprovenCount() int {
	s.unprovenMu.Lock()
	defer s.unprovenMu.Unlock()
	return s.unproven.n
}

// evictOldest closes the oldest connection that has not sent a valid frame
// and is older than evictAge; false when there is none.
func (s *Server) evictOldest() bool {
	s.unprovenMu.Lock()
	victim := s.unproven.head
	if victim != nil && time.Since(victim.since) >= evictAge {
		s.unproven.remove(victim)
	} else {
		victim = nil
	}
	s.unprovenMu.Unlock()
	if victim == nil {
		return false
	}
	s.metrics.Failed(peer.ReasonOverloaded)
	s.log.Debug("connection limit reached: closing the oldest connection without a valid frame")
	victim.evict()
	return true
}

// slot takes a connection slot, evicting an idle connection if needed.
func (s *Server) slot() bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
	}
	if !s.evictOldest() {
		return false
	}
	t := time.NewTimer(500 * time.Millisecond)
	defer t.Stop()
	select {
	case s.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}
