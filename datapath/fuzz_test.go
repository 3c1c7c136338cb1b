package datapath

import (
	"net/netip"
	"testing"

	"github.com/korium/korium-tun/internal/ip6"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// The datapath's decoders, fuzzed: what any packet from the device, and
// any datagram from a peer, can make it do.

// FuzzAcceptInbound: any datagram from a peer is either dropped and
// counted or is a whole IPv6 packet from that peer's address to ours,
// within the MTU.
func FuzzAcceptInbound(f *testing.F) {
	p := testPeer(1)
	e, _ := newTestEngine(f, nil, p)
	self := e.cfg.Addr
	f.Add(udp6(p.Addr, self, []byte("ok")))
	f.Add(udp6(self, self, []byte("spoof")))
	f.Add(udp6(p.Addr, p.Addr, []byte("not for us")))
	f.Add(udp6(p.Addr, self, make([]byte, MaxMTU)))
	f.Add([]byte{0x60})
	f.Add([]byte{0x45, 0, 0, 20})
	c := &e.Counters
	f.Fuzz(func(t *testing.T, d []byte) {
		before := c.RxMalformed.Load() + c.RxSpoofedSource.Load() + c.RxNotForUs.Load()
		ok := e.accept(p, d)
		after := c.RxMalformed.Load() + c.RxSpoofedSource.Load() + c.RxNotForUs.Load()
		if !ok {
			if after != before+1 {
				t.Fatal("a dropped datagram was not counted")
			}
			return
		}
		src, dst, whole := ip6.Addrs(d)
		if !whole || src != p.Addr || dst != self || len(d) > e.cfg.MTU {
			t.Fatalf("accepted %x", d)
		}
	})
}

// FuzzRoute: any packet from the device gets a verdict that fits it, and
// holding what route says to hold keeps every table within its cap.
func FuzzRoute(f *testing.F) {
	p := testPeer(1)
	e, dev := newTestEngine(f, nil, p)
	dev.CountOnly.Store(true)
	self := e.cfg.Addr
	var nobody pki.Identity
	nobody[0] = 1
	f.Add(udp6(self, p.Addr, []byte("to the peer")))
	f.Add(udp6(self, smartaddr.FromIdentity(nobody), []byte("to nobody")))
	f.Add(udp6(self, self, []byte("to us")))
	f.Add(udp6(self, netip.MustParseAddr("2001:db8::1"), []byte("off the overlay")))
	f.Add(udp6(self, p.Addr, make([]byte, MaxMTU)))
	icmp := udp6(self, smartaddr.FromIdentity(nobody), make([]byte, 8))
	icmp[6], icmp[40] = 58, ip6.TypeDstUnreachable
	f.Add(icmp)
	f.Add([]byte{0x60, 0, 0})
	var cache routeCache
	f.Fuzz(func(t *testing.T, pkt []byte) {
		v := e.route(pkt, &cache)
		dst, ok := ip6.Dst(pkt)
		switch v {
		case routeSend:
			if !ok || cache.peer != p || dst != p.Addr || len(pkt) > e.cfg.MTU {
				t.Fatalf("send %x to %v", pkt, cache.peer)
			}
		case routeHold:
			if !ok || !smartaddr.IsOverlay(dst) || dst == self || dst == p.Addr || len(pkt) > e.cfg.MTU {
				t.Fatalf("hold %x", pkt)
			}
			e.hold(cache.addr, pkt)
		case routeTooBig:
			if !ok || len(pkt) <= e.cfg.MTU {
				t.Fatalf("too big: %d bytes", len(pkt))
			}
			e.answerTooBig(pkt, e.cfg.MTU)
		case routeDrop:
			if ok && smartaddr.IsOverlay(dst) && dst != self {
				t.Fatalf("dropped a packet for %v", dst)
			}
		}
		held, resolving, failed := e.Pending()
		if held > e.cfg.MaxPending || failed > e.cfg.MaxPending || resolving > maxResolving {
			t.Fatalf("tables: %d held, %d failed, %d resolving", held, failed, resolving)
		}
	})
}
