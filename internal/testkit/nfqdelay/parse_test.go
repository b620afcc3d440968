package nfqdelay

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// packetMsg is a kernel NFQNL_MSG_PACKET for packet id, as the kernel
// sends it in copy-mode meta.
func packetMsg(id uint32) []byte {
	d := &Delayer{cfg: Config{Queue: 3}}
	hdr := make([]byte, packetHdrLen)
	binary.BigEndian.PutUint32(hdr, id)
	binary.BigEndian.PutUint16(hdr[4:], 0x0800)
	hdr[6] = 2 // NF_INET_FORWARD
	return d.message(msgPacket, 0, attr(5, be32(7)), attr(attrPacketHdr, hdr))
}

func TestWalkAndPacketID(t *testing.T) {
	buf := append(packetMsg(41), packetMsg(42)...)
	var ids []uint32
	err := walk(buf, func(typ uint16, _ uint32, body []byte) {
		if typ != unix.NFNL_SUBSYS_QUEUE<<8|msgPacket {
			t.Errorf("type %#x", typ)
		}
		id, ok := packetID(body)
		if !ok {
			t.Error("no packet id")
		}
		ids = append(ids, id)
	})
	if err != nil || len(ids) != 2 || ids[0] != 41 || ids[1] != 42 {
		t.Fatalf("ids %v, err %v", ids, err)
	}
	for _, bad := range [][]byte{
		{0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		{4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
	} {
		if err := walk(bad, func(uint16, uint32, []byte) {}); err == nil {
			t.Errorf("walk(%x): no error", bad)
		}
	}
	if _, ok := packetID([]byte{0, 0, 0, 0, 8, 0, 1, 0, 0, 0, 0, 0}); ok {
		t.Error("a packet header attribute too short for an id gave one")
	}
}

// The parsers of what the kernel sends never panic and never read past
// what they were given.
func FuzzNetlink(f *testing.F) {
	f.Add(packetMsg(1))
	f.Add(append(packetMsg(7), packetMsg(8)...))
	f.Add([]byte{20, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = walk(b, func(_ uint16, _ uint32, body []byte) {
			_, _ = packetID(body)
			_ = errnoOf(body)
		})
	})
}
