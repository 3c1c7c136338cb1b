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
	"github.com/korium/korium-tun/nat"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
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
		obs, _ := n.nat.DirectAddr(q.id)
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
		n.nat.HandleRelay(ctx, from, req)
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
		if n.nat.DialBacks() > nat.MaxDialBacks {
			t.Fatal("dial-backs unbounded")
		}
		if g := runtime.NumGoroutine(); g > base+128 { // dial-backs hold no goroutine of their own
			t.Fatalf("%d goroutines (started with %d)", g, base)
		}
	})
}
