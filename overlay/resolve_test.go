package overlay

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// newResolvingNode is a test node whose resolver is f.
func newResolvingNode(t *testing.T, f Resolver, ttl time.Duration) *testNode {
	t.Helper()
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	dev := newMemDevice()
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Resolver: f, ResolveFailTTL: ttl, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{n, dev}
}

// The first packet to an unknown overlay address starts one resolution; the
// held packet is delivered once the owner is connected.
func TestUnknownAddressResolvedOnceAndDelivered(t *testing.T) {
	c := newTestNode(t, nil, "")
	release := make(chan struct{})
	var calls atomic.Int32
	a := newResolvingNode(t, func(ctx context.Context, addr netip.Addr) ([]Contact, error) {
		calls.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if addr != c.addr {
			return nil, errors.New("unknown")
		}
		return []Contact{c.contact()}, nil
	}, time.Second)
	var last []byte
	for i := 0; i < 50; i++ {
		last = udp6(a.addr, c.addr, []byte{byte(i)})
		a.dev.Send(last)
	}
	waitFor(t, "packets read", 5*time.Second, func() bool { return len(a.dev.In) == 0 })
	close(release)
	expectPacket(t, c.dev, last) // only the newest packet is held
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d resolutions for one address, want 1", n)
	}
	waitFor(t, "resolve counted", 5*time.Second, func() bool { return a.dp.Counters.ResolveOK.Load() == 1 })
	// Now connected: packets flow without resolving again.
	p := udp6(a.addr, c.addr, []byte("after"))
	a.dev.Send(p)
	expectPacket(t, c.dev, p)
	if calls.Load() != 1 {
		t.Fatal("resolved again while connected")
	}
}

// A failed resolution drops the held packet, and packets to that address
// are dropped at once until the failure expires.
func TestFailedResolutionIsCached(t *testing.T) {
	var calls atomic.Int32
	a := newResolvingNode(t, func(context.Context, netip.Addr) ([]Contact, error) {
		calls.Add(1)
		return nil, errors.New("not found")
	}, 300*time.Millisecond)
	var nobody pki.Identity
	nobody[5] = 9
	dst := pkiAddr(nobody)
	a.dev.Send(udp6(a.addr, dst, []byte("1")))
	waitFor(t, "failure", 5*time.Second, func() bool { return a.dp.Counters.ResolveFailed.Load() == 1 })
	for i := 0; i < 10; i++ {
		a.dev.Send(udp6(a.addr, dst, []byte("2")))
	}
	waitFor(t, "fast drops", 5*time.Second, func() bool { return a.dp.Counters.TxResolveFailed.Load() >= 11 })
	if calls.Load() != 1 {
		t.Fatalf("%d resolutions during the failure TTL, want 1", calls.Load())
	}
	// After the TTL (300 ms) a new packet resolves again.
	waitFor(t, "retry after TTL", 5*time.Second, func() bool {
		a.dev.Send(udp6(a.addr, dst, []byte("3")))
		return calls.Load() == 2
	})
}

// A resolver that lies (returns a contact whose identity does not own the
// address) never gets the packet delivered anywhere.
func TestLyingResolverIgnored(t *testing.T) {
	liar := newTestNode(t, nil, "")
	var victim pki.Identity
	victim[7] = 3
	a := newResolvingNode(t, func(context.Context, netip.Addr) ([]Contact, error) {
		return []Contact{liar.contact()}, nil // liar does not own victim's address
	}, time.Second)
	a.dev.Send(udp6(a.addr, pkiAddr(victim), []byte("secret")))
	waitFor(t, "failure", 5*time.Second, func() bool { return a.dp.Counters.ResolveFailed.Load() == 1 })
	if a.peer(liar.id) != nil {
		t.Fatal("connected to a contact that does not own the address")
	}
	expectNothing(t, liar.dev, 50*time.Millisecond)
}

func pkiAddr(id pki.Identity) netip.Addr { return smartaddr.FromIdentity(id) }
