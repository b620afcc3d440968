package prober

import (
	"fmt"
	"sync"
	"testing"
)

// keep puts a name once while it stays the same and the cache does not
// change, again when it changes, when another prober names the same
// target otherwise, and when the cache started again (full) since.
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
	for i := range maxCachedNames {
		c.put(fmt.Sprintf("other:%d", i), "x") // fills the cache: it starts again
	}
	if got := c.get("t:1"); got != "t:1" {
		t.Fatalf("after the cache started again: %q, want the target itself", got)
	}
	c.keep("t:1", "c", &last)
	if got := c.get("t:1"); got != "c" {
		t.Errorf("the same name after the cache started again: %q, want c put again", got)
	}
	var nilCache *NameCache
	nilCache.keep("t:1", "b", &last) // no cache: nothing to do
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
