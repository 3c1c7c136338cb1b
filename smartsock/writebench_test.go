package smartsock

import (
	"net"
	"net/netip"
	"testing"
)

// BenchmarkWrite measures the write path to a confirmed direct peer:
// "route" is the lookup of where a packet goes (no socket), "syscall" the
// whole WriteMsgUDP of a 1200-byte short-header packet over loopback.
func BenchmarkWrite(b *testing.B) {
	sink := listenUDP(b)
	defer sink.Close()
	udp := listenUDP(b)
	u, err := NewUDP(udp)
	if err != nil {
		b.Fatal(err)
	}
	c, err := newConn(u, Config{Keypair: dxSelf}, false)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	id := dxP1.Identity()
	virt, err := c.AddPeer(id, loopback(sink))
	if err != nil {
		b.Fatal(err)
	}
	c.Confirm(id)
	for i := 0; i < 1000; i++ { // a table that is not trivially small
		var other [32]byte
		other[0], other[1], other[2] = 7, byte(i>>8), byte(i)
		c.AddPeer(other, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 7400))
	}
	pkt := make([]byte, 1200)
	pkt[0] = 0x41
	b.Run("route", func(b *testing.B) {
		b.ReportAllocs()
		a := virt.AddrPort()
		var ds [maxDests]dest
		for b.Loop() {
			if n, _ := c.route(a, false, &ds); n != 1 {
				b.Fatal("no route")
			}
		}
	})
	b.Run("syscall", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := c.WriteMsgUDP(pkt, nil, virt); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel-route", func(b *testing.B) {
		b.ReportAllocs()
		a := virt.AddrPort()
		b.RunParallel(func(pb *testing.PB) {
			var ds [maxDests]dest
			for pb.Next() {
				c.route(a, false, &ds)
			}
		})
	})
	_ = net.IPv4len
}
