package gossipsub

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

// simNet is an in-memory network: each link has a latency from the nodes'
// positions on a plane and a bandwidth that delays large RPCs. It runs in a
// testing/synctest bubble, so time is virtual.
type simNet struct {
	mu        sync.Mutex
	nodes     map[pki.Identity]*simNode
	bandwidth float64 // bytes per second per link
	bytes     atomic.Uint64
	rpcs      atomic.Uint64
}

type simNode struct {
	id   pki.Identity
	key  *pki.Keypair
	addr netip.Addr
	x, y float64
	r    *Router                           // nil for attackers
	raw  func(from pki.Identity, b []byte) // attackers' receive hook
	conn map[pki.Identity]bool             // neighbours
	busy time.Time                         // uplink busy until (guarded by simNet.mu)
}

func newSimNet() *simNet {
	return &simNet{nodes: make(map[pki.Identity]*simNode), bandwidth: 20e6 / 8}
}

// Each node has a 20 Mbit/s uplink. latency is 5 ms plus 1 ms per unit of distance (the plane is 150 wide).
func (n *simNet) latency(a, b *simNode) time.Duration {
	d := math.Hypot(a.x-b.x, a.y-b.y)
	return 5*time.Millisecond + time.Duration(d*float64(time.Millisecond))
}

type simSender struct {
	net  *simNet
	from pki.Identity
}

func (s simSender) Send(ctx context.Context, to pki.Identity, b []byte) error {
	n := s.net
	n.mu.Lock()
	src, dst := n.nodes[s.from], n.nodes[to]
	linked := dst != nil && src.conn[to]
	n.mu.Unlock()
	if !linked {
		return fmt.Errorf("no link to %s", to.Short())
	}
	n.bytes.Add(uint64(len(b)))
	n.rpcs.Add(1)
	// The sender's uplink is shared by all its links: transmissions queue
	// behind each other, which is what gives IDONTWANT time to act.
	now := time.Now()
	n.mu.Lock()
	start := now
	if src.busy.After(now) {
		start = src.busy
	}
	src.busy = start.Add(time.Duration(float64(len(b)) / n.bandwidth * float64(time.Second)))
	done := src.busy
	n.mu.Unlock()
	if d := done.Sub(now); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	time.AfterFunc(n.latency(src, dst), func() {
		if dst.r != nil {
			dst.r.HandleRPC(s.from, b)
		} else if dst.raw != nil {
			dst.raw(s.from, b)
		}
	})
	return nil
}

// addNode creates a node; honest nodes get a router with cfg.
func (n *simNet) addNode(t testing.TB, i int, addr netip.Addr, rng *rand.Rand, cfg *Config) *simNode {
	k := testKey(t, i)
	nd := &simNode{id: k.Identity(), key: k, addr: addr, x: rng.Float64() * 150, y: rng.Float64() * 150, conn: make(map[pki.Identity]bool)}
	n.mu.Lock()
	n.nodes[nd.id] = nd
	n.mu.Unlock()
	if cfg != nil {
		r, err := New(*cfg, k, simSender{n, nd.id}, nil)
		if err != nil {
			t.Fatal(err)
		}
		nd.r = r
	}
	return nd
}

func (n *simNet) connect(a, b *simNode) {
	n.mu.Lock()
	if a == b || a.conn[b.id] {
		n.mu.Unlock()
		return
	}
	a.conn[b.id], b.conn[a.id] = true, true
	n.mu.Unlock()
	if a.r != nil {
		a.r.AddPeer(b.id, b.addr, true)
	}
	if b.r != nil {
		b.r.AddPeer(a.id, a.addr, false)
	}
}

