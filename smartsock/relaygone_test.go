package smartsock

import (
	"net/netip"
	"testing"
	"time"
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
