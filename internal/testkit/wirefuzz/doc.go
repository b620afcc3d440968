// Package wirefuzz holds the fuzz targets of whole paths: bytes a peer
// sends on the wire, through the source's decoding and summary, to what a
// user reads — the /probe text exposition, the Nagios plugin output, the
// probe table and JSON. It has no code of its own.
//
// Only tests import it (internal/architecture_test.go).
package wirefuzz
