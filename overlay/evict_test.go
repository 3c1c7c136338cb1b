package overlay

import (
	"context"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

// At MaxPeers a new connection evicts the least recently used peer, never a
// bootstrap contact.
func TestPeerLimitEvictsLeastRecentlyUsed(t *testing.T) {
	boot := newTestNode(t, nil, "")
	kp, _ := pki.GenerateKeypair(context.Background(), testPoW)
	dev := newMemDevice()
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, DisableDHT: true,
		MaxPeers: 2, Bootstrap: []Contact{boot.contact()}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	a := &testNode{n, dev}
	waitFor(t, "bootstrap connection", 5*time.Second, func() bool { return a.peer(boot.id) != nil })
	b, c := newTestNode(t, nil, ""), newTestNode(t, nil, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, b.contact()); err != nil {
		t.Fatal(err)
	}
	// The bootstrap peer is older and idle, but it is a bootstrap contact:
	// connecting to c must evict b instead.
	a.peers.AdvanceClock(time.Second)
	if err := a.Connect(ctx, c.contact()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "eviction", 5*time.Second, func() bool {
		return a.peer(b.id) == nil && a.peer(c.id) != nil && a.peer(boot.id) != nil
	})
	if a.peers.Counters.Evicted.Load() != 1 {
		t.Fatalf("evictions %d, want 1", a.peers.Counters.Evicted.Load())
	}
	// With two evictable peers the least recently used one goes: raise
	// the cap, use c, and connect d: b (idle since it was dialed) is evicted.
	a.peers.SetMaxPeers(3)
	if err := a.Connect(ctx, b.contact()); err != nil {
		t.Fatal(err)
	}
	a.peers.AdvanceClock(time.Second)
	deliver(t, a, c, udp6(a.addr, c.addr, []byte("use c")))
	d := newTestNode(t, nil, "")
	if err := a.Connect(ctx, d.contact()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "LRU eviction", 5*time.Second, func() bool {
		return a.peer(b.id) == nil && a.peer(c.id) != nil && a.peer(d.id) != nil && a.peer(boot.id) != nil
	})
}

// A connection idle for Config.IdleEvict is closed; a bootstrap contact and
// a peer that was just used are kept.
func TestIdleConnectionsEvicted(t *testing.T) {
	boot := newTestNode(t, nil, "")
	kp, _ := pki.GenerateKeypair(context.Background(), testPoW)
	dev := newMemDevice()
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, DisableDHT: true,
		IdleEvict: time.Minute, Bootstrap: []Contact{boot.contact()}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	a := &testNode{n, dev}
	waitFor(t, "bootstrap connection", 5*time.Second, func() bool { return a.peer(boot.id) != nil })
	b, c := newTestNode(t, nil, ""), newTestNode(t, nil, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, x := range []*testNode{b, c} {
		if err := a.Connect(ctx, x.contact()); err != nil {
			t.Fatal(err)
		}
	}
	later := time.Now().Add(2 * time.Minute)
	a.peers.SetClock(later)
	deliver(t, a, c, udp6(a.addr, c.addr, []byte("c is in use")))
	a.peers.EvictIdle(later.Add(30 * time.Second))
	waitFor(t, "idle eviction", 5*time.Second, func() bool {
		return a.peer(b.id) == nil && a.peer(c.id) != nil && a.peer(boot.id) != nil
	})
	if got := a.peers.Counters.IdleEvicted.Load(); got != 1 {
		t.Fatalf("idle evictions %d, want 1", got)
	}
}
