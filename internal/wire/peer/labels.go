package peer

import (
	"fmt"
	"strconv"
)

// Hop identifies a hop of one chain: ID tells hops apart, Name labels them.
type Hop struct {
	ID   uint64
	Name string
}

// Labels returns the labels of a chain's hops in chain order: each hop's
// name, made unique by a suffix when an earlier hop (another ID) already
// has it: same, same#2, same#3. A hop that appears twice with the same ID
// keeps one label. '#' is not allowed in names, so a suffixed label never
// collides with a real name. dup reports whether any suffix was added.
func Labels(hops []Hop) (labels []string, dup bool) {
	return AppendLabels(make([]string, 0, len(hops)), hops)
}

// AppendLabels appends the labels of hops to dst (Labels' rule) without
// maps: a continuous entry labels its chain on every probe, and a chain
// is a few hops long (at most --relay.max-hops).
func AppendLabels(dst []string, hops []Hop) ([]string, bool) {
	base, dup := len(dst), false
	// counted[j]: hop j took a label of its own (it is not an earlier
	// hop met again).
	var small [64]bool
	counted := small[:0]
	if len(hops) > len(small) {
		counted = make([]bool, 0, len(hops))
	}
	for i, h := range hops {
		if j := indexOfID(hops[:i], h.ID); j >= 0 {
			dst = append(dst, dst[base+j])
			counted = append(counted, false)
			continue
		}
		n := 1
		for j := 0; j < i; j++ {
			if counted[j] && hops[j].Name == h.Name {
				n++
			}
		}
		l := h.Name
		if n > 1 {
			l = h.Name + "#" + strconv.Itoa(n)
			dup = true
		}
		dst = append(dst, l)
		counted = append(counted, true)
	}
	return dst, dup
}

// indexOfID is the first of hops with identity id, -1 for none (or for
// id 0, which identifies nothing).
func indexOfID(hops []Hop, id uint64) int {
	if id == 0 {
		return -1
	}
	for j, h := range hops {
		if h.ID == id {
			return j
		}
	}
	return -1
}

// ValidateLabel checks a hop as configuration refers to it: a name, or a
// name with the suffix Labels gives a repeated name (same#2).
func ValidateLabel(label string) error {
	name := label
	for i := len(label) - 1; i > 0; i-- {
		c := label[i]
		if c >= '0' && c <= '9' {
			continue
		}
		if c == '#' && i < len(label)-1 {
			n, err := strconv.Atoi(label[i+1:])
			if err != nil || n < 2 {
				return fmt.Errorf("hop %q: the suffix of a repeated name counts from #2", label)
			}
			name = label[:i]
		}
		break
	}
	return ValidateName(name)
}
