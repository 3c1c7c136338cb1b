package datapath

import (
	"context"
	"net/netip"
	"testing"

	"github.com/korium/korium-tun/internal/memdev"
	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

type memDevice = memdev.Device

func newMemDevice() *memDevice { return memdev.New() }

// staticPeers is a peer set that never changes.
type staticPeers struct{ s *peers.Snapshot }

func (p staticPeers) Snapshot() *peers.Snapshot { return p.s }

// testPeer is a routable peer without a connection (route and accept never
// look at it).
func testPeer(b byte) *peers.Peer {
	var seed [32]byte
	seed[0] = b
	kp, err := pki.NewKeypair(seed[:], 0)
	if err != nil {
		panic(err)
	}
	return &peers.Peer{ID: kp.Identity(), Addr: smartaddr.FromIdentity(kp.Identity()), Routable: true}
}

// newTestEngine is an engine on a memDevice routing to ps, whose
// resolutions fail at once (nobody owns anything).
func newTestEngine(t testing.TB, tune func(*Config), ps ...*peers.Peer) (*Engine, *memDevice) {
	t.Helper()
	dev := newMemDevice()
	self := testPeer(0)
	cfg := Config{Addr: self.Addr, MTU: DefaultMTU, Device: dev, Peers: staticPeers{peers.NewSnapshot(ps...)},
		Resolve: func(context.Context, netip.Addr) error { return ErrNoOwner }, MaxPending: 64}
	if tune != nil {
		tune(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, dev
}

func udp6(src, dst netip.Addr, payload []byte) []byte { return memdev.UDP6(src, dst, payload) }

// testLink is p's send queue without a sender (tests drain it with take).
func testLink(e *Engine, p *peers.Peer) *link {
	return &link{p: p, wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}
