package gossipsub

import (
	"errors"
	"go/build"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/pki"
)

// line builds n routers connected in a line 0-1-2-...
func line(t *testing.T, n int, cfg Config) (*simNet, []*simNode) {
	rng := rand.New(rand.NewPCG(7, 7))
	net := newSimNet()
	nodes := make([]*simNode, n)
	for i := range nodes {
		nodes[i] = net.addNode(t, i, honestAddr(i), rng, &cfg)
	}
	for i := 1; i < n; i++ {
		net.connect(nodes[i-1], nodes[i])
	}
	return net, nodes
}

// nowMs is the current time as a message carries it.
func nowMs() uint64 { return unixMilli(time.Now()) }

// synctestEpochMs is where a synctest bubble's clock starts (2000-01-01
// UTC), for messages built outside one.
const synctestEpochMs = 946684800000

func closeAll(nodes []*simNode) {
	for _, n := range nodes {
		if n.r != nil {
			n.r.Close()
		}
	}
}

func TestPubSubVerifiedSender(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, nodes := line(t, 4, Config{})
		defer closeAll(nodes)
		var subs []*Subscription
		for _, n := range nodes[1:] {
			s, err := n.r.Subscribe("lobby")
			if err != nil {
				t.Fatal(err)
			}
			subs = append(subs, s)
		}
		if _, err := nodes[1].r.Subscribe("lobby"); !errors.Is(err, ErrSubscribed) {
			t.Fatalf("double subscribe: %v", err)
		}
		time.Sleep(2 * time.Second)
		// Node 0 publishes without subscribing (fanout).
		if err := nodes[0].r.Publish("lobby", []byte("hi all")); err != nil {
			t.Fatal(err)
		}
		for i, s := range subs {
			select {
			case m := <-s.Messages():
				if string(m.Data) != "hi all" || m.From != nodes[0].id || m.Topic != "lobby" {
					t.Fatalf("node %d got %+v", i+1, m)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("node %d got nothing", i+1)
			}
		}
		peers := nodes[2].r.TopicPeers("lobby")
		if len(peers) != 2 {
			t.Fatalf("node 2 sees %d topic peers, want 2: %+v", len(peers), peers)
		}
		for _, p := range peers {
			if !p.InMesh {
				t.Errorf("peer %s not in mesh", p.ID.Short())
			}
		}
		if err := nodes[3].r.Unsubscribe("lobby"); err != nil {
			t.Fatal(err)
		}
		if _, open := <-subs[2].Messages(); open {
			t.Fatal("subscription channel open after Unsubscribe")
		}
		time.Sleep(time.Second)
		if n := len(nodes[2].r.TopicPeers("lobby")); n != 1 {
			t.Fatalf("node 2 sees %d topic peers after unsubscribe, want 1", n)
		}
	})
}

func TestPublishLimits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, nodes := line(t, 1, Config{})
		defer closeAll(nodes)
		r := nodes[0].r
		if err := r.Publish("", nil); !errors.Is(err, ErrBadTopic) {
			t.Errorf("empty topic: %v", err)
		}
		if err := r.Publish("t", make([]byte, 64<<10+1)); !errors.Is(err, ErrTooLargeMessage) {
			t.Errorf("oversize: %v", err)
		}
		n := 0
		for i := 0; i < 150; i++ {
			if r.Publish("t", []byte("x")) == nil {
				n++
			}
		}
		if n != 100 || r.Stats().DropPublishRate != 50 {
			t.Errorf("published %d of 150 at once, %d counted as over rate; want 100 and 50", n, r.Stats().DropPublishRate)
		}
		time.Sleep(time.Second)
		if err := r.Publish("t", []byte("x")); err != nil {
			t.Errorf("after a second: %v", err)
		}
	})
}

