// Package trace finds the routers under a segment: it traces the route
// from this host to the far end of an existing TCP connection (a chain's
// connection to its next hop) on that connection's own flow, the way
// Paris traceroute keeps one flow per trace, so that routers balancing
// equal-cost paths on the 5-tuple send the probes the way the connection
// goes. It owns the probes, their sockets, the matching of answers to
// probes and the bounds of a trace; what a trace means for a segment
// (when to run it, how to show it) belongs to its callers. It imports
// nothing of this module above internal/wire and internal/host.
//
// # Probes
//
// With CAP_NET_RAW (MethodTCP) a probe is a TCP SYN with the connection's
// source and destination addresses and ports, sent from a raw socket with
// a small time to live; its identity is the sequence number, which routers
// do not hash on. A router where it expires answers ICMP (ICMPv6) time
// exceeded quoting the probe's IP header and at least the first 8 bytes
// of TCP: addresses, ports and sequence number, which must all match.
//
// A probe that reaches the far end lands on the established connection.
// Linux (since 3.6, RFC 5961 section 4) never accepts a SYN there,
// whatever its sequence number: it drops it and answers with a challenge
// ACK, at most one per 500 ms per connection (tcp_invalid_ratelimit). (A
// stack older than RFC 5961 would reset the connection on a SYN that falls
// in its window: the far ends here are the chain's hops, on Linux.) That
// ACK repeats the far end's current acknowledgement and window: for this
// host's TCP it is a duplicate ACK carrying nothing new, which a
// connection with SACK (and RACK, Linux's default) ignores; without SACK
// a run of three could look like loss, so such a connection is traced
// with UDP instead. The probe's own sequence number never touches the
// connection either way: this host's TCP takes an ICMP error for the
// flow into account only when the quoted sequence number lies in the
// connection's unacknowledged range [snd_una, snd_nxt] (tcp_v4_err), a
// random 32-bit number falls there with a chance of in-flight bytes in
// 2^32, and even then the error is only remembered as a soft error for a
// connection that later times out (relays do not set IP_RECVERR on TCP).
// No data is sent, no reset, and the far end's answer is the only
// packet the connection sees. The far end's challenge ACK is how the trace
// knows it reached the far end: a raw TCP socket filtered to the flow sees
// it (a pure ACK that acknowledges nothing new), and matches it to the
// outstanding probe of the TTL being probed. It carries nothing of the
// probe, so the match is by time: on a busy connection a duplicate ACK of
// the connection's own arriving while a silent router's TTL is probed
// could end a trace early (an ICMP answer that quotes the probe always
// overrides such a match). At the far end's TTL the probes are spaced by
// Options.FarEndSpacing so that each can be answered, and a trace of a
// far end starts only FarEndSpacing after the previous one's last answer.
//
// The kernel routes a raw socket's packets without their ports, so a
// multipath route on this host would hash the probes differently from
// the connection. The trace asks the kernel for the connection's own
// route (RTM_GETROUTE with its protocol, ports and mark) and pins the
// probes to that route's interface (IP_UNICAST_IF); Flow.Route says when
// that is not enough (two nexthops on one interface). The probes copy the
// connection's TOS (DSCP) and mark.
//
// # Without the privilege
//
// Without CAP_NET_RAW (MethodUDP, as tracepath does) a probe is a UDP
// datagram from a socket bound to the connection's local address and the
// same port number (UDP's ports are not TCP's), connected to the far end's
// address and port, with IP_TTL per probe; the kernel queues the ICMP
// answers on the socket (IP_RECVERR) with their sender (SO_EE_OFFENDER),
// and the far end answers port unreachable. The probe's identity is in
// its 8-byte payload (a router that quotes less is matched by time). The
// protocol differs from the connection's, so routers that hash on it may
// choose another branch: Flow says which method ran and why. Routers
// and the far end rate-limit their ICMP per destination (Linux: one a
// second after a burst of six), which traces closer together than that
// see as loss. A far end with a UDP service on the connection's port
// number receives the 8-byte probes (its answer, if any, counts as
// reaching it).
//
// A systemd unit gives a relay the privilege with
//
//	[Service]
//	AmbientCapabilities=CAP_NET_RAW
//	CapabilityBoundingSet=CAP_NET_RAW
//
// # Bounds
//
// A trace is never a way to make a relay send packets where it would not
// otherwise: its destination is always the far end of the connection it
// was given; it probes at most Options.MaxTTL TTLs (30) with
// Options.Probes probes each (3), plus at most Probes-1 spaced probes of
// the far end; it never outlives its context (the scrape's budget): every
// wait ends at the deadline and no probe leaves after it; it gives up
// after Options.MaxSilent silent TTLs in a row; a Tracer runs one trace
// per far end (address and port) at a time (later callers share its
// result) and sends at
// most Config.Rate probe packets per second over all traces (a token
// bucket, default 100/s, bursts of 10). A trace's memory is bounded by
// its probes: one record per probe, fixed read buffers, and a bounded
// queue of answers that drops what a flood of ICMP would add.
//
// # Results
//
// A Result lists every TTL probed in order, with the answering address
// (none for a silent router: the trace goes on), round trips and loss;
// Fingerprint identifies the path for counting path changes; DelayStep
// finds the first TTL where the round trip rises by a threshold, by a
// rule robust to routers that are slow to answer (see Steps).
//
// IPv4 and IPv6 are both traced. IPv6 probes carry flow label 0 where the
// connection's packets carry the kernel's automatic label: routers that
// hash IPv6 on the flow label may send them another way. The route lookup
// with ports needs Linux 4.17 or later (older kernels answer it without
// the ports).
//
// Layering (internal/architecture_test.go): floor 1; it imports only
// internal/host and internal/wire, never internal/config, the source end,
// relay or anything above.
package trace