// disconnect cuts every link of a and tells the routers on both ends.
func (n *simNet) disconnect(a *simNode) {
	n.mu.Lock()
	var peers []*simNode
	for id := range a.conn {
		peers = append(peers, n.nodes[id])
		delete(n.nodes[id].conn, a.id)
	}
	a.conn = make(map[pki.Identity]bool)
	n.mu.Unlock()
	for _, b := range peers {
		if a.r != nil {
			a.r.RemovePeer(b.id)
		}
		if b.r != nil {
			b.r.RemovePeer(a.id)
		}
	}
}

func (n *simNet) send(from, to *simNode, rpc *RPC) {
	simSender{n, from.id}.Send(context.Background(), to.id, AppendRPC(nil, rpc))
}

// honestAddr gives node i its own /16.
func honestAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(1 + i/250), byte(i % 250), 7, 1})
}

type attack int

const (
	attackNone attack = iota
	attackInvalidSig
	attackGossipSpam
	attackSybils
)

type simParams struct {
	nodes     int
	degree    int // outbound connections per honest node
	msgs      int
	size      int
	idontwant bool
	attack    attack
	churn     int  // honest nodes that leave when publishing starts
	subnet    bool // every honest node in one public /16 (198.18.0.0/16) instead of its own
	whitelist bool // with subnet: that /16 in Score.IPColocationWhitelist
	seed      uint64
}

type simResult struct {
	deliveryRatio     float64
	p50, p99          time.Duration
	dupsPerDelivery   float64
	bytesPerDelivery  float64
	deliveries        int
	attackers         int
	attackersGraylist int           // attackers below the graylist threshold at every honest neighbour
	graylistAfter     time.Duration // time from attack start until the last attacker was graylisted everywhere
	attackersExcluded int           // attackers below the publish threshold (no mesh, gossip or flood) at every honest neighbour
	excludedAfter     time.Duration // time from attack start until the last attacker was excluded everywhere
	stats             Stats         // summed over honest nodes
	meshMin, meshMax  int           // mesh sizes when publishing starts
	meshAvg           float64
}

func (r simResult) String() string {
	s := fmt.Sprintf("mesh %d..%d (avg %.1f) delivery %.2f%% p50 %v p99 %v dups/delivery %.2f bytes/delivery %.0f",
		r.meshMin, r.meshMax, r.meshAvg, 100*r.deliveryRatio, r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond), r.dupsPerDelivery, r.bytesPerDelivery)
	if r.attackers > 0 {
		s += fmt.Sprintf(" attackers excluded %d/%d after %v, graylisted %d/%d after %v",
			r.attackersExcluded, r.attackers, r.excludedAfter, r.attackersGraylist, r.attackers, r.graylistAfter)
	}
	return s
}

func sumStats(a *Stats, b Stats) {
	av := func(x *uint64, y uint64) { *x += y }
	av(&a.Duplicates, b.Duplicates)
	av(&a.Delivered, b.Delivered)
	av(&a.IDontWantSent, b.IDontWantSent)
	av(&a.IDontWantHonored, b.IDontWantHonored)
	av(&a.DropInvalidSignature, b.DropInvalidSignature)
	av(&a.DropGraylisted, b.DropGraylisted)
	av(&a.DropIHaveExcess, b.DropIHaveExcess)
	av(&a.DropIWantExcess, b.DropIWantExcess)
	av(&a.BrokenPromises, b.BrokenPromises)
	av(&a.DropSendQueue, b.DropSendQueue)
	av(&a.DropRecvQueue, b.DropRecvQueue)
	av(&a.DropRateLimited, b.DropRateLimited)
	av(&a.IWantServed, b.IWantServed)
}

const simTopic = "sim"

