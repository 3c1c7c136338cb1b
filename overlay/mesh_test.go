package overlay

import (
	"context"
	"crypto/rand"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/nat"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay/client"
	"github.com/korium/korium-tun/smartsock"
)

// newNATNode starts a node with the DHT on; natted makes configure_nat
// ignore dial-backs and advertises an address nobody listens at, so the
// node plays one behind NAT on one host.
func newNATNode(t *testing.T, natted bool, boot ...Contact) *testNode {
	t.Helper()
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

func relayPathVia(x *testNode, to, relay pki.Identity) bool {
	ps, _ := x.sock.Paths(to)
	return slices.ContainsFunc(ps, func(s smartsock.PathStatus) bool { return s.Kind == "relay" && s.Relay == relay.String() })
}

// TestMeshRelayAfterRelayLeft: B (behind NAT) publishes P as its relay; P
// stops. B picks Q, a public node it knows from its DHT table, at once and
// republishes. A, dialing B from B's stale record (relay P), finds P dead
// and gets a session through Q, a mesh peer both reach, signalled to B
// through the gossip mesh; the connection comes up over it.
func TestMeshRelayAfterRelayLeft(t *testing.T) {
	p := newNATNode(t, false)
	q := newNATNode(t, false, p.contact())
	// q is in p's table before b joins through p, so b learns it.
	waitFor(t, "q in p's DHT table", 15*time.Second, func() bool {
		return slices.ContainsFunc(p.spares(), func(c Contact) bool { return c.Identity == q.id })
	})
	b := newNATNode(t, true, p.contact())
	a := newNATNode(t, true, q.contact())
	waitFor(t, "configure_nat on a and b", 15*time.Second, func() bool {
		sa, sb := a.NAT(), b.NAT()
		return sa.Checked && !sa.Public && slices.Contains(sa.Relays, q.id.String()) &&
			sb.Checked && !sb.Public && slices.Contains(sb.Relays, p.id.String())
	})
	waitFor(t, "b knows q from its DHT table", 30*time.Second, func() bool {
		return slices.ContainsFunc(b.spares(), func(c Contact) bool { return c.Identity == q.id })
	})

	t0 := time.Now()
	p.Close()
	waitFor(t, "b picks q as its relay", 10*time.Second, func() bool {
		return slices.Equal(b.NAT().Relays, []string{q.id.String()})
	})
	repick := time.Since(t0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFor(t, "b's record lists q", 10*time.Second, func() bool {
		rec, err := a.Resolve(ctx, b.id)
		return err == nil && slices.Equal(rec.Relays, []pki.Identity{q.id})
	})
	if b.nat.Mesh.Repicks.Load() == 0 {
		t.Fatal("no repick counted")
	}

	// A dials B with the stale record: relay P only, no address.
	t1 := time.Now()
	if err := a.nat.Connect(ctx, b.id, nil, []pki.Identity{p.id}, false); err != nil {
		t.Fatalf("dial through the mesh: %v (a mesh %+v, b mesh %+v)", err, meshCounters(a), meshCounters(b))
	}
	dial := time.Since(t1)
	if !relayPathVia(a, b.id, q.id) || !relayPathVia(b, a.id, q.id) {
		t.Fatal("the connection has no path through q on both ends")
	}
	if a.nat.Mesh.Sessions.Load()+b.nat.Mesh.Sessions.Load() == 0 {
		t.Fatalf("no mesh session counted: a %+v, b %+v", meshCounters(a), meshCounters(b))
	}
	if a.nat.Mesh.SignalsSent.Load() == 0 || b.nat.Mesh.SignalsReceived.Load() == 0 {
		t.Fatalf("the signal did not travel: a %+v, b %+v", meshCounters(a), meshCounters(b))
	}
	t.Logf("relay left -> b republished another in %v; dial from the stale record through a mesh relay in %v (reference: 5 s direct + 15 s per mesh relay attempt)",
		repick.Round(time.Millisecond), dial.Round(time.Millisecond))
	if dial > 10*time.Second {
		t.Fatalf("dial through the mesh took %v", dial)
	}
}

func meshCounters(x *testNode) map[string]uint64 {
	m := &x.nat.Mesh
	return map[string]uint64{"sent": m.SignalsSent.Load(), "recv": m.SignalsReceived.Load(), "attempts": m.Attempts.Load(),
		"sessions": m.Sessions.Load(), "failed": m.Failed.Load(), "rate": m.SignalRate.Load(), "malformed": m.SignalMalformed.Load()}
}

func newIdentity(t *testing.T) (*pki.Keypair, pki.Identity) {
	t.Helper()
	var seed [32]byte
	rand.Read(seed[:])
	kp, err := pki.NewKeypair(seed[:], 0)
	if err != nil {
		t.Fatal(err)
	}
	return kp, kp.Identity()
}

// TestMeshSignalAttacks: what a hostile peer can do with mesh relay
// signals. Forged, replayed and stale signals never reach NAT traversal
// (gossipsub drops them); malformed ones are counted and ignored; one
// origin flooding is cut to its budget; many origins fill the allowed
// table only to its cap; and nothing lets a relay push a session we did
// not allow.
func TestMeshSignalAttacks(t *testing.T) {
	p := newNATNode(t, false)
	b := newNATNode(t, true, p.contact())
	waitFor(t, "b connected to p", 10*time.Second, func() bool { return b.peer(p.id) != nil && p.peer(b.id) != nil })
	_, relayID := newIdentity(t)
	payload := nat.AppendSignal(nil, []nat.SignalRelay{{ID: relayID}})
	signal := func(kp *pki.Keypair, ts time.Time, nonce uint64) []byte {
		s := gossipsub.RelaySignal{Target: b.id, Nonce: nonce, Timestamp: uint64(ts.UnixMilli()), Hops: 4, Payload: payload}
		gossipsub.SignRelaySignal(kp, &s)
		return gossipsub.AppendRPC(nil, &gossipsub.RPC{Relay: []gossipsub.RelaySignal{s}})
	}
	originKP, origin := newIdentity(t)
	gs := func() gossipsub.Stats { s, _ := b.PubSubStats(); return s }
	// p delivers them, as a mesh neighbour would.
	send := func(rpc []byte) { b.handleGossip(context.Background(), p.id, rpc) }

	// Forged: signed by someone else than the origin it names.
	forgerKP, _ := newIdentity(t)
	forged := gossipsub.RelaySignal{Target: b.id, Nonce: 1, Timestamp: uint64(time.Now().UnixMilli()), Hops: 4, Payload: payload}
	gossipsub.SignRelaySignal(forgerKP, &forged)
	forged.Origin = origin
	send(gossipsub.AppendRPC(nil, &gossipsub.RPC{Relay: []gossipsub.RelaySignal{forged}}))
	// Stale: 31 s old (the limit is 30 s).
	send(signal(originKP, time.Now().Add(-31*time.Second), 2))
	waitFor(t, "gossipsub drops the forged and the stale signal", 5*time.Second, func() bool {
		s := gs()
		return s.DropRelayInvalid == 1 && s.DropRelayStale == 1
	})
	if got := b.nat.Mesh.SignalsReceived.Load(); got != 0 {
		t.Fatalf("NAT traversal saw %d forged or stale signals", got)
	}
	if b.nat.Allowed() != 0 {
		t.Fatal("a forged or stale signal allowed a session")
	}

	// Genuine, then replayed: acted on once.
	good := signal(originKP, time.Now(), 3)
	send(good)
	send(good)
	waitFor(t, "the genuine signal arrives once", 5*time.Second, func() bool {
		return b.nat.Mesh.SignalsReceived.Load() == 1 && gs().DropRelayDuplicate == 1
	})
	if b.nat.Allowed() != 1 {
		t.Fatalf("allowed pairs %d after one signal naming one relay, want 1", b.nat.Allowed())
	}

	// Malformed payloads from a genuine origin: counted, nothing allowed.
	for i, bad := range [][]byte{[]byte("KMRS"), []byte("KMRS\x09"), append([]byte("KMRS\x01"), make([]byte, 33)...), append(payload, 0)} {
		s := gossipsub.RelaySignal{Target: b.id, Nonce: uint64(100 + i), Timestamp: uint64(time.Now().UnixMilli()), Hops: 4, Payload: bad}
		kp, _ := newIdentity(t)
		gossipsub.SignRelaySignal(kp, &s)
		send(gossipsub.AppendRPC(nil, &gossipsub.RPC{Relay: []gossipsub.RelaySignal{s}}))
	}
	waitFor(t, "malformed signals counted", 5*time.Second, func() bool { return b.nat.Mesh.SignalMalformed.Load() == 4 })
	if b.nat.Allowed() != 1 {
		t.Fatalf("malformed signals changed the allowed pairs: %d", b.nat.Allowed())
	}

	// One origin flooding (straight into NAT traversal, past gossipsub's
	// per-neighbour budget): its budget is 4 at once, 2 a second.
	for range 100 {
		b.nat.HandleSignal(origin, payload)
	}
	if got := b.nat.Mesh.SignalRate.Load(); got < 90 {
		t.Fatalf("only %d of 100 flooded signals were cut by the origin's budget", got)
	}
	// Many origins: the allowed table stays at its cap, evicting.
	for range 1500 {
		_, o := newIdentity(t)
		b.nat.HandleSignal(o, payload)
	}
	if got := b.nat.Allowed(); got > 1024 {
		t.Fatalf("allowed table grew to %d", got)
	}
	if b.nat.Mesh.AllowEvicted.Load() == 0 || b.nat.Mesh.AttemptsBusy.Load() == 0 {
		t.Fatalf("no eviction or no attempt cap under a flood: %+v", meshCounters(b))
	}

	// A relay that nobody named cannot push a session: p is b's relay,
	// so use another public node c, connected to b.
	c := newNATNode(t, false, p.contact())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx, b.contact()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c's NAT check", 10*time.Second, func() bool { return c.NAT().Checked })
	refused := b.nat.Counters.RelayRefused.Load()
	if got := p.nat.SetupRelays(ctx, b.id, []pki.Identity{c.id}); got != 0 {
		t.Fatal("b accepted a session through a relay nobody named")
	}
	if b.nat.Counters.RelayRefused.Load() != refused+1 {
		t.Fatal("the refused session was not counted")
	}
}

// TestRelayRequestsToArbitraryTargets: a connected peer asking us to relay
// to identities we are not connected to is refused without a session; a
// flood of requests is cut to its budget.
func TestRelayRequestsToArbitraryTargets(t *testing.T) {
	p := newNATNode(t, false)
	x := newNATNode(t, false, p.contact())
	waitFor(t, "x connected to p", 10*time.Second, func() bool { return x.peer(p.id) != nil && p.peer(x.id) != nil })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := caller{x.Node}
	refused := 0
	for range 60 {
		_, target := newIdentity(t)
		if _, err := client.Connect(ctx, c, p.id, target); err != nil {
			refused++
		}
	}
	if refused != 60 {
		t.Fatalf("%d of 60 requests to unknown targets refused", refused)
	}
	if st := p.RelayStats(); st.Sessions != 0 || st.Opened != 0 {
		t.Fatalf("the relay opened sessions to unknown targets: %+v", st)
	}
	if got := p.nat.Mesh.ConnectRate.Load(); got < 30 {
		t.Fatalf("only %d of 60 back-to-back requests cut by the budget", got)
	}
}

// caller sends relay requests from a node (client.Caller).
type caller struct{ n *Node }

func (c caller) CallRelay(ctx context.Context, to pki.Identity, req []byte) ([]byte, error) {
	return c.n.callRelay(ctx, to, req)
}
