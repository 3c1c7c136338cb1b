//go:build linux

package overlay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/rpc"
	"github.com/korium/korium-tun/smartaddr"
)

// nsSockets makes a fresh network namespace with loopback up, holding
// 198.18.0.1-198.18.0.9 too, and opens one UDP socket in it per address in
// binds ("198.18.0.3:0", "[::]:0", "127.0.0.1:0", ...). The namespace is
// anonymous: it goes away when the test closes the last socket
// (t.Cleanup). Needs root.
func nsSockets(t *testing.T, binds ...string) []*net.UDPConn {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) for a network namespace")
	}
	var out []*net.UDPConn
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked and is thrown away when this goroutine
		// exits, so the namespace switch never leaks to other goroutines.
		runtime.LockOSThread()
		errc <- func() error {
			ns, err := netns.New()
			if err != nil {
				return err
			}
			defer ns.Close()
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(lo); err != nil {
				return err
			}
			// The addresses sit on lo itself: still ordinary unicast
			// addresses to addrpolicy (only 127/8 and ::1 are loopback),
			// and no link type the kernel might lack.
			for i := 1; i <= 9; i++ {
				a, _ := netlink.ParseAddr(fmt.Sprintf("198.18.0.%d/32", i))
				if err := netlink.AddrAdd(lo, a); err != nil {
					return err
				}
			}
			for _, b := range binds {
				ua, err := net.ResolveUDPAddr("udp", b)
				if err != nil {
					return err
				}
				c, err := net.ListenUDP("udp", ua)
				if err != nil {
					return err
				}
				out = append(out, c)
			}
			return nil
		}()
	}()
	err := <-errc
	for _, c := range out {
		t.Cleanup(func() { c.Close() })
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A record listing 127.0.0.1:P (a UDP service on the host) makes a node
// listening on [::] send nothing there: the lookup refuses the record, and
// the dial path would drop the address anyway. Before, resolving the
// record's owner sent 15 datagrams there (ConnectIdentity) and the
// resolver 12 more.
//
// Everything runs in a namespace of its own with real addresses: a hostile
// DHT node w (at 198.18.0.3, keeping loopback records, as a node on
// loopback would), the record's owner a (on 127.0.0.1, so its own DHT lets
// it sign 127.0.0.1:P), and the victim v on [::].
func TestDHTLoopbackRecordNotDialed(t *testing.T) {
	socks := nsSockets(t, "198.18.0.3:0", "127.0.0.1:0", "[::]:0", "127.0.0.1:0")
	wSock, aSock, vSock, sink := socks[0], socks[1], socks[2], socks[3]
	sinkAddr := sink.LocalAddr().(*net.UDPAddr).AddrPort()
	ctx := context.Background()

	w := newDHTNode(t, "", wSock)
	// w serves its DHT through a second instance that keeps loopback
	// records (what a node listening on loopback does).
	wd, err := dht.New(w.kp, dhtTransport{w.Node}, []netip.AddrPort{w.LocalAddr()},
		dht.Config{PoWBits: testPoW, AllowLoopback: true, MaxPerPrefixPerBucket: dht.MaxK, InsertBurst: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wd.Close() })
	w.rpc.Handle(rpc.ProtoDHT, func(_ context.Context, from pki.Identity, req []byte) ([]byte, error) {
		at, _ := w.nat.DirectAddr(from)
		return wd.HandleRequest(from, at, req)
	})
	wc := w.dhtContact(w.LocalAddr())

	a := newDHTNode(t, "", aSock)
	if err := a.dht.SetAddrs([]netip.AddrPort{sinkAddr}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.dht.Ping(ctx, wc); err != nil {
		t.Fatal(err)
	}
	if err := a.dht.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if rec, err := wd.Resolve(ctx, a.id); err != nil || rec.Addrs[0] != sinkAddr {
		t.Fatalf("w holds %+v, %v; want a's record listing %v", rec, err, sinkAddr)
	}
	a.Close()

	v := newDHTNode(t, "", vSock, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.5"), vSock.LocalAddr().(*net.UDPAddr).AddrPort().Port()))
	if v.loopbackOK() {
		t.Fatal("v listens on loopback")
	}
	if err := v.dht.Bootstrap(ctx, []dht.Contact{wc}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err1 := v.ConnectIdentity(cctx, a.id)
	cancel()
	rctx, rcancel := context.WithTimeout(ctx, v.cfg.ResolveTimeout)
	v.resolveOwner(rctx, smartaddr.FromIdentity(a.id))
	rcancel()
	got := drain(sink, time.Second)
	t.Logf("record listing %v, resolved by a node on [::]: %d datagrams arrived there (27 before); ConnectIdentity: %v", sinkAddr, got, err1)
	if got != 0 {
		t.Fatalf("%d datagrams reached %v", got, sinkAddr)
	}
	if err1 == nil {
		t.Fatal("ConnectIdentity to the record's owner succeeded")
	}
	// It was found and refused, not missed.
	if n := v.dht.Stats().Drops["bad_addr"]; n == 0 {
		t.Fatalf("v never refused the record: drops %v", v.dht.Stats().Drops)
	}
}
