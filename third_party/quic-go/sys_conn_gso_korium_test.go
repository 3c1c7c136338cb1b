//go:build linux

package quic

import (
	"net"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/korium/korium-tun/internal/udpbatch"
	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
	"github.com/korium/korium-tun/wire"
)

// TestLargestGSOBatchFitsRelayed: the largest GSO write quic-go makes
// (MaxLargePacketBufferSize of MaxPacketBufferSize packets), once smartsock
// puts a relay header in front of every packet, is still one UDP datagram
// the kernel takes, and a UDP_GRO receiver gets every segment.
func TestLargestGSOBatchFitsRelayed(t *testing.T) {
	n := protocol.MaxLargePacketBufferSize / protocol.MaxPacketBufferSize
	seg := int(protocol.MaxPacketBufferSize) + wire.RelayHeaderSize
	if n*seg > 65507 {
		t.Fatalf("%d relayed packets of %d bytes do not fit a UDP datagram", n, seg)
	}
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	sc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	r, _, err := udpbatch.NewGRO(rc, new(udpbatch.GROStats))
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, n*seg)
	if _, _, err := sc.WriteMsgUDPAddrPort(b, appendUDPSegmentSizeMsg(nil, uint16(seg)), rc.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatalf("GSO write of %d segments of %d bytes: %v", n, seg, err)
	}
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	ms := make([]ipv4.Message, 8)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 2048)}
		ms[i].OOB = make([]byte, oobBufferSize)
	}
	for got := 0; got < n; {
		k, err := r.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d of %d segments: %v", got, n, err)
		}
		for _, m := range ms[:k] {
			if m.N != seg {
				t.Fatalf("segment of %d bytes, want %d", m.N, seg)
			}
		}
		got += k
	}
}
