package prober

import (
	"fmt"
	"sync"
	"testing"
)

// keep puts a name once while it stays the same and the cache does not
// change, again when it changes, when another prober names the same
// target otherwise, and when the cache changed since (full, it let new
// names take old ones' place).
func TestNameCacheKeep(t *testing.T) {
	c := &NameCache{}
	var last, other cachedName
	c.keep("t:1", "b", &last)
	if got := c.get("t:1"); got != "b" {
		t.Fatalf("after keep: %q, want b", got)
	}
	c.m["t:1"] = "marker" // what a second put of b would overwrite
	c.keep("t:1", "b", &last)
	if got := c.get("t:1"); got != "marker" {
		t.Errorf("the same name kept again: %q, want it not put again", got)
	}
	c.keep("t:1", "c", &last)
	if got := c.get("t:1"); got != "c" {
		t.Errorf("a changed name: %q, want c", got)
	}
	c.keep("t:1", "d", &other) // another prober of the same target
	c.keep("t:1", "c", &last)
	if got := c.get("t:1"); got != "c" {
		t.Errorf("after another prober named the target d: %q, want c put again (the last writer's)", got)
	}
	for i := 0; c.bytes+cachedBytes("other:0", "x") <= maxCachedNameBytes; i++ {
		c.put(fmt.Sprintf("other:%d", i), "x") // fills the cache
	}
	c.put("one:more", "x") // a name takes others' place (perhaps t:1's)
	if c.bytes > maxCachedNameBytes {
		t.Errorf("the cache holds %d bytes, over its %d", c.bytes, maxCachedNameBytes)
	}
	if got := c.get("one:more"); got != "x" {
		t.Errorf("a new name in a full cache: %q, want it kept", got)
	}
	c.keep("t:1", "c", &last) // the cache changed since: put again
	if got := c.get("t:1"); got != "c" {
		t.Errorf("the same name after the cache changed: %q, want c put again", got)
	}
	var nilCache *NameCache
	nilCache.keep("t:1", "b", &last) // no cache: nothing to do
}

// An exporter's continuous targets (10 000 in the scale figures) all keep
// their names: the cache does not forget them as it fills.
func TestNameCacheHoldsTenThousandTargets(t *testing.T) {
	c := &NameCache{}
	const n = 10000
	last := make([]cachedName, n)
	for round := range 2 {
		for i := range n {
			c.keep(fmt.Sprintf("rack%d-relay.example.net:9000", i), fmt.Sprintf("rack%d-relay", i), &last[i])
		}
		for i := range n {
			if got, want := c.get(fmt.Sprintf("rack%d-relay.example.net:9000", i)), fmt.Sprintf("rack%d-relay", i); got != want {
				t.Fatalf("round %d: target %d: %q, want %q", round, i, got, want)
			}
		}
	}
	if v := c.version.Load(); v != n {
		t.Errorf("version %d after two rounds of %d unchanged names, want %d (one put each)", v, n, n)
	}
}

// Probers of many targets keep their names at once (run with -race):
// every target ends with its name.
func TestNameCacheKeepConcurrently(t *testing.T) {
	c := &NameCache{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last cachedName
			target, name := fmt.Sprintf("t:%d", g), fmt.Sprintf("hop%d", g)
			for range 1000 {
				c.keep(target, name, &last)
				_ = c.get(target)
			}
		}()
	}
	wg.Wait()
	for g := range 8 {
		if got, want := c.get(fmt.Sprintf("t:%d", g)), fmt.Sprintf("hop%d", g); got != want {
			t.Errorf("t:%d: %q, want %q", g, got, want)
		}
	}
}
