package frame

import (
	"encoding/binary"
	"fmt"
)

// Overhead is what a probe frame holds besides its payload through a
// chain of hops hops: the larger of the request (the path) and the reply
// (a record per hop without variables, and an error record).
func Overhead(hops int) int {
	request := MinFrameLen + hops*PathEntryLen + MACLen
	reply := MinFrameLen + hops*PlainHopRecordLen + MaxErrorRecordLen + MACLen
	return max(request, reply)
}

// CheckPayload says whether probes padded with payload bytes fit frames
// of maxFrame bytes through a chain of up to maxHops hops, and what fits
// when they do not.
func CheckPayload(payload, maxFrame, maxHops int) error {
	if payload < 0 || payload > MaxPayloadBytes {
		return fmt.Errorf("payload of %d bytes out of range: use 0 to %d", payload, MaxPayloadBytes)
	}
	if fits := maxFrame - Overhead(maxHops); payload > fits {
		return fmt.Errorf("payload of %d bytes does not fit a %d-byte frame (--relay.max-frame-bytes) with the records of %d hops (--relay.max-hops): at most %d bytes fit; lower payload_bytes, or raise --relay.max-frame-bytes on every hop and the source",
			payload, maxFrame, maxHops, max(fits, 0))
	}
	return nil
}

// AppendRequest appends a complete request frame to dst: the probe header,
// data (padding or a stream block), the path of hop IDs, and the trailer.
func AppendRequest(dst []byte, kind Kind, p ProbeHeader, data []byte, path []uint64, s *Signer) []byte {
	p.Count = uint8(len(path))
	p.DataLen = uint32(len(data))
	start := len(dst)
	bodyLen := ProbeHdrLen + len(data) + len(path)*PathEntryLen + s.TrailerLen()
	dst = append(dst, make([]byte, HeaderLen+ProbeHdrLen)...)
	PutHeader(dst[start:], Header{Kind: kind, Flags: s.HeaderFlags(), Length: uint32(bodyLen)})
	PutProbeHeader(dst[start+HeaderLen:], p)
	dst = append(dst, data...)
	for _, id := range path {
		dst = binary.BigEndian.AppendUint64(dst, id)
	}
	return append(dst, s.Sign(dst[start:])...)
}

// AppendZeroRequest is AppendRequest with dataLen zero bytes of padding,
// without building the padding first.
func AppendZeroRequest(dst []byte, kind Kind, p ProbeHeader, dataLen int, path []uint64, s *Signer) []byte {
	p.Count = uint8(len(path))
	p.DataLen = uint32(dataLen)
	start := len(dst)
	bodyLen := ProbeHdrLen + dataLen + len(path)*PathEntryLen + s.TrailerLen()
	dst = append(dst, make([]byte, HeaderLen+ProbeHdrLen+dataLen)...)
	PutHeader(dst[start:], Header{Kind: kind, Flags: s.HeaderFlags(), Length: uint32(bodyLen)})
	PutProbeHeader(dst[start+HeaderLen:], p)
	for _, id := range path {
		dst = binary.BigEndian.AppendUint64(dst, id)
	}
	return append(dst, s.Sign(dst[start:])...)
}

// AppendErrorFrame appends a KindError frame holding e.
func AppendErrorFrame(dst []byte, e *ErrorRecord, s *Signer) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, HeaderLen)...)
	dst = AppendError(dst, e)
	PutHeader(dst[start:], Header{Kind: KindError, Flags: s.HeaderFlags(), Length: uint32(len(dst) - start - HeaderLen + s.TrailerLen())})
	return append(dst, s.Sign(dst[start:])...)
}

// AppendReply appends a reply frame built from its parts; relays write
// replies from pieces without this copy, sources and tests use it.
func AppendReply(dst []byte, kind Kind, p ProbeHeader, data []byte, records []byte, count int, s *Signer) []byte {
	p.Count = uint8(count)
	p.DataLen = uint32(len(data))
	start := len(dst)
	bodyLen := ProbeHdrLen + len(data) + len(records) + s.TrailerLen()
	dst = append(dst, make([]byte, HeaderLen+ProbeHdrLen)...)
	PutHeader(dst[start:], Header{Kind: kind, Flags: s.HeaderFlags(), Length: uint32(bodyLen)})
	PutProbeHeader(dst[start+HeaderLen:], p)
	dst = append(dst, data...)
	dst = append(dst, records...)
	return append(dst, s.Sign(dst[start:])...)
}
