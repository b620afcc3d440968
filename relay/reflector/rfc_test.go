package reflector

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/wire/stamp"
)

// The tests in this file speak STAMP from the RFC's tables: the packets are
// built and read at the byte offsets of RFC 8762 §4.2.1, §4.2.2, §4.3.1
// and §4.3.2 written out here, never with internal/wire/stamp's codec.

// ntp encodes a time as the NTP 64-bit format by hand (RFC 5905 §6).
func ntp(t time.Time) uint64 {
	sec := uint64(t.Unix() + 2208988800)
	frac := uint64(t.Nanosecond()) << 32 / 1e9
	return sec<<32 | frac
}

func fromNTP(v uint64) time.Time {
	sec := int64(v>>32) - 2208988800
	return time.Unix(sec, int64((v&0xffffffff)*1e9>>32))
}

func hmac16(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)[:16]
}

// An RFC-table sender against our reflector, unauthenticated (44 octets)
// and authenticated (112 octets).
func TestRFCTableSenderToOurReflector(t *testing.T) {
	for _, auth := range []bool{false, true} {
		cfg := Config{}
		size := 44
		// offsets of the reflector packet: seq, ts, errest, ssid, rx ts,
		// sender seq, sender ts, sender errest, ttl, hmac
		o := [10]int{0, 4, 12, 14, 16, 24, 28, 36, 40, -1}
		if auth {
			cfg.Keys, size = testKeys, 112
			o = [10]int{0, 16, 24, 26, 32, 48, 64, 72, 80, 96}
		}
		r := start(t, cfg)
		c, err := net.Dial("udp", r.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for seq := uint32(10); seq < 13; seq++ {
			req := make([]byte, size)
			sent := time.Now()
			binary.BigEndian.PutUint32(req[0:], seq)
			tsOff, eeOff, ssidOff := 4, 12, 14
			if auth {
				tsOff, eeOff, ssidOff = 16, 24, 26
			}
			binary.BigEndian.PutUint64(req[tsOff:], ntp(sent))
			binary.BigEndian.PutUint16(req[eeOff:], 0x0001) // S=0, Z=0 (NTP), scale 0, multiplier 1
			binary.BigEndian.PutUint16(req[ssidOff:], 0x1234)
			if auth {
				copy(req[96:], hmac16(testKeys[0], req[:96]))
			}
			if _, err := c.Write(req); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			rep := make([]byte, 2048)
			n, err := c.Read(rep)
			got := time.Now()
			if err != nil {
				t.Fatal(err)
			}
			rep = rep[:n]
			if n != size {
				t.Fatalf("reply of %d octets for %d", n, size)
			}
			t2, t3 := fromNTP(binary.BigEndian.Uint64(rep[o[4]:])), fromNTP(binary.BigEndian.Uint64(rep[o[1]:]))
			switch {
			case binary.BigEndian.Uint32(rep[o[0]:]) != seq-10:
				t.Errorf("reflector sequence %d, want %d (stateful, from 0)", binary.BigEndian.Uint32(rep[o[0]:]), seq-10)
			case binary.BigEndian.Uint32(rep[o[5]:]) != seq:
				t.Errorf("sender sequence echoed %d, want %d", binary.BigEndian.Uint32(rep[o[5]:]), seq)
			case binary.BigEndian.Uint64(rep[o[6]:]) != ntp(sent):
				t.Errorf("sender timestamp echoed %#x, want %#x", binary.BigEndian.Uint64(rep[o[6]:]), ntp(sent))
			case binary.BigEndian.Uint16(rep[o[7]:]) != 1:
				t.Errorf("sender error estimate echoed %#x", binary.BigEndian.Uint16(rep[o[7]:]))
			case rep[o[8]] != 64:
				t.Errorf("sender TTL %d, want 64 (Linux's default, one hop on loopback)", rep[o[8]])
			case binary.BigEndian.Uint16(rep[o[3]:]) != 0x1234:
				t.Errorf("SSID %#x", binary.BigEndian.Uint16(rep[o[3]:]))
			case binary.BigEndian.Uint16(rep[o[2]:])&0xff == 0:
				t.Errorf("reflector error estimate with multiplier 0: %#x", binary.BigEndian.Uint16(rep[o[2]:]))
			case t2.Before(sent.Add(-time.Millisecond)) || t3.Before(t2) || t3.After(got.Add(time.Millisecond)):
				t.Errorf("T1 %v T2 %v T3 %v T4 %v out of order", sent, t2, t3, got)
			}
			if auth && !hmac.Equal(rep[96:112], hmac16(testKeys[0], rep[:96])) {
				t.Error("reply HMAC does not verify over its first 96 octets")
			}
		}
	}
}

// rfcTableReflector answers from the RFC's table: unauthenticated mode,
// stateful numbering from 0, TTL unknown (255), no TLV processing.
func rfcTableReflector(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		var next uint32
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			t2 := time.Now()
			if n < 44 {
				continue
			}
			req := buf[:n]
			rep := make([]byte, n) // symmetric size
			copy(rep[44:], req[44:])
			binary.BigEndian.PutUint32(rep[0:], next)
			next++
			binary.BigEndian.PutUint16(rep[12:], 0x0001)
			copy(rep[14:16], req[14:16]) // SSID
			binary.BigEndian.PutUint64(rep[16:], ntp(t2))
			copy(rep[24:28], req[0:4])   // sender sequence
			copy(rep[28:36], req[4:12])  // sender timestamp
			copy(rep[36:38], req[12:14]) // sender error estimate
			rep[40] = 255
			binary.BigEndian.PutUint64(rep[4:], ntp(time.Now()))
			_, _ = pc.WriteTo(rep, from)
		}
	}()
	return pc.LocalAddr().String()
}

// Our sender against an RFC-table reflector.
func TestOurSenderToRFCTableReflector(t *testing.T) {
	addr := rfcTableReflector(t)
	res, sum := probe(t, stamp.SessionOptions{Target: addr, Size: 200}, 20)
	if sum.Received != 20 || sum.Faults.Any() || sum.RTT.Median <= 0 {
		t.Fatalf("%+v", sum)
	}
	for i, p := range res.Packets {
		if p.ReflectorSeq != uint32(i) || p.SenderTTL != 255 || p.T3 < p.T2 {
			t.Errorf("packet %d: %+v", i, p)
		}
	}
}
