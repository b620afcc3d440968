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
	labels = make([]string, len(hops))
	byID := make(map[uint64]string, len(hops))
	count := make(map[string]int, len(hops))
	for i, h := range hops {
		if l, ok := byID[h.ID]; ok && h.ID != 0 {
			labels[i] = l
			continue
		}
		count[h.Name]++
		l := h.Name
		if n := count[h.Name]; n > 1 {
			l = h.Name + "#" + strconv.Itoa(n)
			dup = true
		}
		labels[i] = l
		if h.ID != 0 {
			byID[h.ID] = l
		}
	}
	return labels, dup
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
