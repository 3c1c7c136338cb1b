package overlay

import (
	"context"
	"crypto/sha256"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
	"github.com/korium/korium-tun/smartaddr"
)

// The demultiplexers, fuzzed: what a connected (or any) peer's relay and
// punch requests, and any packet from a peer or the device, can make the
// node do.

// fuzzPair is a node on every address (so a peer's word may not make it
// send to loopback) with one peer connected to it over loopback.
type fuzzPair struct {
	n, q *testNode
	qObs netip.AddrPort // where n sees q
}

var (
	fuzzOnce sync.Once
	fuzzP    *fuzzPair
)

func newFuzzPair(f *testing.F) *fuzzPair {
	fuzzOnce.Do(func() {
		n := newTestNode(f, nil, "[::]:0")
		q := newTestNode(f, nil, "")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := q.Connect(ctx, Contact{Identity: n.id, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.LocalAddr().Port())}); err != nil {
			f.Fatal(err)
		}
		// A ping answered means both ends hold the path key: punches work.
		waitFor(f, "n pings q", 5*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, err := n.Ping(ctx, q.id)
			return err == nil
		})
		obs, _ := n.directAddr(q.id)
		fuzzP = &fuzzPair{n: n, q: q, qObs: obs}
	})
	return fuzzP
}

// FuzzHandleRelay: arbitrary relay and punch requests from q (connected)
// or from an arbitrary identity never panic, never give smartsock a path
// to an address addrpolicy refuses (q's observed address aside), and leave
// bounded state.
func FuzzHandleRelay(f *testing.F) {
	fp := newFuzzPair(f)
	punch := func(addrs ...string) []byte {
		var aps []netip.AddrPort
		for _, a := range addrs {
			aps = append(aps, netip.MustParseAddrPort(a))
		}
		b, err := relay.AppendPunch(nil, aps)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(true, relay.AppendObserveReq(nil, 7))
	f.Add(true, punch("127.0.0.1:22", "[::1]:7400", "[fe80::1]:7400", "255.255.255.255:7400", "240.0.0.1:1", "0.1.2.3:9", "198.18.3.1:7400"))
	f.Add(true, punch("[::ffff:127.0.0.1]:53", "[::127.0.0.1]:53"))
	f.Add(true, relay.AppendConnectReq(nil, fp.q.id))
	f.Add(true, relay.AppendConnectReq(nil, fp.n.id))
	f.Add(true, relay.AppendIncomingReq(nil, relay.Incoming{From: fp.q.id}))
	f.Add(false, relay.AppendObserveReq(nil, 8))
	f.Add(false, punch("198.18.0.9:1"))
	f.Add(true, []byte{relay.MsgPunch, 200})
	f.Add(true, []byte{99})
	f.Add(true, []byte{})
	base := runtime.NumGoroutine()
	f.Fuzz(func(t *testing.T, fromPeer bool, req []byte) {
		n := fp.n
		from := fp.q.id
		if !fromPeer {
			// Any identity: the bytes of the request name it.
			sum := sha256.Sum256(req)
			from = pki.Identity(sum)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		n.handleRelay(ctx, from, req)
		cancel()
		for _, id := range []pki.Identity{fp.q.id, from} {
			ps, _ := n.sock.Paths(id)
			if len(ps) > 12 {
				t.Fatalf("%d paths to one peer", len(ps))
			}
			for _, p := range ps {
				if p.Kind != "direct" {
					continue
				}
				a, err := netip.ParseAddrPort(p.Addr)
				if err != nil {
					t.Fatalf("path %q", p.Addr)
				}
				if a != fp.qObs && !addrpolicy.Dialable(a, false) {
					t.Fatalf("a request made smartsock probe %v", a)
				}
			}
		}
		if s := n.RelayStats(); s != nil && s.Sessions > 16 {
			t.Fatalf("%d relay sessions", s.Sessions)
		}
		if len(n.dialBacks) > maxDialBacks {
			t.Fatal("dial-backs unbounded")
		}
		if g := runtime.NumGoroutine(); g > base+2*maxDialBacks+64 {
			t.Fatalf("%d goroutines (started with %d)", g, base)
		}
	})
}

// fuzzRouteNode is a node whose resolver fails at once, with one fake
// connected peer in its route table, on a device that only counts writes.
var (
	routeOnce sync.Once
	routeN    *testNode
	routePeer *peer
)

func newRouteNode(f *testing.F) (*testNode, *peer) {
	routeOnce.Do(func() {
		kp, err := pki.GenerateKeypair(context.Background(), testPoW)
		if err != nil {
			f.Fatal(err)
		}
		dev := newMemDevice()
		dev.countOnly = true
		fail := func(context.Context, netip.Addr) ([]Contact, error) { return nil, ErrUnreachable }
		n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Resolver: fail, MaxPending: 64, Logger: testLogger(f)})
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { n.Close() })
		other, _ := pki.GenerateKeypair(context.Background(), testPoW)
		p := &peer{id: other.Identity(), addr: smartaddr.FromIdentity(other.Identity())}
		n.mu.Lock()
		n.byAddr[p.addr] = p // route only looks the peer up
		n.gen.Add(1)
		n.mu.Unlock()
		routeN, routePeer = &testNode{n, dev}, p
	})
	return routeN, routePeer
}

