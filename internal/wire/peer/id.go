package peer

import (
	"os"
	"sync/atomic"
	"time"
)

var idCounter atomic.Uint64

// fallbackID mixes the time, the process and a counter; used only if the
// system's random source fails.
func fallbackID() uint64 {
	x := uint64(time.Now().UnixNano()) ^ uint64(os.Getpid())<<32 ^ idCounter.Add(1)*0x9e3779b97f4a7c15
	x ^= x >> 31
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 29
	if x == 0 {
		x = 1
	}
	return x
}