// TestReceiveLimits feeds a router garbage, oversize RPCs and a flood of
// valid messages from one peer: all rejected and counted, none panics.
func TestReceiveLimits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, nodes := line(t, 1, Config{})
		defer closeAll(nodes)
		r := nodes[0].r
		if _, err := r.Subscribe("t"); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		evil := net.addNode(t, 99, netip.MustParseAddr("192.0.2.1"), rng, nil)
		pub := testKey(t, 98)
		net.connect(evil, nodes[0])
		r.HandleRPC(pki.Identity{9}, []byte{1}) // unknown peer
		r.HandleRPC(evil.id, []byte{7, 7, 7})
		r.HandleRPC(evil.id, AppendRPC(nil, &RPC{Msgs: []WireMessage{{Topic: "t", Data: make([]byte, 64<<10+1)}}}))
		synctest.Wait()
		for i := 0; i < 300; i++ {
			m := WireMessage{Seqno: uint64(i + 1), Timestamp: nowMs(), Topic: "t", Data: []byte("flood")}
			SignMessage(pub, &m)
			r.HandleRPC(evil.id, AppendRPC(nil, &RPC{Msgs: []WireMessage{m}}))
			if i%50 == 0 {
				synctest.Wait()
			}
		}
		synctest.Wait()
		s := r.Stats()
		if s.DropUnknownPeer != 1 || s.DropMalformed != 1 || s.DropOversize != 1 {
			t.Errorf("unknown %d malformed %d oversize %d, want 1 each", s.DropUnknownPeer, s.DropMalformed, s.DropOversize)
		}
		if s.DropRateLimited != 200 || s.Delivered != 100 {
			t.Errorf("rate limited %d delivered %d, want 200 and 100 (burst)", s.DropRateLimited, s.Delivered)
		}
	})
}

// TestForgedMessageDropped sends a router a tampered message between two
// valid ones (of different sizes, through the reused verify buffer): the
// forgery is counted and not delivered, the others are.
func TestForgedMessageDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, nodes := line(t, 1, Config{})
		defer closeAll(nodes)
		r := nodes[0].r
		sub, err := r.Subscribe("t")
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		peer := net.addNode(t, 99, netip.MustParseAddr("192.0.2.1"), rng, nil)
		pub := testKey(t, 98)
		net.connect(peer, nodes[0])
		for i, data := range []string{"a long first message", "forged", "ok"} {
			m := WireMessage{Seqno: uint64(i + 1), Timestamp: nowMs(), Topic: "t", Data: []byte(data)}
			SignMessage(pub, &m)
			if data == "forged" {
				m.Data[0] ^= 1
			}
			r.HandleRPC(peer.id, AppendRPC(nil, &RPC{Msgs: []WireMessage{m}}))
			synctest.Wait()
		}
		if s := r.Stats(); s.DropInvalidSignature != 1 || s.Delivered != 2 {
			t.Fatalf("invalid %d delivered %d, want 1 and 2", s.DropInvalidSignature, s.Delivered)
		}
		for _, want := range []string{"a long first message", "ok"} {
			if m := <-sub.Messages(); string(m.Data) != want || m.From != pub.Identity() {
				t.Fatalf("got %q from %s, want %q", m.Data, m.From.Short(), want)
			}
		}
	})
}

func TestGraftDuringBackoffPenalized(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, nodes := line(t, 1, Config{})
		defer closeAll(nodes)
		r := nodes[0].r
		if _, err := r.Subscribe("t"); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		evil := net.addNode(t, 99, netip.MustParseAddr("192.0.2.1"), rng, nil)
		var mu sync.Mutex
		var pruned []Prune
		evil.raw = func(_ pki.Identity, b []byte) {
			if rpc, err := DecodeRPC(b, Limits{}); err == nil {
				mu.Lock()
				pruned = append(pruned, rpc.Prune...)
				mu.Unlock()
			}
		}
		net.connect(evil, nodes[0])
		r.HandleRPC(evil.id, AppendRPC(nil, &RPC{Subs: []SubOpt{{true, "t"}}, Prune: []Prune{{Topic: "t", Backoff: 60}}}))
		synctest.Wait()
		for i := 0; i < 8; i++ {
			r.HandleRPC(evil.id, AppendRPC(nil, &RPC{Graft: []string{"t"}}))
			synctest.Wait()
		}
		time.Sleep(time.Second)
		// Once graylisted (after 5) its GRAFTs are ignored.
		mu.Lock()
		if len(pruned) != 5 {
			t.Fatalf("%d PRUNEs answered 8 GRAFTs during backoff", len(pruned))
		}
		// Replies sent at the same instant may arrive in any order.
		slices.SortFunc(pruned, func(a, b Prune) int { return int(a.Backoff) - int(b.Backoff) })
		if pruned[0].Backoff != 60 || pruned[1].Backoff != 120 || pruned[4].Backoff != 600 {
			t.Errorf("backoff not exponential: %+v", pruned)
		}
		mu.Unlock()
		mu.Lock()
		defer mu.Unlock()
		if st := r.Stats(); int(st.DropGraylisted) != 8-len(pruned) {
			t.Errorf("%d GRAFTs ignored as graylisted, want %d", st.DropGraylisted, 8-len(pruned))
		}
		if s, _ := r.Score(evil.id); s >= DefaultScoreParams().GossipThreshold {
			t.Errorf("score %v a second after 8 GRAFTs in backoff, want below the gossip threshold", s)
		}
	})
}