// FuzzAcceptInbound: any datagram from a peer is either dropped and
// counted or is a whole IPv6 packet from that peer's address to ours,
// within the MTU.
func FuzzAcceptInbound(f *testing.F) {
	n, p := newRouteNode(f)
	f.Add(udp6(p.addr, n.addr, []byte("ok")))
	f.Add(udp6(n.addr, n.addr, []byte("spoof")))
	f.Add(udp6(p.addr, p.addr, []byte("not for us")))
	f.Add(udp6(p.addr, n.addr, make([]byte, MaxMTU)))
	f.Add([]byte{0x60})
	f.Add([]byte{0x45, 0, 0, 20})
	f.Fuzz(func(t *testing.T, d []byte) {
		before := n.stats.RxMalformed.Load() + n.stats.RxSpoofedSource.Load() + n.stats.RxNotForUs.Load()
		b := n.acceptInbound(p, d)
		after := n.stats.RxMalformed.Load() + n.stats.RxSpoofedSource.Load() + n.stats.RxNotForUs.Load()
		if b == nil {
			if after != before+1 {
				t.Fatal("a dropped datagram was not counted")
			}
			return
		}
		defer n.bufPool.Put(b)
		got := b.b[devOffset : devOffset+b.n]
		src, dst, ok := ipv6Addrs(got)
		if !ok || src != p.addr || dst != n.addr || b.n != len(d) || b.n > n.cfg.MTU {
			t.Fatalf("accepted %x", d)
		}
	})
}

// FuzzRoute: any packet from the device gets a verdict that fits it, and
// holding what route says to hold keeps every table within its cap.
func FuzzRoute(f *testing.F) {
	n, p := newRouteNode(f)
	var nobody pki.Identity
	nobody[0] = 1
	f.Add(udp6(n.addr, p.addr, []byte("to the peer")))
	f.Add(udp6(n.addr, smartaddr.FromIdentity(nobody), []byte("to nobody")))
	f.Add(udp6(n.addr, n.addr, []byte("to us")))
	f.Add(udp6(n.addr, netip.MustParseAddr("2001:db8::1"), []byte("off the overlay")))
	f.Add(udp6(n.addr, p.addr, make([]byte, MaxMTU)))
	icmp := udp6(n.addr, smartaddr.FromIdentity(nobody), make([]byte, 8))
	icmp[6], icmp[40] = 58, icmpDstUnreachable
	f.Add(icmp)
	f.Add([]byte{0x60, 0, 0})
	var cache routeCache
	f.Fuzz(func(t *testing.T, pkt []byte) {
		got, v := n.route(pkt, &cache)
		dst, ok := ipv6Dst(pkt)
		switch v {
		case routeSend:
			if !ok || got != p || dst != p.addr || len(pkt) > n.cfg.MTU {
				t.Fatalf("send %x to %v", pkt, got)
			}
		case routeHold:
			if !ok || !smartaddr.IsOverlay(dst) || dst == n.addr || dst == p.addr || len(pkt) > n.cfg.MTU {
				t.Fatalf("hold %x", pkt)
			}
			n.hold(cache.addr, pkt)
		case routeTooBig:
			if !ok || len(pkt) <= n.cfg.MTU {
				t.Fatalf("too big: %d bytes", len(pkt))
			}
		case routeDrop:
			if ok && smartaddr.IsOverlay(dst) && dst != n.addr {
				t.Fatalf("dropped a packet for %v", dst)
			}
		}
		n.pendMu.Lock()
		pending, failed, resolving := len(n.pending), len(n.failed), len(n.resolving)
		n.pendMu.Unlock()
		if pending > n.cfg.MaxPending || failed > n.cfg.MaxPending || resolving > maxResolving {
			t.Fatalf("tables: %d held, %d failed, %d resolving", pending, failed, resolving)
		}
	})
}
