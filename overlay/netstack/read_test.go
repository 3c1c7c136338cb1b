package netstack

import (
	"errors"
	"testing"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// queue puts a packet on the stack's outbound queue as gVisor's TCP would.
func queue(t *testing.T, s *Stack, p []byte, gso bool) {
	t.Helper()
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
	if gso {
		pkt.GSOOptions = stack.GSO{Type: stack.GSOTCPv6, NeedsCsum: true, MSS: 1208, L3HdrLen: ipv6HeaderLen}
	}
	var l stack.PacketBufferList
	l.PushBack(pkt)
	if n, err := s.ep.WritePackets(l); n != 1 || err != nil {
		t.Fatalf("queue: %d, %v", n, err)
	}
	pkt.DecRef()
}

func TestReadBatching(t *testing.T) {
	s := newStack(t, testAddr(1))
	defer s.Close()
	big := tcp6Packet(100, 0x18, 12, make([]byte, 28*1208)) // 28 segments
	queue(t, s, tcp6Packet(1, 0x10, 0, nil), false)
	queue(t, s, big, true)
	queue(t, s, big, true)
	queue(t, s, big, true)

	const off = 12
	bufs := make([][]byte, 40)
	for i := range bufs {
		bufs[i] = make([]byte, off+1280)
	}
	sizes := make([]int, len(bufs))
	// 1 plain + 28 segments; the next super-packet waits.
	if n, err := s.Read(bufs, sizes, off); n != 29 || err != nil {
		t.Fatalf("first read: %d, %v", n, err)
	}
	for i := 1; i < 29; i++ {
		if ok, _ := verifyTransportChecksum(bufs[i][off : off+sizes[i]]); !ok {
			t.Fatalf("segment %d: bad checksum", i)
		}
	}
	if n, err := s.Read(bufs, sizes, off); n != 28 || err != nil {
		t.Fatalf("second read: %d, %v", n, err)
	}
	// A batch too small for a whole super-packet: dropped and reported.
	if n, err := s.Read(bufs[:5], sizes, off); n != 0 || !errors.Is(err, tun.ErrTooManySegments) {
		t.Fatalf("small batch: %d, %v", n, err)
	}
	if st := s.Stats(); st.OversizedOutbound != 1 || st.BadGSO != 0 {
		t.Fatalf("stats %+v", st)
	}
}