func TestBackoffFor(t *testing.T) {
	for _, c := range []struct {
		n    int
		want time.Duration
	}{{0, time.Minute}, {1, 2 * time.Minute}, {3, 8 * time.Minute}, {4, 10 * time.Minute}, {60, 10 * time.Minute}} {
		if got := backoffFor(time.Minute, 10*time.Minute, c.n); got != c.want {
			t.Errorf("backoffFor(%d) = %v, want %v", c.n, got, c.want)
		}
	}
}

func TestSelectMesh(t *testing.T) {
	mesh := map[pki.Identity]struct{}{}
	scores := map[pki.Identity]float64{}
	out := map[pki.Identity]bool{}
	for i := 0; i < 13; i++ {
		id := pki.Identity{byte(i)}
		mesh[id] = struct{}{}
		scores[id] = float64(i)
		out[id] = i < 2 // the two worst are the only outbound peers
	}
	rng := rand.New(rand.NewPCG(1, 1))
	keep := selectMesh(mesh, func(id pki.Identity) float64 { return scores[id] }, func(id pki.Identity) bool { return out[id] }, 6, 4, 2, rng.Shuffle)
	if len(keep) != 6 {
		t.Fatalf("kept %d, want 6", len(keep))
	}
	for i := 9; i < 13; i++ {
		if _, ok := keep[pki.Identity{byte(i)}]; !ok {
			t.Errorf("top-scored peer %d not kept", i)
		}
	}
	for i := 0; i < 2; i++ {
		if _, ok := keep[pki.Identity{byte(i)}]; !ok {
			t.Errorf("outbound peer %d not kept", i)
		}
	}
}

func TestRelaySignal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, nodes := line(t, 5, Config{RelayMaxHops: 4})
		defer closeAll(nodes)
		for _, n := range nodes {
			if _, err := n.r.Subscribe("mesh"); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(2 * time.Second)
		// 0 -> 4 is four hops through the mesh.
		if err := nodes[0].r.SendSignal(nodes[4].id, []byte("punch at 12:00")); err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-nodes[4].r.Signals():
			if s.From != nodes[0].id || string(s.Payload) != "punch at 12:00" {
				t.Fatalf("got %+v", s)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("signal not delivered")
		}
		// Out of hops: 4 hops allowed, 0 -> 4 needs 4; with 3 it dies at 3.
		s := RelaySignal{Target: nodes[4].id, Nonce: 1, Timestamp: nowMs(), Hops: 3, Payload: []byte("x")}
		SignRelaySignal(nodes[0].key, &s)
		nodes[1].r.HandleRPC(nodes[0].id, AppendRPC(nil, &RPC{Relay: []RelaySignal{s}}))
		// A forged one is dropped at the first hop and penalized.
		f := RelaySignal{Target: nodes[4].id, Nonce: 2, Timestamp: nowMs(), Hops: 4, Payload: []byte("y")}
		SignRelaySignal(nodes[0].key, &f)
		f.Payload = []byte("z")
		nodes[1].r.HandleRPC(nodes[0].id, AppendRPC(nil, &RPC{Relay: []RelaySignal{f}}))
		time.Sleep(2 * time.Second)
		select {
		case s := <-nodes[4].r.Signals():
			t.Fatalf("unexpected signal %+v", s)
		default:
		}
		if st := nodes[3].r.Stats(); st.DropRelayHops != 1 {
			t.Errorf("node 3 dropped %d signals for hops, want 1", st.DropRelayHops)
		}
		if st := nodes[1].r.Stats(); st.DropRelayInvalid != 1 {
			t.Errorf("node 1 dropped %d forged signals, want 1", st.DropRelayInvalid)
		}
		if st := nodes[4].r.Stats(); st.RelayDelivered != 1 {
			t.Errorf("delivered %d, want 1 (duplicates suppressed)", st.RelayDelivered)
		}
		_ = net
	})
}

