package continuous

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// The loop's deadlines come out of its heap in order, however they are
// pushed, moved and taken out.
func TestTimerHeapKeepsDeadlinesInOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	var h timerHeap
	var live []*tcpEntry
	for range 5000 {
		switch op := rng.IntN(4); {
		case op == 0 || len(live) == 0:
			e := &tcpEntry{due: rng.Int64N(1000), heapIdx: -1}
			h.push(e)
			live = append(live, e)
		case op == 1:
			e := live[rng.IntN(len(live))]
			e.due = rng.Int64N(1000)
			h[e.heapIdx].due = e.due
			h.fix(e.heapIdx)
		case op == 2:
			i := rng.IntN(len(live))
			h.remove(live[i].heapIdx)
			live = slices.Delete(live, i, i+1)
		default:
			for i, x := range h {
				if x.e.heapIdx != i || x.due != x.e.due {
					t.Fatalf("entry at %d says %d, due %d beside %d", i, x.e.heapIdx, x.e.due, x.due)
				}
				if i > 0 && h[(i-1)/heapArity].due > x.due {
					t.Fatalf("heap order broken at %d", i)
				}
			}
		}
	}
	var out []int64
	for len(h) > 0 {
		out = append(out, h[0].due)
		h.remove(0)
	}
	if !slices.IsSorted(out) || len(out) != len(live) {
		t.Errorf("%d deadlines out of %d live, sorted %v", len(out), len(live), slices.IsSorted(out))
	}
}
