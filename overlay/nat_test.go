package overlay

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/korium/korium-tun/nat"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartsock"
)

// TestConfigureNATAndRelaySessions: nodes that believe they are behind NAT
// (dial-backs ignored) find their relay with configure_nat and publish it;
// a session through it becomes a path on both ends; a node that is not a
// peer's relay cannot push a session on it. One host has no NAT, so the
// relayed connection itself and punching are tested in smartsock
// (TestRelayThenDirectThenBlackHole) and behind real NATs in
// scripts/nat-test.sh.
func TestConfigureNATAndRelaySessions(t *testing.T) {
	mk := func(natted bool, boot ...Contact) *testNode {
		kp, err := pki.GenerateKeypair(context.Background(), testPoW)
		if err != nil {
			t.Fatal(err)
		}
		dev := newMemDevice()
		cfg := Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Bootstrap: boot,
			Logger: testLogger(t), DHT: dhtConfigForOneHost(), testNoDialBack: natted}
		if natted {
			cfg.Advertise = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")} // nobody there
		}
		nd, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		return &testNode{nd, dev}
	}
	p := mk(false)
	a, b := mk(true, p.contact()), mk(true, p.contact())
	pid := p.id.String()
	for _, x := range []*testNode{a, b} {
		waitFor(t, "configure_nat picks the relay", 10*time.Second, func() bool {
			s := x.NAT()
			return s.Checked && !s.Public && slices.Contains(s.Relays, pid)
		})
	}
	if s := p.NAT(); !s.Public {
		t.Fatalf("the seed node says it is not public: %+v", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	waitFor(t, "b's record lists its relay", 10*time.Second, func() bool {
		rec, err := a.Resolve(ctx, b.id)
		return err == nil && slices.Contains(rec.Relays, p.id)
	})

	// Behind NAT they joined the DHT as clients: the public node never
	// routes lookups to them (they cannot be dialed directly).
	snap, _ := p.DHTSnapshot()
	for _, bk := range snap.Buckets {
		for _, ct := range bk.Contacts {
			if ct.Identity == a.id || ct.Identity == b.id {
				t.Fatalf("a node behind NAT is in the public node's routing table: %s", ct.Identity.Short())
			}
		}
	}

	// a asks b's relay for a session: the relay opens it, b accepts (p is
	// its relay) and both ends hold it as a path.
	if got := a.nat.SetupRelays(ctx, b.id, []pki.Identity{p.id}); got != 1 {
		t.Fatalf("setupRelays = %d, want 1", got)
	}
	if st := p.RelayStats(); st == nil || st.Opened != 1 || st.Sessions != 1 {
		t.Fatalf("relay stats after the session: %+v", st)
	}
	hasRelayPath := func(x *testNode, to pki.Identity) bool {
		ps, _ := x.sock.Paths(to)
		return slices.ContainsFunc(ps, func(s smartsock.PathStatus) bool { return s.Kind == "relay" && s.Relay == pid })
	}
	if !hasRelayPath(a, b.id) || !hasRelayPath(b, a.id) {
		t.Fatal("the session is not a path on both ends")
	}

	// A public node that is not b's relay cannot push a session on b.
	c := mk(false, p.contact())
	if err := c.Connect(ctx, b.contact()); err != nil {
		t.Fatal(err)
	}
	if err := a.Connect(ctx, c.contact()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c's NAT check", 10*time.Second, func() bool { return c.NAT().Checked })
	before := b.nat.Counters.RelayRefused.Load()
	if got := a.nat.SetupRelays(ctx, b.id, []pki.Identity{c.id}); got != 0 {
		t.Fatal("b accepted a session from a node that is not its relay")
	}
	if b.nat.Counters.RelayRefused.Load() != before+1 {
		t.Fatal("b did not count the refused session")
	}
	if st := c.RelayStats(); st.Sessions != 0 {
		t.Fatalf("c kept a session b refused: %+v", st)
	}
}

// A peer's punch candidates never make us probe our own host or link,
// unless we listen on loopback ourselves (one-host tests).
func TestPunchCandidatesFromPeerFiltered(t *testing.T) {
	public := newTestNode(t, nil, "[::]:0")
	local := newTestNode(t, nil, "127.0.0.1:0")
	mk := func() []netip.AddrPort {
		return []netip.AddrPort{
			netip.MustParseAddrPort("127.0.0.1:22"),
			netip.MustParseAddrPort("[fe80::1]:7400"),
			netip.MustParseAddrPort("198.18.3.1:7400"),
			netip.MustParseAddrPort("255.255.255.255:7400"),
			netip.MustParseAddrPort("198.18.255.255:0"),
			netip.MustParseAddrPort("[ff02::1]:7400"),
			netip.MustParseAddrPort("[::ffff:127.0.0.1]:7400"),
			netip.MustParseAddrPort("0.0.0.0:7400"),
		}
	}
	if got := public.nat.Punchable(mk()); len(got) != 1 || got[0].String() != "198.18.3.1:7400" {
		t.Fatalf("a node on [::] kept %v", got)
	}
	if public.nat.Counters.PunchRefused.Load() != 7 {
		t.Fatalf("refused %d, want 7", public.nat.Counters.PunchRefused.Load())
	}
	if got := local.nat.Punchable(mk()); len(got) != 3 || got[0].String() != "127.0.0.1:22" {
		t.Fatalf("a node on loopback kept %v", got)
	}
}

// Addresses from the network (a record the resolver returned) never make a
// node that does not listen on loopback send to loopback, link-local,
// multicast, broadcast or unspecified addresses; the same node still dials
// a loopback address its user chose.
func TestRecordAddressesFollowPolicy(t *testing.T) {
	owner := newTestNode(t, nil, "")
	port := owner.LocalAddr().Port()
	bad := []netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
		netip.AddrPortFrom(netip.MustParseAddr("::1"), port),
		netip.AddrPortFrom(netip.MustParseAddr("fe80::1"), port),
		netip.AddrPortFrom(netip.MustParseAddr("ff02::1"), port),
		netip.AddrPortFrom(netip.MustParseAddr("255.255.255.255"), port),
		netip.AddrPortFrom(netip.MustParseAddr("0.0.0.0"), port),
	}
	hostile := func(context.Context, netip.Addr) ([]Contact, error) {
		var out []Contact
		for _, ap := range bad {
			out = append(out, Contact{Identity: owner.id, Addr: ap})
		}
		return out, nil
	}
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	dev := newMemDevice()
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "[::]:0", Device: dev, Resolver: hostile, DisableDHT: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	anyNode := &testNode{n, dev}
	anyNode.dev.Send(udp6(anyNode.addr, owner.addr, []byte("x")))
	waitFor(t, "resolution fails", 5*time.Second, func() bool { return anyNode.dp.Counters.ResolveFailed.Load() == 1 })
	if got := anyNode.nat.Counters.DialAddrRefused.Load(); got != uint64(min(len(bad), nat.MaxDialAddrs)) {
		t.Fatalf("refused %d addresses, want %d", got, min(len(bad), nat.MaxDialAddrs))
	}
	if ps, _ := anyNode.sock.Paths(owner.id); len(ps) != 0 {
		t.Fatalf("smartsock got paths from a hostile record: %+v", ps)
	}
	if s := owner.sock.Stats(); s.RxHello != 0 || s.DropUnknownSource != 0 {
		t.Fatalf("the owner on loopback heard from us: %+v", s)
	}
	// Its user may still point it at loopback.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := anyNode.Connect(ctx, owner.contact()); err != nil {
		t.Fatalf("user-chosen loopback contact: %v", err)
	}
}