func TestCloseClosesChannels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, nodes := line(t, 2, Config{})
		sub, err := nodes[0].r.Subscribe("t")
		if err != nil {
			t.Fatal(err)
		}
		closeAll(nodes)
		if _, open := <-sub.Messages(); open {
			t.Fatal("subscription open after Close")
		}
		if _, open := <-nodes[0].r.Signals(); open {
			t.Fatal("signals open after Close")
		}
		if err := nodes[0].r.Publish("t", nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("publish after close: %v", err)
		}
		nodes[0].r.Close() // idempotent
		// synctest.Test fails if any router goroutine is left.
	})
}

// TestImports keeps the package's dependencies to pki, wire (the bounded
// reader), internal/ratelimit, blake3 and the standard library.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		switch {
		case imp == "github.com/korium/korium-tun/pki", imp == "lukechampine.com/blake3",
			imp == "github.com/korium/korium-tun/wire", imp == "github.com/korium/korium-tun/internal/ratelimit":
		case !strings.Contains(strings.Split(imp, "/")[0], "."):
		default:
			t.Errorf("gossipsub imports %s", imp)
		}
	}
}

// TestMeshDeliveryPenalty enables P3/P3b and checks that a mesh peer that
// never forwards anything is scored negative and pruned, while a peer that
// delivers scores positive.
func TestMeshDeliveryPenalty(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sp := DefaultScoreParams()
		sp.Topic.MeshMessageDeliveriesWeight = -1
		sp.Topic.MeshMessageDeliveriesThreshold = 2
		sp.Topic.MeshMessageDeliveriesActivation = 3 * time.Second
		sp.Topic.MeshMessageDeliveriesWindow = 50 * time.Millisecond
		sp.Topic.MeshFailurePenaltyWeight = -1
		net, nodes := line(t, 2, Config{Score: sp})
		defer closeAll(nodes)
		a, c := nodes[0], nodes[1] // c publishes to a
		rng := rand.New(rand.NewPCG(3, 3))
		hole := net.addNode(t, 77, netip.MustParseAddr("192.0.2.7"), rng, nil)
		hole.raw = func(pki.Identity, []byte) {}
		net.connect(hole, a)
		for _, n := range nodes {
			if _, err := n.r.Subscribe("t"); err != nil {
				t.Fatal(err)
			}
		}
		net.send(hole, a, &RPC{Subs: []SubOpt{{true, "t"}}, Graft: []string{"t"}})
		time.Sleep(time.Second)
		inMesh := func(id pki.Identity) bool {
			for _, p := range a.r.TopicPeers("t") {
				if p.ID == id {
					return p.InMesh
				}
			}
			return false
		}
		if !inMesh(hole.id) || !inMesh(c.id) {
			t.Fatal("mesh not formed")
		}
		for i := 0; i < 40; i++ {
			if err := c.r.Publish("t", []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if inMesh(hole.id) {
			t.Error("black-hole peer still in mesh")
		}
		if s, _ := a.r.Score(hole.id); s >= 0 {
			t.Errorf("black-hole score %v, want negative (P3b)", s)
		}
		// (c in turn prunes a, which never delivers anything to c: P3 is
		// why the default leaves its weight at zero.)
		if s, _ := a.r.Score(c.id); s <= 0 {
			t.Errorf("delivering peer score %v, want positive", s)
		}
	})
}

func TestRelayRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, nodes := line(t, 2, Config{RelayRate: 5})
		defer closeAll(nodes)
		for i := 0; i < 20; i++ {
			s := RelaySignal{Target: nodes[0].id, Nonce: uint64(i), Timestamp: nowMs(), Hops: 2, Payload: []byte("x")}
			SignRelaySignal(nodes[1].key, &s)
			nodes[0].r.HandleRPC(nodes[1].id, AppendRPC(nil, &RPC{Relay: []RelaySignal{s}}))
		}
		synctest.Wait()
		st := nodes[0].r.Stats()
		if st.RelayDelivered != 6 || st.DropRelayRate != 14 {
			t.Fatalf("delivered %d rate-dropped %d, want 6 (burst) and 14", st.RelayDelivered, st.DropRelayRate)
		}
		if got := len(nodes[0].r.Signals()); got != 6 {
			t.Fatalf("%d signals queued, want 6", got)
		}
	})
}

// rawPeer is a hand-driven peer that records the RPCs it receives.
type rawPeer struct {
	*simNode
	mu   sync.Mutex
	rpcs []*RPC
}

func newRawPeer(t *testing.T, net *simNet, i int, to *simNode) *rawPeer {
	rng := rand.New(rand.NewPCG(uint64(i), 1))
	rp := &rawPeer{simNode: net.addNode(t, i, honestAddr(i), rng, nil)}
	rp.raw = func(_ pki.Identity, b []byte) {
		r, err := DecodeRPC(b, Limits{})
		if err != nil {
			t.Errorf("router sent an undecodable rpc: %v", err)
			return
		}
		rp.mu.Lock()
		rp.rpcs = append(rp.rpcs, r)
		rp.mu.Unlock()
	}
	net.connect(rp.simNode, to)
	return rp
}

// received sums what the peer got since the last call.
func (rp *rawPeer) received() (msgs []WireMessage, iwant, idontwant []MsgID, graft []string) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	for _, r := range rp.rpcs {
		msgs = append(msgs, r.Msgs...)
		iwant = append(iwant, r.IWant...)
		idontwant = append(idontwant, r.IDontWant...)
		graft = append(graft, r.Graft...)
	}
	rp.rpcs = nil
	return
}

func TestGossipIWantAndPromises(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, nodes := line(t, 1, Config{})
		defer closeAll(nodes)
		r := nodes[0].r
		sub, _ := r.Subscribe("t")
		honestP := newRawPeer(t, net, 10, nodes[0])
		liar := newRawPeer(t, net, 11, nodes[0])
		pub := testKey(t, 12)
		m := WireMessage{Seqno: 5, Timestamp: nowMs(), Topic: "t", Data: []byte("gossiped")}
		SignMessage(pub, &m)
		fake := MakeMsgID(pub.Identity(), 6)
		for _, p := range []*rawPeer{honestP, liar} {
			net.send(p.simNode, nodes[0], &RPC{Subs: []SubOpt{{true, "t"}}})
		}
		time.Sleep(time.Second)
		net.send(honestP.simNode, nodes[0], &RPC{IHave: []IHave{{"t", []MsgID{m.ID()}}}})
		net.send(liar.simNode, nodes[0], &RPC{IHave: []IHave{{"t", []MsgID{fake}}}})
		time.Sleep(time.Second)
		if _, iw, _, _ := honestP.received(); len(iw) != 1 || iw[0] != m.ID() {
			t.Fatalf("IWANT to honest peer: %v", iw)
		}
		if _, iw, _, _ := liar.received(); len(iw) != 1 || iw[0] != fake {
			t.Fatalf("IWANT to liar: %v", iw)
		}
		net.send(honestP.simNode, nodes[0], &RPC{Msgs: []WireMessage{m}})
		select {
		case got := <-sub.Messages():
			if string(got.Data) != "gossiped" {
				t.Fatalf("got %q", got.Data)
			}
		case <-time.After(time.Second):
			t.Fatal("gossiped message not delivered")
		}
		time.Sleep(4 * time.Second) // past IWantFollowup
		if st := r.Stats(); st.BrokenPromises != 1 {
			t.Fatalf("broken promises %d, want 1 (the liar's)", st.BrokenPromises)
		}
		sh, _ := r.Score(honestP.id)
		sl, _ := r.Score(liar.id)
		if sh <= sl {
			t.Fatalf("honest score %v not above liar's %v", sh, sl)
		}
	})
}

