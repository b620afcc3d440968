package frame

import "fmt"

// Expect is what a reply must answer: the kind and sequence number of the
// request it is the reply to.
type Expect struct {
	Request Kind
	Seq     uint64
}

// Reply is a reply frame a hop (or source) accepted from its next hop.
type Reply struct {
	View View
	// Refusal is set when the next hop answered with an error frame: it
	// refused an earlier frame and closes the connection.
	Refusal *ErrorRecord
	// Unverified: the refusal did not carry a valid signature (the next
	// hop has another key, or none); it is reported, not trusted.
	Unverified bool
}

// CheckReply is how every receiver of replies — relays, sources, stream
// mode — turns the bytes of one reply into trusted data: it verifies the
// signature, recognises an error frame, validates the frame and every
// record (names, numbers, flags: decodeRecord), and matches the reply to
// the request it must answer. It does not allocate for a valid reply.
//
// A refusal comes back in Reply.Refusal with a nil error, unless its
// signature failed: then the error says so and Refusal holds what the
// unverified frame said. When a record is refused (*BadRecord), View
// still locates the records, so the receiver can decode those before it.
func CheckReply(fr []byte, sign *Signer, maxFrameBytes int, want Expect) (Reply, error) {
	return checkReply(fr, sign, maxFrameBytes, want, nil)
}

// CheckReplyInto is CheckReply for a receiver that keeps the records (a
// source): they are decoded into dst as they are checked, once
// (ParseRecordsInto: names that did not change are kept). It returns
// them, those before a refused record when one is (*BadRecord).
func CheckReplyInto(fr []byte, sign *Signer, maxFrameBytes int, want Expect, dst []Record) (Reply, []Record, error) {
	recs := dst[:0]
	rep, err := checkReply(fr, sign, maxFrameBytes, want, &recs)
	return rep, recs, err
}

func checkReply(fr []byte, sign *Signer, maxFrameBytes int, want Expect, recs *[]Record) (Reply, error) {
	if err := sign.Verify(fr); err != nil {
		if rec, perr := ParseErrorFrame(fr, maxFrameBytes); perr == nil {
			return Reply{Refusal: &rec, Unverified: true}, err
		}
		return Reply{}, err
	}
	h, err := ParseHeader(fr, maxFrameBytes)
	if err != nil {
		return Reply{}, err
	}
	if h.Kind == KindError {
		rec, err := ParseErrorFrame(fr, maxFrameBytes)
		if err != nil {
			return Reply{}, fmt.Errorf("error frame: %w", err)
		}
		return Reply{Refusal: &rec}, nil
	}
	v, err := parse(fr, maxFrameBytes, MaxHopsLimit, recs)
	if err != nil {
		return Reply{View: v}, err
	}
	if v.Header.Kind != want.Request.ReplyKind() || v.Probe.Seq != want.Seq {
		return Reply{}, fmt.Errorf("%w: %s seq %d does not answer %s seq %d", ErrMalformed, v.Header.Kind, v.Probe.Seq, want.Request, want.Seq)
	}
	return Reply{View: v}, nil
}

// ErrorRecordBytes returns the record inside a verified error frame, to
// pass it on unchanged in a reply.
func ErrorRecordBytes(fr []byte) []byte {
	h, err := ParseHeader(fr, len(fr))
	if err != nil || len(fr) < h.FrameLen() {
		return nil
	}
	end := h.FrameLen()
	if h.Signed() {
		end -= MACLen
	}
	if end < HeaderLen {
		return nil
	}
	return fr[HeaderLen:end]
}
