// Package stamp owns the STAMP test packet (RFC 8762) and its optional
// extensions (RFC 8972): the Session-Sender and Session-Reflector packets
// in unauthenticated and authenticated mode (HMAC-SHA-256 truncated to 128
// bits, keyed from the chain's key file), their timestamps (NTP 64-bit and
// PTPv2 truncated, told apart by the Z bit), the Error Estimate of RFC 4656
// §4.1.2 filled from the kernel's clock state, the SSID and the TLVs:
// Extra Padding, Location, Timestamp Information, Class of Service, Direct
// Measurement, Follow-up Telemetry and HMAC.
//
// It also holds the two ends' per-packet rules that every user calls: how a
// reflector turns a request into its reply in place (Reflect, Finish), and
// a sender's session (Session) with its per-packet results and their
// Summary (round trip, jitter, loss per direction, residence, one-way
// delays with their error bound, DSCP re-marking per direction).
//
// Every decoder here is strict about bounds and never panics on input: a
// packet from the network is hostile until its length, its TLVs and, in
// authenticated mode, its HMAC were checked. The package imports nothing of
// this module above internal/wire and internal/host.
//
// Byte layouts (offsets from the start of the UDP payload):
//
//	Session-Sender, unauthenticated (RFC 8762 §4.2.1, RFC 8972 §3), 44 octets:
//	  0 Sequence Number (4)   4 Timestamp (8)   12 Error Estimate (2)
//	 14 SSID (2)             16 MBZ (28)       44 TLVs
//	Session-Sender, authenticated (RFC 8762 §4.2.2), 112 octets:
//	  0 Sequence Number (4)   4 MBZ (12)        16 Timestamp (8)
//	 24 Error Estimate (2)   26 SSID (2)        28 MBZ (68)   96 HMAC (16)
//	112 TLVs
//	Session-Reflector, unauthenticated (RFC 8762 §4.3.1), 44 octets:
//	  0 Sequence Number (4)   4 Timestamp (8)   12 Error Estimate (2)
//	 14 SSID (2)             16 Receive Timestamp (8)
//	 24 Session-Sender Sequence Number (4)      28 Session-Sender Timestamp (8)
//	 36 Session-Sender Error Estimate (2)       38 MBZ (2)
//	 40 Ses-Sender TTL (1)   41 MBZ (3)         44 TLVs
//	Session-Reflector, authenticated (RFC 8762 §4.3.2), 112 octets:
//	  0 Sequence Number (4)   4 MBZ (12)        16 Timestamp (8)
//	 24 Error Estimate (2)   26 SSID (2)        28 MBZ (4)
//	 32 Receive Timestamp (8)                   40 MBZ (8)
//	 48 Session-Sender Sequence Number (4)      52 MBZ (12)
//	 64 Session-Sender Timestamp (8)            72 Session-Sender Error Estimate (2)
//	 74 MBZ (6)              80 Ses-Sender TTL (1)   81 MBZ (15)
//	 96 HMAC (16)           112 TLVs
//
// Layering (internal/architecture_test.go): floor 1; it imports only
// internal/host and internal/wire, never internal/config, the source end,
// relay or anything above.
package stamp
