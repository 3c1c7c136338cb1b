package overlay

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/pki"
)

// Hostile peers against the node's DHT glue, over real QUIC and UDP: the
// addresses a peer declares or publishes must not make the node (or nodes
// it serves) send datagrams anywhere the peer likes.

// newDHTNode starts a node with the DHT on, listening on listen (or on
// conn when given), with a short handshake timeout so a dial nobody
// answers ends soon.
func newDHTNode(t *testing.T, listen string, conn *net.UDPConn, advertise ...netip.AddrPort) *testNode {
	t.Helper()
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	dev := newMemDevice()
	nd, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: listen, Conn: conn, Device: dev, Advertise: advertise,
		Logger: testLogger(t), HandshakeTimeout: 2 * time.Second, DHT: dhtConfigForOneHost()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Close() })
	return &testNode{nd, dev}
}

// udpSink is a UDP socket standing in for a local service a peer would
// like us to hit.
func udpSink(t *testing.T, ip net.IP) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	l, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, l.LocalAddr().(*net.UDPAddr).AddrPort()
}

// drain counts the datagrams waiting at l, and those arriving until quiet
// passes without one.
func drain(l *net.UDPConn, quiet time.Duration) int {
	n := 0
	buf := make([]byte, 2048)
	for {
		l.SetReadDeadline(time.Now().Add(quiet))
		if _, _, err := l.ReadFromUDPAddrPort(buf); err != nil {
			return n
		}
		n++
	}
}

func (n *testNode) dhtContact(at netip.AddrPort) dht.Contact {
	return dht.Contact{Identity: n.id, Nonce: n.kp.Nonce(), Addrs: []netip.AddrPort{at}}
}

// An attacker pings a node declaring the address of a UDP service, then
// leaves. The node keeps it (and serves it to a third node) at the address
// its connection came from, so neither sends anything to the service.
// Before, the node served the declared address and the third node's
// bootstrap sent 12-18 handshake datagrams there.
func TestDHTPingDeclaringAnAddressSendsNothingThere(t *testing.T) {
	sink, sinkAddr := udpSink(t, net.IPv4(127, 0, 0, 1))
	v := newDHTNode(t, "127.0.0.1:0", nil)
	a := newDHTNode(t, "127.0.0.1:0", nil)
	if err := a.dht.SetAddrs([]netip.AddrPort{sinkAddr}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	vc := v.dhtContact(v.LocalAddr())
	if _, err := a.dht.Ping(ctx, vc); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the victim's check ping", 10*time.Second, func() bool {
		s := v.dht.Stats()
		return s.TableSize >= 1 || s.Failed >= 1
	})
	snap := v.dht.Snapshot()
	if len(snap.Buckets) != 1 || !slices.Equal(snap.Buckets[0].Contacts[0].Addrs, []netip.AddrPort{a.LocalAddr()}) {
		t.Fatalf("victim's table %+v, want the attacker at %v where it spoke from", snap.Buckets, a.LocalAddr())
	}
	a.Close()
	waitFor(t, "the attacker gone", 10*time.Second, func() bool { return v.peer(a.id) == nil })
	w := newDHTNode(t, "127.0.0.1:0", nil)
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := w.dht.Bootstrap(bctx, []dht.Contact{vc})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	v.dht.FindPeers(lctx, dht.IDOf(a.id)) // the victim itself looks it up too
	cancel()
	got := drain(sink, time.Second)
	t.Logf("one PING declaring %v: %d datagrams arrived there (12-18 before)", sinkAddr, got)
	if got != 0 {
		t.Fatalf("%d datagrams reached the declared address", got)
	}
}

// A node that does not listen on loopback never dials a loopback (or other
// refused) address it got from a record or a contact, even past the DHT.
func TestDialFiltersRefusedAddresses(t *testing.T) {
	sink, sinkAddr := udpSink(t, net.IPv4(127, 0, 0, 1))
	n := newDHTNode(t, "[::]:0", nil, netip.MustParseAddrPort("198.18.0.1:4433"))
	other, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	refused := []netip.AddrPort{sinkAddr, netip.MustParseAddrPort("[::1]:9"), netip.MustParseAddrPort("0.0.0.0:9"), netip.MustParseAddrPort("[ff02::1]:9")}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := n.connFor(ctx, other.Identity(), refused); err == nil {
		t.Fatal("connFor dialed refused addresses")
	}
	rec := &dht.Record{Identity: other.Identity(), Addrs: append(slices.Clone(refused), netip.MustParseAddrPort("198.18.0.2:4433"))}
	if cs := n.recordContacts(rec); len(cs) != 1 || cs[0].Addr != netip.MustParseAddrPort("198.18.0.2:4433") {
		t.Fatalf("recordContacts kept %+v", cs)
	}
	if got := drain(sink, 500*time.Millisecond); got != 0 {
		t.Fatalf("%d datagrams reached %v", got, sinkAddr)
	}
	// On loopback, loopback is allowed (one-host clusters and tests).
	lo := newDHTNode(t, "127.0.0.1:0", nil)
	if cs := lo.recordContacts(rec); len(cs) != 3 || cs[0].Addr != sinkAddr {
		t.Fatalf("a node on loopback kept %+v", cs)
	}
}

// Config.Advertise refuses what nobody may be sent to, and loopback unless
// the node listens on loopback, with one line naming the field.
func TestAdvertiseChecked(t *testing.T) {
	for _, tc := range []struct {
		listen, adv string
		ok          bool
	}{
		{"[::]:0", "127.0.0.1:9", false},
		{"0.0.0.0:0", "[::1]:9", false},
		{"127.0.0.1:0", "127.0.0.1:9", true},
		{"localhost:0", "127.0.0.1:9", true},
		{"127.0.0.1:0", "0.0.0.0:9", false},
		{"127.0.0.1:0", "224.0.0.1:9", false},
		{"127.0.0.1:0", "[fe80::1]:9", false},
		{"127.0.0.1:0", "198.18.0.1:0", false},
		{"[::]:0", "198.18.0.1:9", true},
	} {
		c := Config{Listen: tc.listen, Advertise: []netip.AddrPort{netip.MustParseAddrPort(tc.adv)}}
		_, err := c.withDefaults()
		if tc.ok != (err == nil) || err != nil && !strings.Contains(err.Error(), "Config.Advertise") {
			t.Errorf("listen %s, advertise %s: %v", tc.listen, tc.adv, err)
		}
	}
	// A given socket decides, not Listen.
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := Config{Listen: "[::]:0", Conn: conn, Advertise: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}}
	if _, err := c.withDefaults(); err != nil {
		t.Fatalf("loopback socket advertising loopback: %v", err)
	}
}
