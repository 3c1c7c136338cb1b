package gossipsub

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/pki"
)

// checkRouter reports the first broken invariant of the router's state:
// every table a peer can grow within its bound, and the tables consistent
// with each other. It runs on the loop.
func checkRouter(r *Router) (err error) {
	r.do(func() { err = r.invariants() })
	return err
}

func (r *Router) invariants() error {
	c := &r.cfg
	if len(r.topics) > c.MaxTopics || len(r.mesh) > c.MaxTopics || len(r.fanout) > c.MaxTopics || len(r.backoff) > c.MaxTopics {
		return fmt.Errorf("topics %d mesh %d fanout %d backoff %d > MaxTopics %d", len(r.topics), len(r.mesh), len(r.fanout), len(r.backoff), c.MaxTopics)
	}
	for t, m := range r.topics {
		if len(m) == 0 || len(m) > c.MaxPeersPerTopic {
			return fmt.Errorf("topic %q has %d peers", t, len(m))
		}
		for id := range m {
			p := r.peers[id]
			if p == nil {
				return fmt.Errorf("topic %q lists %s, not a peer", t, id.Short())
			}
			if _, ok := p.topics[t]; !ok {
				return fmt.Errorf("topic %q lists %s, whose topics lack it", t, id.Short())
			}
		}
	}
	withPrefix := 0
	for id, p := range r.peers {
		if len(p.topics) > c.MaxTopicsPerPeer {
			return fmt.Errorf("peer %s has %d topics", id.Short(), len(p.topics))
		}
		for t := range p.topics {
			if _, ok := r.topics[t][id]; !ok {
				return fmt.Errorf("peer %s has topic %q the router does not list", id.Short(), t)
			}
		}
		if p.dontWant.len() > c.MaxIDontWantPeer {
			return fmt.Errorf("peer %s remembers %d IDONTWANT", id.Short(), p.dontWant.len())
		}
		if p.prefix.IsValid() {
			withPrefix++
		}
		if r.scores[id] == nil {
			return fmt.Errorf("peer %s has no score", id.Short())
		}
		if p.score != r.scores[id] {
			return fmt.Errorf("peer %s holds a score that is not its entry in the router's scores", id.Short())
		}
	}
	n := 0
	for pfx, k := range r.ipCount {
		if k <= 0 {
			return fmt.Errorf("prefix %v counted %d", pfx, k)
		}
		n += k
	}
	if n != withPrefix {
		return fmt.Errorf("ipCount sums to %d, %d peers have a prefix", n, withPrefix)
	}
	for t, m := range r.mesh {
		for id := range m {
			if r.peers[id] == nil {
				return fmt.Errorf("mesh %q holds %s, not a peer", t, id.Short())
			}
			if _, ok := r.topics[t][id]; !ok {
				return fmt.Errorf("mesh %q holds %s, not subscribed", t, id.Short())
			}
		}
	}
	if len(r.scores) > max(c.MaxScoredPeers, len(r.peers)) {
		return fmt.Errorf("%d scores for %d peers", len(r.scores), len(r.peers))
	}
	if len(r.seen.m) > c.MaxSeenSources || r.seen.lru.Len() != len(r.seen.m) {
		return fmt.Errorf("seen sources %d (lru %d) > %d", len(r.seen.m), r.seen.lru.Len(), c.MaxSeenSources)
	}
	if r.relaySeen.len() > c.RelaySeen {
		return fmt.Errorf("relay seen %d > %d", r.relaySeen.len(), c.RelaySeen)
	}
	cached := 0
	for _, w := range r.mcache.windows {
		cached += len(w)
	}
	if len(r.mcache.msgs) != cached {
		return fmt.Errorf("message cache holds %d, its windows %d", len(r.mcache.msgs), cached)
	}
	for id, pm := range r.promises {
		if len(pm) == 0 || len(pm) > len(r.peers)+len(r.scores) {
			return fmt.Errorf("promise %v held by %d peers", id, len(pm))
		}
	}
	for t, m := range r.fanout {
		if _, sub := r.mesh[t]; sub {
			return fmt.Errorf("topic %q both fanout and mesh", t)
		}
		if len(m) > c.D {
			return fmt.Errorf("fanout %q has %d peers > D", t, len(m))
		}
	}
	return nil
}

// fuzzRig is a subscribed router with three neighbours: one subscribed
// router (a mesh peer), one hand-driven peer on a public address and one on
// loopback. What the fuzzer sends comes from one of them, from an identity
// the router never heard of, or claims to be the router itself.
type fuzzRig struct {
	net     *simNet
	r, mate *simNode
	raw     [2]*simNode
	keys    [4]*pki.Keypair // publishers and relay origins the fuzzer signs with
}

