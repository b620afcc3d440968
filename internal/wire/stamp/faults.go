package stamp

import (
	"fmt"
	"strings"
)

// ReplyFaults counts what a sender received and could not use, by
// reason: datagrams refused as replies (their packets stay lost), and
// replies taken for their times whose TLVs were not. It is the one list
// of the reasons every output names (JSON bad_replies, the reason label of
// /probe's subsegment_segment_bad_replies, the table, check, errors).
type ReplyFaults struct {
	// Late: a reply to a packet whose wait had ended.
	Late int `json:"late"`
	// Undecodable: shorter than the base packet, or of another session
	// (its SSID).
	Undecodable int `json:"undecodable"`
	// WrongSize: not the size of its request (a reflector answers with
	// the request's size, RFC 8762 §4); a larger one arrives cut.
	WrongSize int `json:"wrong_size"`
	// Auth: an authenticated session's reply whose HMAC does not verify
	// with any of the keys.
	Auth int `json:"auth"`
	// Echo: it echoes other sender fields (timestamp, Error Estimate) than
	// the packet of its sequence number was sent with.
	Echo int `json:"echo"`
	// Duplicate: a second reply to a packet, or one to a sequence number
	// never sent.
	Duplicate int `json:"duplicate"`
	// TLVUnverified: a reply whose TLVs were not used (its times were):
	// the request carried an HMAC TLV, the reply's was missing or did not
	// verify, so its TLVs are absent (ReplyTLVs.Unverified).
	TLVUnverified int `json:"tlv_unverified"`
}

// FaultReasons are the reasons of ReplyFaults, in the order Each gives
// them: the label values of subsegment_segment_bad_replies.
var FaultReasons = []string{"late", "undecodable", "wrong_size", "auth", "echo", "duplicate", "tlv_unverified"}

// Each calls fn with every reason and its count, in FaultReasons' order.
func (f *ReplyFaults) Each(fn func(reason string, n int)) {
	for i, n := range f.counts() {
		fn(FaultReasons[i], n)
	}
}

func (f *ReplyFaults) counts() [7]int {
	return [7]int{f.Late, f.Undecodable, f.WrongSize, f.Auth, f.Echo, f.Duplicate, f.TLVUnverified}
}

// Refused counts the datagrams refused as replies (all but TLVUnverified).
func (f *ReplyFaults) Refused() int {
	return f.Late + f.Undecodable + f.WrongSize + f.Auth + f.Echo + f.Duplicate
}

// Any reports whether anything is counted.
func (f *ReplyFaults) Any() bool { return f.Refused()+f.TLVUnverified > 0 }

// Since is what was counted after before (a session's counts only grow).
func (f ReplyFaults) Since(before ReplyFaults) ReplyFaults {
	return ReplyFaults{Late: f.Late - before.Late, Undecodable: f.Undecodable - before.Undecodable, WrongSize: f.WrongSize - before.WrongSize,
		Auth: f.Auth - before.Auth, Echo: f.Echo - before.Echo, Duplicate: f.Duplicate - before.Duplicate, TLVUnverified: f.TLVUnverified - before.TLVUnverified}
}

// Add adds g to f.
func (f *ReplyFaults) Add(g ReplyFaults) {
	f.Late += g.Late
	f.Undecodable += g.Undecodable
	f.WrongSize += g.WrongSize
	f.Auth += g.Auth
	f.Echo += g.Echo
	f.Duplicate += g.Duplicate
	f.TLVUnverified += g.TLVUnverified
}

var faultTexts = [7]string{
	"late (after their packet's wait)",
	"undecodable (shorter than the base packet, or of another session)",
	"not the size of the request (a reflector answers with the request's size)",
	"with an HMAC that does not verify with the keys of --relay.auth-key-file",
	"that echo other sender fields than the packet was sent with",
	"duplicates, or for packets never sent",
	"whose TLVs were not used: their HMAC TLV was missing or wrong",
}

// Text says the counts in words, e.g. "3 replies not the size of the
// request (…), 1 late (…)"; empty when nothing is counted.
func (f *ReplyFaults) Text() string {
	var parts []string
	for i, n := range f.counts() {
		if n == 0 {
			continue
		}
		noun := "replies"
		if n == 1 {
			noun = "reply"
		}
		parts = append(parts, fmt.Sprintf("%d %s %s", n, noun, faultTexts[i]))
	}
	return strings.Join(parts, ", ")
}
