package config

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// ProberSTAMP probes a STAMP Session-Reflector (RFC 8762): a router or host
// that answers STAMP, or a relay's --stamp.listen-address.
const ProberSTAMP = "stamp"

// STAMPProbe is how a stamp module measures to its reflector.
type STAMPProbe struct {
	// Name labels the reflector's hop (SLAs, SNMP context, outputs);
	// default: the target's host.
	Name string `yaml:"name,omitempty"`
	// Packets per scrape (default: the module's probes), after one
	// warm-up packet.
	Packets int `yaml:"packets,omitempty"`
	// Interval between packets (default: the module's interval).
	Interval Duration `yaml:"interval,omitempty"`
	// PacketTimeout is how long a packet's reply is waited for before
	// it counts as lost (default 1s; cut down to what is left of the
	// scrape).
	PacketTimeout Duration `yaml:"packet_timeout,omitempty"`
	// PacketBytes is the UDP payload of every packet (0: the smallest for
	// the mode and the TLVs).
	PacketBytes int `yaml:"packet_bytes,omitempty"`
	// DSCP marks the packets, and is asked for their replies (Class of
	// Service TLV), so that re-marking shows per direction.
	DSCP int `yaml:"dscp,omitempty"`
	// Authenticated sends authenticated STAMP (HMAC-SHA-256) with the
	// keys of --relay.auth-key-file.
	Authenticated bool `yaml:"authenticated,omitempty"`
	// TLVs asks the reflector for what they carry (RFC 8972). Absent: the
	// default set; an empty list: none (a plain RFC 8762 packet).
	TLVs []string `yaml:"tlvs"`
}

// STAMPTLVs are the TLVs a module may ask for, by name.
var STAMPTLVs = []string{"direct_measurement", "class_of_service", "timestamp_information", "location", "follow_up_telemetry"}

// DefaultSTAMPTLVs are asked for when a module names none: loss per
// direction, DSCP per direction, and how the reflector takes its stamps.
var DefaultSTAMPTLVs = []string{"direct_measurement", "class_of_service", "timestamp_information"}

// Bounds of a stamp module.
const (
	MaxSTAMPPackets     = 10000
	MaxSTAMPPacketBytes = 4096
)

// IsSTAMP reports whether the module measures to a STAMP reflector.
func (m *Module) IsSTAMP() bool { return m.Prober == ProberSTAMP }

// HasTLV reports whether the module asks for the TLV called name.
func (s *STAMPProbe) HasTLV(name string) bool { return slices.Contains(s.TLVs, name) }

// PacketCount is the packets per scrape of the module.
func (m *Module) PacketCount() int {
	if m.STAMP != nil && m.STAMP.Packets > 0 {
		return m.STAMP.Packets
	}
	return m.Probes
}

// PacketInterval is the pause between packets of the module.
func (m *Module) PacketInterval() time.Duration {
	if m.STAMP != nil && m.STAMP.Interval > 0 {
		return time.Duration(m.STAMP.Interval)
	}
	return time.Duration(m.Interval)
}

// validateSTAMP checks a stamp module (prober: stamp).
func (m *Module) validateSTAMP(path string, limits Limits) error {
	switch {
	case m.HTTP != nil:
		return bad(path+".http", "http options need prober: http, this module is prober: stamp")
	case m.PayloadBytes != 0:
		return bad(path+".payload_bytes", "not used by prober: stamp: set stamp.packet_bytes instead")
	case m.Inband != "" && m.Inband != InbandNever:
		return bad(path+".inband", "a STAMP reflector cannot attach variables to a packet: use snmp for its context")
	}
	if m.STAMP == nil {
		m.STAMP = &STAMPProbe{}
	}
	if err := m.STAMP.validate(path + ".stamp"); err != nil {
		return err
	}
	if m.STAMP.Authenticated && !limits.AuthKey {
		return bad(path+".stamp.authenticated", "authenticated STAMP signs with the chain's key, which this process does not have: start it with --relay.auth-key-file, or set authenticated: false")
	}
	return nil
}

// Mode is the STAMP mode the module measures in.
func (s *STAMPProbe) Mode() stamp.Mode {
	if s.Authenticated {
		return stamp.Authenticated
	}
	return stamp.Unauthenticated
}

// TLVRequest is what the module's tlvs ask the reflector for; the DSCP is
// asked for the replies too (Class of Service), so that a re-marking on
// the way back shows.
func (s *STAMPProbe) TLVRequest() stamp.TLVRequest {
	return stamp.TLVRequest{
		DirectMeasurement: s.HasTLV("direct_measurement"),
		ClassOfService:    s.HasTLV("class_of_service"),
		ReturnDSCP:        uint8(s.DSCP),
		TimestampInfo:     s.HasTLV("timestamp_information"),
		Location:          s.HasTLV("location"),
		FollowUp:          s.HasTLV("follow_up_telemetry"),
	}
}

func (s *STAMPProbe) validate(path string) error {
	if s.Name != "" {
		if err := peer.ValidateName(s.Name); err != nil {
			return bad(path+".name", "%v", err)
		}
	}
	if s.Packets < 0 || s.Packets > MaxSTAMPPackets {
		return bad(path+".packets", "%d out of range: use 1 to %d (absent: the module's probes)", s.Packets, MaxSTAMPPackets)
	}
	if s.PacketTimeout != 0 && (s.PacketTimeout < Duration(time.Millisecond) || s.PacketTimeout > Duration(time.Minute)) {
		return bad(path+".packet_timeout", "%v out of range: use 1ms to 1m (absent: 1s)", time.Duration(s.PacketTimeout))
	}
	if s.DSCP < 0 || s.DSCP > 63 {
		return bad(path+".dscp", "%d is not a DSCP: use 0 to 63 (46 is EF, 34 AF41, 0 best effort)", s.DSCP)
	}
	if s.TLVs == nil {
		s.TLVs = slices.Clone(DefaultSTAMPTLVs)
	}
	for i, t := range s.TLVs {
		if !slices.Contains(STAMPTLVs, t) {
			return bad(fmt.Sprintf("%s.tlvs[%d]", path, i), "%q unknown: use %s", t, strings.Join(STAMPTLVs, ", "))
		}
		if slices.Index(s.TLVs, t) != i {
			return bad(fmt.Sprintf("%s.tlvs[%d]", path, i), "%q is listed twice", t)
		}
	}
	if s.PacketBytes < 0 || s.PacketBytes > MaxSTAMPPacketBytes {
		return bad(path+".packet_bytes", "%d is over %d, the largest packet a reflector answers by default (--stamp.max-packet-bytes): use at most %d (0: the smallest for the mode and the TLVs)", s.PacketBytes, MaxSTAMPPacketBytes, MaxSTAMPPacketBytes)
	}
	// The sender's own rule on sizes, for the mode and these TLVs.
	if _, err := stamp.CheckSize(s.Mode(), s.PacketBytes, s.TLVRequest()); err != nil {
		return bad(path+".packet_bytes", "%v (0: the smallest)", err)
	}
	return nil
}

// probes says what a module probes, for messages.
func (m *Module) probes() string {
	if m.IsSTAMP() {
		return "a STAMP reflector (prober: stamp)"
	}
	return "relay chains (prober: tcp)"
}