func newFuzzRig(t *testing.T) *fuzzRig {
	net, nodes := line(t, 2, Config{})
	t.Cleanup(func() { closeAll(nodes) })
	f := &fuzzRig{net: net, r: nodes[0], mate: nodes[1]}
	rng := rand.New(rand.NewPCG(1, 1))
	for i, addr := range []string{"198.51.100.7", "127.0.0.1"} {
		f.raw[i] = net.addNode(t, 60+i, netip.MustParseAddr(addr), rng, nil)
		f.raw[i].raw = func(pki.Identity, []byte) {}
		net.connect(f.raw[i], f.r)
	}
	for i := range f.keys {
		f.keys[i] = testKey(t, 70+i)
	}
	for _, n := range nodes {
		if _, err := n.r.Subscribe("lobby"); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// sender picks who an RPC comes from.
func (f *fuzzRig) sender(b byte) pki.Identity {
	switch b % 5 {
	case 0:
		return f.mate.id
	case 1, 2:
		return f.raw[b%5-1].id
	case 3:
		return pki.Identity{0xee, b} // never added
	}
	return f.r.id // ourselves
}

// FuzzRouterHandleRPC feeds arbitrary bytes, as RPCs from an arbitrary
// sender (a mesh peer, a plain peer, a stranger, ourselves), to a subscribed
// router: it must count or handle them, never panic or hang, and keep its
// state bounded and consistent over the heartbeats that follow.
func FuzzRouterHandleRPC(f *testing.F) {
	seedCorpus(f)
	k := testKey(f, 50)
	m := WireMessage{Seqno: 1, Timestamp: synctestEpochMs, Topic: "lobby", Data: []byte("valid")}
	SignMessage(k, &m)
	f.Add(AppendRPC(nil, &RPC{Subs: []SubOpt{{true, "lobby"}}, Msgs: []WireMessage{m}, Graft: []string{"lobby"}}))
	f.Add(AppendRPC(nil, &RPC{IHave: []IHave{{"lobby", []MsgID{m.ID()}}}, IWant: []MsgID{m.ID()}, Prune: []Prune{{"lobby", 1}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		synctest.Test(t, func(t *testing.T) {
			rig := newFuzzRig(t)
			for i := 0; i < 5; i++ {
				rig.r.r.HandleRPC(rig.sender(byte(i)), b)
				synctest.Wait()
				if err := checkRouter(rig.r.r); err != nil {
					t.Fatalf("after the RPC from sender %d: %v", i, err)
				}
			}
			time.Sleep(2 * time.Second) // two heartbeats over whatever it left behind
			if err := checkRouter(rig.r.r); err != nil {
				t.Fatalf("after heartbeats: %v", err)
			}
			if st := rig.r.r.Stats(); st.RPCsReceived < 5 {
				t.Fatalf("RPCs not processed: %+v", st)
			}
		})
	})
}

// fuzzReader hands out the fuzzer's bytes; past the end it yields zeros.
type fuzzReader struct{ b []byte }

func (r *fuzzReader) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *fuzzReader) u16() int { return int(r.byte())<<8 | int(r.byte()) }

// topic is one of a few known topics, or a made-up one.
func (r *fuzzReader) topic() string {
	switch v := r.byte(); v % 4 {
	case 0, 1:
		return "lobby"
	case 2:
		return "other"
	default:
		return fmt.Sprintf("t%d", v)
	}
}

// FuzzRouterRPCs drives the router with well-formed RPCs built from the
// fuzzer's bytes, so that every handler runs past the decoder: signed and
// forged messages of a few publishers with publish times around now,
// subscriptions, IHAVE, IWANT, GRAFT, PRUNE, IDONTWANT and relay signals,
// from any of the senders, with time passing in between. The router must
// not panic, and its state must stay bounded and consistent.
func FuzzRouterRPCs(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 1, 0, 5, 0, 0, 2, 0, 4, 0, 0, 3, 1, 0, 3, 0, 7, 0, 1, 9, 0, 20})
	f.Add([]byte{1, 0, 0, 1, 9, 9, 1, 2, 0, 0, 1, 9, 9, 1, 3, 2, 0, 1, 6, 0, 0, 200, 8, 3, 8, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 512 {
			return // each op signs: keep one input quick
		}
		synctest.Test(t, func(t *testing.T) {
			rig := newFuzzRig(t)
			r := &fuzzReader{b: b}
			var ids []MsgID // IDs of messages built so far, for IHAVE, IWANT, IDONTWANT
			anyID := func() MsgID {
				if v := r.byte(); len(ids) > 0 && v%4 != 0 {
					return ids[int(v)%len(ids)]
				}
				return MakeMsgID(rig.keys[r.byte()%4].Identity(), uint64(r.byte()))
			}
			for ops := 0; len(r.b) > 0 && ops < 64; ops++ {
				from := rig.sender(r.byte())
				var rpc RPC
				switch op := r.byte() % 9; op {
				case 0:
					rpc.Subs = []SubOpt{{Subscribe: r.byte()%3 != 0, Topic: r.topic()}}
				case 1:
					k := rig.keys[r.byte()%4]
					// Publish times from 3 minutes ago to 10 s ahead.
					at := time.Now().Add(time.Duration(int(r.byte())-230) * time.Second)
					m := WireMessage{Seqno: uint64(r.u16()), Timestamp: unixMilli(at), Topic: r.topic(), Data: []byte{r.byte()}}
					SignMessage(k, &m)
					if v := r.byte(); v%5 == 0 {
						m.Data[0] ^= 1 // forged
					} else if v%5 == 1 {
						m.Sig[0] ^= 1
					}
					ids = append(ids, m.ID())
					rpc.Msgs = []WireMessage{m}
				case 2:
					n := int(r.byte()%8) + 1
					ih := IHave{Topic: r.topic()}
					for i := 0; i < n; i++ {
						ih.IDs = append(ih.IDs, anyID())
					}
					rpc.IHave = []IHave{ih}
				case 3:
					for i := int(r.byte()%8) + 1; i > 0; i-- {
						rpc.IWant = append(rpc.IWant, anyID())
					}
				case 4:
					rpc.Graft = []string{r.topic()}
				case 5:
					rpc.Prune = []Prune{{Topic: r.topic(), Backoff: uint32(r.byte())}}
				case 6:
					for i := int(r.byte()%8) + 1; i > 0; i-- {
						rpc.IDontWant = append(rpc.IDontWant, anyID())
					}
				case 7:
					target := rig.r.id
					if v := r.byte(); v%3 == 1 {
						target = rig.mate.id
					} else if v%3 == 2 {
						target = pki.Identity{0xdd, v}
					}
					at := time.Now().Add(time.Duration(int(r.byte())-200) * 200 * time.Millisecond)
					s := RelaySignal{Target: target, Nonce: uint64(r.byte()), Timestamp: unixMilli(at), Hops: r.byte() % 10, Payload: []byte{r.byte()}}
					SignRelaySignal(rig.keys[r.byte()%4], &s)
					if r.byte()%4 == 0 {
						s.Payload[0] ^= 1
					}
					rpc.Relay = []RelaySignal{s}
				case 8:
					time.Sleep(time.Duration(r.u16()) * time.Millisecond)
					continue
				}
				rig.r.r.HandleRPC(from, AppendRPC(nil, &rpc))
				synctest.Wait()
				if err := checkRouter(rig.r.r); err != nil {
					t.Fatalf("after op %d (%+v): %v", ops, rpc, err)
				}
			}
			time.Sleep(3 * time.Second)
			if err := checkRouter(rig.r.r); err != nil {
				t.Fatalf("after heartbeats: %v", err)
			}
		})
	})
}

// TestRouterStateBoundedUnderFlood: one peer announces MaxTopicsPerPeer+
// subscriptions, IDONTWANT beyond its bound and IHAVE beyond its budget,
// and strangers send RPCs: every table stays within its bound and the
// excess is counted.
func TestRouterStateBoundedUnderFlood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxTopicsPerPeer: 50, MaxTopics: 80, MaxIDontWantPeer: 100}
		net, nodes := line(t, 1, cfg)
		defer closeAll(nodes)
		r := nodes[0].r
		r.Subscribe("lobby")
		rng := rand.New(rand.NewPCG(2, 2))
		a := net.addNode(t, 80, netip.MustParseAddr("198.51.100.8"), rng, nil)
		a.raw = func(pki.Identity, []byte) {}
		c := net.addNode(t, 81, netip.MustParseAddr("198.51.100.9"), rng, nil)
		c.raw = func(pki.Identity, []byte) {}
		net.connect(a, nodes[0])
		net.connect(c, nodes[0])
		subs := func(from int) (s []SubOpt) {
			for i := from; i < from+200; i++ {
				s = append(s, SubOpt{Subscribe: true, Topic: fmt.Sprintf("topic-%d", i)})
			}
			return s
		}
		r.HandleRPC(a.id, AppendRPC(nil, &RPC{Subs: subs(0)}))
		r.HandleRPC(c.id, AppendRPC(nil, &RPC{Subs: subs(1000)}))
		var dw []MsgID
		for i := 0; i < 500; i++ {
			var id MsgID
			binary.BigEndian.PutUint64(id[:], uint64(i))
			dw = append(dw, id)
		}
		r.HandleRPC(a.id, AppendRPC(nil, &RPC{IDontWant: dw}))
		for i := 0; i < 100; i++ {
			r.HandleRPC(pki.Identity{0xaa, byte(i)}, []byte{wireVersion})
		}
		synctest.Wait()
		if err := checkRouter(r); err != nil {
			t.Fatal(err)
		}
		st := r.Stats()
		var topics, peerTopics int
		r.do(func() { topics, peerTopics = len(r.topics), len(r.peers[a.id].topics) })
		if topics != 80 || peerTopics != 50 {
			t.Errorf("%d topics known, %d for one peer; want the bounds 80 and 50", topics, peerTopics)
		}
		if st.DropPeerTopicLimit == 0 || st.DropTopicLimit == 0 || st.DropIDontWantEvicted != 400 || st.DropUnknownPeer != 100 {
			t.Errorf("excess not counted: peer-topic %d topic %d idontwant-evicted %d unknown %d",
				st.DropPeerTopicLimit, st.DropTopicLimit, st.DropIDontWantEvicted, st.DropUnknownPeer)
		}
	})
}
