package stamp

// ReplyTLVs is what a sender reads in the TLVs of a reflected packet.
type ReplyTLVs struct {
	// Unrecognized, Malformed and Integrity list the TLVs the reflector
	// flagged U, M or I (RFC 8972 §4): it did not know them, found them
	// malformed, or the HMAC TLV did not verify.
	Unrecognized, Malformed, Integrity []TLVType
	// Overrun: a TLV's Length ran past the packet (the reflected packet
	// is malformed).
	Overrun bool

	HasLocation          bool
	Location             Location
	HasTimestampInfo     bool
	TimestampInfo        TimestampInfo
	HasClassOfService    bool
	ClassOfService       ClassOfService
	HasDirectMeasurement bool
	DirectMeasurement    DirectMeasurement
	HasFollowUp          bool
	FollowUp             FollowUp
	// HMACPresent: the reply ends with an HMAC TLV; HMACValid: it
	// verifies with one of the keys.
	HMACPresent, HMACValid bool
	// Unverified: the request carried an HMAC TLV and the reply's is
	// missing or does not verify: whoever changed the TLVs on the way did
	// not have the key, so none of them is used (every field above is
	// absent, HMACPresent aside).
	Unverified bool
}

// ParseReplyTLVs reads the TLVs of a reflected packet. auth is the keys
// of a request that carried an HMAC TLV (RFC 8972 §4.8): then the reply's
// TLVs are used only when its HMAC TLV verifies, else they are all absent
// and Unverified says so. nil: the request carried none, nothing to
// verify.
func ParseReplyTLVs(pkt []byte, m Mode, auth *Auth) ReplyTLVs {
	out := parseReplyTLVs(pkt, m, auth)
	if auth != nil && !out.HMACValid {
		return ReplyTLVs{Unverified: true, HMACPresent: out.HMACPresent}
	}
	return out
}

func parseReplyTLVs(pkt []byte, m Mode, auth *Auth) ReplyTLVs {
	var out ReplyTLVs
	r := ReadTLVs(pkt, m)
	for {
		t, ok := r.Next()
		if !ok {
			break
		}
		if flagged(&out, t) {
			continue
		}
		readTLV(&out, pkt, m, t, auth)
	}
	out.Overrun = r.Err() != nil
	return out
}

func flagged(out *ReplyTLVs, t TLV) bool {
	if t.Flags&FlagU != 0 {
		out.Unrecognized = append(out.Unrecognized, t.Type)
	}
	if t.Flags&FlagM != 0 {
		out.Malformed = append(out.Malformed, t.Type)
	}
	if t.Flags&FlagI != 0 {
		out.Integrity = append(out.Integrity, t.Type)
	}
	return t.Flags&(FlagU|FlagM|FlagI) != 0
}

func readTLV(out *ReplyTLVs, pkt []byte, m Mode, t TLV, auth *Auth) {
	var err error
	switch t.Type {
	case TLVLocation:
		out.Location, err = ParseLocation(t.Value)
		out.HasLocation = err == nil
	case TLVTimestampInfo:
		out.TimestampInfo, err = ParseTimestampInfo(t.Value)
		out.HasTimestampInfo = err == nil
	case TLVClassOfService:
		out.ClassOfService, err = ParseClassOfService(t.Value)
		out.HasClassOfService = err == nil
	case TLVDirectMeasurement:
		out.DirectMeasurement, err = ParseDirectMeasurement(t.Value)
		out.HasDirectMeasurement = err == nil
	case TLVFollowUp:
		out.FollowUp, err = ParseFollowUp(t.Value)
		out.HasFollowUp = err == nil
	case TLVHMAC:
		out.HMACPresent = true
		end := t.Off + TLVHeaderLen + len(t.Value)
		last := end == len(pkt) || allZero(pkt[end:])
		out.HMACValid = last && auth.find(t.Value, pkt[0:4], pkt[m.BaseLen():t.Off]) >= 0
	}
}