func TestIDontWantSentAndHonoured(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, nodes := line(t, 1, Config{})
		defer closeAll(nodes)
		r := nodes[0].r
		r.Subscribe("t")
		a := newRawPeer(t, net, 20, nodes[0])
		b := newRawPeer(t, net, 21, nodes[0])
		c := newRawPeer(t, net, 22, nodes[0])
		for _, p := range []*rawPeer{a, b, c} {
			net.send(p.simNode, nodes[0], &RPC{Subs: []SubOpt{{true, "t"}}, Graft: []string{"t"}})
		}
		time.Sleep(time.Second)
		pub := testKey(t, 23)
		big := WireMessage{Seqno: 1, Timestamp: nowMs(), Topic: "t", Data: make([]byte, 1024)}
		SignMessage(pub, &big)
		small := WireMessage{Seqno: 2, Timestamp: nowMs(), Topic: "t", Data: make([]byte, 1023)}
		SignMessage(pub, &small)
		// b does not want the big one; a delivers both.
		net.send(b.simNode, nodes[0], &RPC{IDontWant: []MsgID{big.ID()}})
		time.Sleep(time.Second)
		a.received()
		b.received()
		c.received()
		net.send(a.simNode, nodes[0], &RPC{Msgs: []WireMessage{big, small}})
		time.Sleep(time.Second)
		am, _, adw, _ := a.received()
		bm, _, bdw, _ := b.received()
		cm, _, cdw, _ := c.received()
		if len(am) != 0 || len(adw) != 0 {
			t.Errorf("sender got back %d msgs, %d IDONTWANT", len(am), len(adw))
		}
		if len(bm) != 1 || bm[0].Seqno != 2 {
			t.Errorf("peer that said IDONTWANT got %d msgs", len(bm))
		}
		if len(cm) != 2 {
			t.Errorf("mesh peer got %d msgs, want 2", len(cm))
		}
		// IDONTWANT goes out for the 1024-byte message only.
		for _, dw := range [][]MsgID{bdw, cdw} {
			if len(dw) != 1 || dw[0] != big.ID() {
				t.Errorf("IDONTWANT sent: %v, want only the 1 KiB message", dw)
			}
		}
		if st := r.Stats(); st.IDontWantHonored != 1 {
			t.Errorf("honoured %d, want 1", st.IDontWantHonored)
		}
	})
}

func TestOpportunisticGraft(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, nodes := line(t, 1, Config{OpportunisticGraftTicks: 3})
		defer closeAll(nodes)
		r := nodes[0].r
		r.Subscribe("t")
		var mesh []*rawPeer
		for i := 0; i < 6; i++ {
			p := newRawPeer(t, net, 30+i, nodes[0])
			net.send(p.simNode, nodes[0], &RPC{Subs: []SubOpt{{true, "t"}}, Graft: []string{"t"}})
			mesh = append(mesh, p)
		}
		good := newRawPeer(t, net, 40, nodes[0])
		net.send(good.simNode, nodes[0], &RPC{Subs: []SubOpt{{true, "t"}}})
		time.Sleep(500 * time.Millisecond)
		r.SetAppScore(good.id, 10)
		good.received()
		time.Sleep(2 * time.Second)
		if _, _, _, g := good.received(); len(g) != 0 {
			t.Fatalf("grafted before the opportunistic tick: %v", g)
		}
		time.Sleep(time.Second)
		if _, _, _, g := good.received(); len(g) != 1 || g[0] != "t" {
			t.Fatalf("high-scoring peer not grafted opportunistically: %v", g)
		}
		for _, p := range mesh {
			if _, _, _, g := p.received(); len(g) != 0 {
				t.Fatalf("mesh peer grafted again: %v", g)
			}
		}
	})
}
