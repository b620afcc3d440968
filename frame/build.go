package frame

import "encoding/binary"

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
