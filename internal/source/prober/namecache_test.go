package prober

import (
	"fmt"
	"testing"
)

// keep puts a name once while it stays the same, again when it changes
// and when the cache started again (full) since.
func TestNameCacheKeep(t *testing.T) {
	c := &NameCache{}
	var last cachedName
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
