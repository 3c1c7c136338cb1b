package smartsock

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

// RelayGone: when the connection to a relay ends, a peer's traffic leaves
// the path through it for another proven path at once, without waiting for
// MaxMissed probes to time out; paths through other relays are untouched,
// and a probe answer would revive the path (missed is reset there).
func TestRelayGoneSwitchesAtOnce(t *testing.T) {
	c, err := New(listenUDP(t), Config{Keypair: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peerID, r1, r2 := newKey(t).Identity(), newKey(t).Identity(), newKey(t).Identity()
	var p1, p2 *path
	c.call(func() {
		now := time.Now()
		p := c.getOrAdd(peerID)
		p1 = &path{peer: p, addr: netip.MustParseAddrPort("198.18.1.1:7400"), relay: true, relayID: r1, validated: true, owner: true, srtt: time.Millisecond, added: now, lastReply: now}
		p2 = &path{peer: p, addr: netip.MustParseAddrPort("198.18.4.1:7400"), relay: true, relayID: r2, validated: true, owner: true, srtt: 40 * time.Millisecond, added: now, lastReply: now}
		p.paths = append(p.paths, p1, p2)
		c.setCurrent(p, p1)
		c.selectPath(p, now)
	})
	current := func() *path {
		var cur *path
		c.call(func() { cur = c.peerOf(peerID).current })
		return cur
	}
	if current() != p1 {
		t.Fatal("the faster relay path is not current")
	}
	if got := c.RelayGone(newKey(t).Identity()); got != 0 || current() != p1 {
		t.Fatalf("an unrelated relay leaving marked %d paths", got)
	}
	if got := c.RelayGone(r1); got != 1 {
		t.Fatalf("RelayGone marked %d paths, want 1", got)
	}
	if current() != p2 {
		t.Fatal("traffic did not move to the other relay's path at once")
	}
	if got := c.RelayGone(r1); got != 0 {
		t.Fatalf("a second RelayGone marked %d paths", got)
	}
	var missed2 int
	c.call(func() { missed2 = p2.missed })
	if missed2 != 0 {
		t.Fatal("the other relay's path was marked")
	}
}

// RelayedPeers lists exactly the peers Path reports relayed, follows their
// routes, and costs nothing to call (NAT traversal looks at it every tick).
func TestRelayedPeers(t *testing.T) {
	f := newDemuxFixture(t)
	c := f.c
	check := func(want ...pki.Identity) {
		t.Helper()
		got := c.RelayedPeers()
		if len(got) != len(want) || len(want) == 1 && got[0] != want[0] {
			t.Fatalf("RelayedPeers = %v, want %v", got, want)
		}
		for _, id := range []pki.Identity{dxP1.Identity(), dxP2.Identity(), dxP3.Identity()} {
			pi, _ := c.Path(id)
			if pi.Relayed != slices.Contains(got, id) {
				t.Errorf("%s: Path says relayed %v, RelayedPeers %v", id.Short(), pi.Relayed, got)
			}
		}
	}
	check(dxP2.Identity()) // the fixture's relayed peer
	if n := testing.AllocsPerRun(100, func() { c.RelayedPeers() }); n != 0 {
		t.Errorf("RelayedPeers allocates %v times", n)
	}
	// P2's traffic moves to a direct path of its own.
	c.call(func() {
		p := c.peerOf(dxP2.Identity())
		pa := c.direct(p, netip.MustParseAddrPort("198.18.0.7:7400"), byProof, f.now)
		pa.validated = true
		c.setCurrent(p, pa)
	})
	check()
	// Back on the relay, then gone from the table.
	c.call(func() {
		p := c.peerOf(dxP2.Identity())
		for _, pa := range p.paths {
			if pa.relay {
				c.setCurrent(p, pa)
			}
		}
	})
	check(dxP2.Identity())
	c.call(func() { c.remove(c.peerOf(dxP2.Identity())) })
	check()
}
