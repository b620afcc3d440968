package reflector

import (
	"testing"

	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// A reload that rotates the chain's keys (KeyRing.Set) is followed by
// the reflector from the next packet on: senders signing with the new
// key are answered, those with a dropped key are not; during a
// rollover (two keys) both are.
func TestReflectorFollowsTheKeyRing(t *testing.T) {
	oldKey, newKey := frame.Keys{[]byte("old-0123456789abcdef0123456789")}, frame.Keys{[]byte("new-0123456789abcdef0123456789")}
	ring := frame.NewKeyRing(oldKey)
	r := start(t, Config{KeyRing: ring})
	if r.Mode() != stamp.Authenticated {
		t.Fatalf("a reflector with a key ring answers %s, want authenticated", r.Mode())
	}
	received := func(keys frame.Keys) int {
		_, sum := probe(t, stamp.SessionOptions{Target: r.Addr().String(), Mode: stamp.Authenticated, Keys: keys}, 3)
		return sum.Received
	}
	steps := []struct {
		name     string
		ring     frame.Keys
		old, new int
	}{
		{"the key of the start", oldKey, 3, 0},
		{"a rollover: both keys", frame.Keys{newKey[0], oldKey[0]}, 3, 3},
		{"the old key dropped", newKey, 0, 3},
	}
	for i, s := range steps {
		if i > 0 {
			ring.Set(s.ring)
		}
		if got, gotNew := received(oldKey), received(newKey); got != s.old || gotNew != s.new {
			t.Errorf("%s: replies to the old key %d, to the new %d; want %d, %d", s.name, got, gotNew, s.old, s.new)
		}
	}
}
