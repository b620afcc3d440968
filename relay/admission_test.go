package relay

import (
	"testing"
	"time"
)

// A connection that never proves itself, first in the list, keeps no
// later connection listed: each leaves the list when it proves itself or
// ends, and eviction takes the oldest unproven one.
func TestUnprovenListKeepsOnlyUnproven(t *testing.T) {
	s, err := New(Config{Name: "b", MaxConnections: 4})
	if err != nil {
		t.Fatal(err)
	}
	evicted := ""
	trickler := s.admit(func() { evicted = "trickler" })
	for i := 0; i < 3000; i++ {
		a := s.admit(func() { evicted = "churned" })
		if i%2 == 0 {
			s.settle(a) // proved itself (a valid frame)
		}
		s.settle(a) // gone
	}
	if n := s.unprovenCount(); n != 1 {
		t.Fatalf("%d connections listed after 3000 came and went behind an unproven one, want 1 (the unproven one)", n)
	}
	young := s.admit(func() { evicted = "young" })
	if s.evictOldest() {
		t.Fatal("evicted a connection younger than evictAge")
	}
	trickler.since = time.Now().Add(-time.Second)
	if !s.evictOldest() || evicted != "trickler" {
		t.Fatalf("evicted %q, want the oldest unproven connection", evicted)
	}
	s.settle(trickler) // its close after the eviction
	s.settle(young)
	s.settle(young)
	if n := s.unprovenCount(); n != 0 {
		t.Fatalf("%d connections listed after all ended", n)
	}
}