// runSim builds the network, lets meshes form, starts the attack, publishes
// p.msgs messages from random honest nodes and measures. It must run inside
// a synctest bubble.
func runSim(t testing.TB, p simParams) simResult {
	rng := rand.New(rand.NewPCG(p.seed, 0x9055))
	net := newSimNet()
	cfg := Config{DisableIDontWant: !p.idontwant}
	addr := honestAddr
	if p.subnet {
		addr = func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(1 + i%250)}) }
		if p.whitelist {
			cfg.Score = DefaultScoreParams()
			cfg.Score.IPColocationWhitelist = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}
		}
	}
	honest := make([]*simNode, p.nodes)
	for i := range honest {
		honest[i] = net.addNode(t, i, addr(i), rng, &cfg)
	}
	for _, a := range honest {
		for k := 0; k < p.degree; k++ {
			net.connect(a, honest[rng.IntN(len(honest))])
		}
	}

	// Receivers record when each message index arrives.
	type rec struct {
		pub  time.Time
		from int
		got  map[int]time.Time
	}
	var mu sync.Mutex
	recs := make([]*rec, p.msgs)
	var wg sync.WaitGroup
	for i, nd := range honest {
		sub, err := nd.r.Subscribe(simTopic)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range sub.Messages() {
				idx := int(binary.BigEndian.Uint64(m.Data))
				mu.Lock()
				if idx < len(recs) && recs[idx] != nil && honest[recs[idx].from].id == m.From {
					if _, dup := recs[idx].got[i]; !dup {
						recs[idx].got[i] = time.Now()
					}
				}
				mu.Unlock()
			}
		}()
	}

	// Attackers.
	var attackers []*simNode
	stop := make(chan struct{})
	var attackWG sync.WaitGroup
	every := func(d time.Duration, f func()) {
		attackWG.Add(1)
		go func() {
			defer attackWG.Done()
			tk := time.NewTicker(d)
			defer tk.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tk.C:
					f()
				}
			}
		}()
	}
	subGraft := &RPC{Subs: []SubOpt{{true, simTopic}}, Graft: []string{simTopic}}
	switch p.attack {
	case attackInvalidSig, attackGossipSpam:
		a := net.addNode(t, 100000+int(p.attack), netip.AddrFrom4([4]byte{203, 0, 113, 9}), rng, nil)
		a.raw = func(pki.Identity, []byte) {}
		attackers = append(attackers, a)
		victims := rng.Perm(len(honest))[:30]
		for _, v := range victims {
			net.connect(a, honest[v])
			net.send(a, honest[v], subGraft)
		}
	case attackSybils:
		for s := 0; s < 20; s++ {
			a := net.addNode(t, 200000+s, netip.AddrFrom4([4]byte{198, 51, byte(s), byte(1 + s)}), rng, nil)
			a.raw = func(pki.Identity, []byte) {} // black hole: never forwards
			attackers = append(attackers, a)
			for _, v := range honest {
				net.connect(a, v)
				net.send(a, v, subGraft)
			}
		}
	}

	// Let meshes form.
	time.Sleep(5 * time.Second)
	attackStart := time.Now()
	gone := make(map[int]bool)
	for _, i := range rng.Perm(len(honest))[:p.churn] {
		gone[i] = true
		net.disconnect(honest[i])
	}
	meshMin, meshMax, meshSum := math.MaxInt, 0, 0
	for i, nd := range honest {
		if gone[i] {
			continue
		}
		n := 0
		for _, pi := range nd.r.TopicPeers(simTopic) {
			if pi.InMesh {
				n++
			}
		}
		meshMin, meshMax, meshSum = min(meshMin, n), max(meshMax, n), meshSum+n
	}
	switch p.attack {
	case attackInvalidSig:
		a := attackers[0]
		seq := uint64(0)
		every(20*time.Millisecond, func() {
			for id := range a.conn {
				seq++
				m := WireMessage{From: honest[int(seq)%len(honest)].id, Seqno: 1<<62 + seq, Timestamp: nowMs(), Topic: simTopic, Data: make([]byte, 64)}
				m.Sig[0] = 1 // not a signature
				net.send(a, net.nodes[id], &RPC{Msgs: []WireMessage{m}})
			}
		})
	case attackGossipSpam:
		a := attackers[0]
		seq := uint64(0)
		every(50*time.Millisecond, func() {
			for id := range a.conn {
				ids := make([]MsgID, 100)
				for i := range ids {
					seq++
					ids[i] = MakeMsgID(pki.Identity{0xee, byte(seq)}, seq)
				}
				net.send(a, net.nodes[id], &RPC{IHave: []IHave{{Topic: simTopic, IDs: ids}}, IWant: ids})
			}
		})
	case attackSybils:
		for _, a := range attackers {
			every(time.Second, func() {
				for id := range a.conn {
					net.send(a, net.nodes[id], &RPC{Graft: []string{simTopic}})
				}
			})
		}
	}

	// Watch attacker scores every 100 ms until all are graylisted at every
	// honest neighbour (and note when they were first all below the
	// publish threshold: out of meshes, gossip and flood publishing).
	graylisted := make(map[pki.Identity]time.Duration)
	excluded := make(map[pki.Identity]time.Duration)
	checkAttackers := func() {
		for _, a := range attackers {
			if _, done := graylisted[a.id]; done {
				continue
			}
			below := func(th float64) bool {
				for id := range a.conn {
					if s, ok := net.nodes[id].r.Score(a.id); !ok || s >= th {
						return false
					}
				}
				return true
			}
			if _, done := excluded[a.id]; !done && below(DefaultScoreParams().PublishThreshold) {
				excluded[a.id] = time.Since(attackStart)
			}
			if below(DefaultScoreParams().GraylistThreshold) {
				graylisted[a.id] = time.Since(attackStart)
			}
		}
	}

	// Publish from random honest nodes, 20 per second.
	for i := 0; i < p.msgs; i++ {
		from := rng.IntN(len(honest))
		for gone[from] {
			from = rng.IntN(len(honest))
		}
		data := make([]byte, max(p.size, 8))
		binary.BigEndian.PutUint64(data, uint64(i))
		mu.Lock()
		recs[i] = &rec{pub: time.Now(), from: from, got: make(map[int]time.Time)}
		mu.Unlock()
		if err := honest[from].r.Publish(simTopic, data); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if i%2 == 0 && len(attackers) > 0 {
			checkAttackers()
		}
	}
	for i := 0; i < 50 && len(graylisted) < len(attackers); i++ {
		time.Sleep(100 * time.Millisecond)
		checkAttackers()
	}
	// Let the last messages and gossip settle.
	time.Sleep(5 * time.Second)
	close(stop)
	attackWG.Wait()

	alive := len(honest) - len(gone)
	res := simResult{meshMin: meshMin, meshMax: meshMax, meshAvg: float64(meshSum) / float64(alive)}
	var lat []time.Duration
	mu.Lock()
	for _, rc := range recs {
		for i, at := range rc.got {
			if i != rc.from && !gone[i] {
				lat = append(lat, at.Sub(rc.pub))
			}
		}
	}
	mu.Unlock()
	for _, nd := range honest {
		sumStats(&res.stats, nd.r.Stats())
	}
	res.deliveries = len(lat)
	res.deliveryRatio = float64(len(lat)) / float64(p.msgs*(alive-1))
	slices.Sort(lat)
	if len(lat) > 0 {
		res.p50 = lat[len(lat)/2]
		res.p99 = lat[len(lat)*99/100]
		res.dupsPerDelivery = float64(res.stats.Duplicates) / float64(len(lat))
		res.bytesPerDelivery = float64(net.bytes.Load()) / float64(len(lat))
	}
	res.attackers = len(attackers)
	res.attackersGraylist = len(graylisted)
	for _, d := range graylisted {
		res.graylistAfter = max(res.graylistAfter, d)
	}
	res.attackersExcluded = len(excluded)
	for _, d := range excluded {
		res.excludedAfter = max(res.excludedAfter, d)
	}
	for _, nd := range honest {
		nd.r.Close()
	}
	wg.Wait()
	return res
}
