package frame

import "sync"

// Read buffers come from size-classed pools and go back when a session
// ends, so that thousands of short sessions (one per scrape) do not each
// allocate and leave garbage behind.
var bufClasses = [...]int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20}

var bufPools [len(bufClasses)]sync.Pool

// getBuf returns a buffer of at least n bytes (exactly a class size when
// one fits) and the pointer that returns it to its pool.
func getBuf(n int) *[]byte {
	for i, size := range bufClasses {
		if n <= size {
			if p, ok := bufPools[i].Get().(*[]byte); ok {
				return p
			}
			b := make([]byte, size)
			return &b
		}
	}
	b := make([]byte, n)
	return &b
}

// bufSize is the size of the buffer getBuf returns for n bytes.
func bufSize(n int) int {
	for _, size := range bufClasses {
		if n <= size {
			return size
		}
	}
	return n
}

// putBuf returns a buffer from getBuf to its pool.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	for i, size := range bufClasses {
		if cap(*p) == size {
			*p = (*p)[:size]
			bufPools[i].Put(p)
			return
		}
	}
}
