package nodesim

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/dht/simnet"
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/pki"
)

// The two topics: every node subscribes to TopicAll, one node in
// Config.SubsetEvery to TopicSubset as well.
const (
	TopicAll    = "all"
	TopicSubset = "subset"
)

// Config describes a simulated network of whole nodes. Zero fields take the
// defaults written on them.
type Config struct {
	// N is the number of nodes.
	N int
	// Seed makes identities, regions, addresses and latencies repeat.
	// Default 1.
	Seed uint64
	// Net is the latency model (dht/simnet); its Seed is Seed. Default loss
	// 0.1%, as the DHT simulation.
	Net simnet.NetConfig
	// PoWBits of the identities and the DHT. Default 4 (as the DHT
	// simulation; the check itself is tested with the real difficulty).
	PoWBits int
	// DHT and Gossip configure every node's DHT and router; zero values are
	// the node's defaults.
	DHT    dht.Config
	Gossip gossipsub.Config
	// MaxPeers caps each node's connections (overlay.Config.MaxPeers).
	// Default DefaultMaxPeers.
	MaxPeers int
	// IdleEvict closes unused connections that share no topic with us
	// (overlay.Config.IdleEvict). Default DefaultIdleEvict.
	IdleEvict time.Duration
	// ConnTimeout is how long the peers of a node that left keep its dead
	// connection (the overlay's QUIC idle timeout). Default
	// DefaultConnTimeout.
	ConnTimeout time.Duration
	// SubsetEvery: one node in SubsetEvery also subscribes to TopicSubset.
	// Default 10.
	SubsetEvery int
	// JoinParallel is how many nodes bootstrap at once (simnet). Default
	// N/20: twenty waves, each bootstrapping from nodes already joined.
	JoinParallel int
}

// The overlay's defaults the simulation models. layering keeps this
// package from importing overlay and peers, so they are copies:
// TestDefaultsAreTheNodes (an external test, which may import them) fails
// when either side changes alone.
const (
	DefaultMaxPeers    = 1000             // peers.DefaultMaxPeers
	DefaultIdleEvict   = 10 * time.Minute // peers.DefaultIdleEvict
	DefaultConnTimeout = 30 * time.Second // overlay.DefaultIdleTimeout
)

func (c *Config) fill() {
	if c.Seed == 0 {
		c.Seed = 1
	}
	c.Net.Seed = c.Seed
	if c.Net.Loss == 0 {
		c.Net.Loss = 0.001
	}
	if c.PoWBits == 0 {
		c.PoWBits = 4
	}
	if c.DHT.PoWBits == 0 {
		c.DHT.PoWBits = c.PoWBits
	}
	if c.MaxPeers == 0 {
		c.MaxPeers = DefaultMaxPeers
	}
	if c.IdleEvict == 0 {
		c.IdleEvict = DefaultIdleEvict
	}
	if c.ConnTimeout == 0 {
		c.ConnTimeout = DefaultConnTimeout
	}
	if c.SubsetEvery == 0 {
		c.SubsetEvery = 10
	}
	if c.JoinParallel == 0 {
		c.JoinParallel = max(c.N/20, 1)
	}
}

// idleSweep is how often idle connections are looked for (overlay's
// idleSweep).
const idleSweep = 15 * time.Second

// Sim is a running simulation. It is the simnet.Layer of its cluster. Create
// it with New inside a synctest bubble and Close it there.
type Sim struct {
	cfg Config
	Net *simnet.Network
	Cl  *simnet.Cluster

	// Counters of traffic the DHT's network does not count.
	GossipRPCs  atomic.Int64 // gossip RPCs sent (each also gets an empty answer)
	GossipBytes atomic.Int64
	Handshakes  atomic.Int64 // connections dialed
	EvictedLRU  atomic.Int64 // connections closed by the MaxPeers cap
	EvictedIdle atomic.Int64 // connections closed by IdleEvict
	TimedOut    atomic.Int64 // dead connections to departed nodes dropped

	stop context.CancelFunc
	wg   sync.WaitGroup // the idle sweeper, subscription readers, departure timers

	mu      sync.Mutex // guards all following fields and every node's conns and lru
	rng     *rand.Rand
	nodes   map[pki.Identity]*node // live nodes
	members []*member              // every node ever created, by index
	msgs    []*published           // every message published through Publish

	recMu sync.Mutex // guards every published.recv
}

// member is what the figures need to know about a node, kept after it left.
type member struct {
	idx      int
	subset   bool
	joinedAt time.Time // when it subscribed; zero before
	leftAt   time.Time // zero while present
}

type node struct {
	*member
	id     pki.Identity
	ep     *simnet.Endpoint
	region int
	r      *gossipsub.Router

	// hostMu serializes this node's router's AddPeer and RemovePeer calls
	// so that the last one made matches the peer table (see reconcile).
	hostMu sync.Mutex

	// Guarded by Sim.mu.
	alive bool
	conns map[pki.Identity]*conn
	lru   list.List // of *conn, most recently used first
}

// conn is one end of a connection in a node's peer table.
type conn struct {
	peer     pki.Identity
	addr     netip.Addr // the peer's IP (GossipSub's P6)
	outbound bool
	lastUsed time.Time
	el       *list.Element
}

// published is one message and who received it.
type published struct {
	topic string
	from  int
	at    time.Time
	recv  []receipt
}

type receipt struct {
	idx int32
	lat time.Duration
}

var errNotConnected = errors.New("nodesim: no connection to peer")

// New creates cfg.N nodes (not yet joined) and starts the idle sweeper.
func New(cfg Config) (*Sim, error) {
	cfg.fill()
	s := &Sim{cfg: cfg, nodes: make(map[pki.Identity]*node), rng: rand.New(rand.NewPCG(cfg.Seed, 77))}
	cl, err := simnet.NewCluster(simnet.ClusterConfig{N: cfg.N, Net: cfg.Net, DHT: cfg.DHT, PoWBits: cfg.PoWBits, JoinParallel: cfg.JoinParallel, Layer: s})
	if err != nil {
		return nil, err
	}
	s.Cl, s.Net = cl, cl.Net
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	s.wg.Add(1)
	go s.sweep(ctx)
	return s, nil
}

// Close closes every node and waits for the simulation's goroutines.
func (s *Sim) Close() {
	s.stop()
	s.Cl.Close()
	s.mu.Lock()
	var rs []*gossipsub.Router
	for _, n := range s.nodes {
		rs = append(rs, n.r)
	}
	s.mu.Unlock()
	for _, r := range rs {
		r.Close()
	}
	s.wg.Wait()
}

// Attach implements simnet.Layer: the node's router, its peer table, and
// the transport and inbound handler that keep the table.
func (s *Sim) Attach(kp *pki.Keypair, ep *simnet.Endpoint) (dht.Transport, func(simnet.Handler) simnet.Handler) {
	s.mu.Lock()
	m := &member{idx: len(s.members), subset: len(s.members)%s.cfg.SubsetEvery == 0}
	s.members = append(s.members, m)
	n := &node{member: m, id: kp.Identity(), ep: ep, region: ep.Region(), alive: true, conns: make(map[pki.Identity]*conn)}
	s.nodes[n.id] = n
	s.mu.Unlock()
	r, err := gossipsub.New(s.cfg.Gossip, kp, sender{s, n}, nil)
	if err != nil {
		// The configuration is validated before the first node; a
		// router that cannot start is a bug in the simulation.
		panic(fmt.Sprintf("nodesim: gossipsub.New: %v", err))
	}
	n.r = r
	wrap := func(h simnet.Handler) simnet.Handler {
		return func(from pki.Identity, fromAddr netip.AddrPort, req []byte) ([]byte, error) {
			s.touch(n, from)
			return h(from, fromAddr, req)
		}
	}
	return transport{s, n}, wrap
}

// Joined implements simnet.Layer: the node subscribes.
func (s *Sim) Joined(dn *simnet.Node) {
	s.mu.Lock()
	n := s.nodes[dn.KP.Identity()]
	s.mu.Unlock()
	if n == nil {
		return // left again before it joined
	}
	topics := []string{TopicAll}
	if n.subset {
		topics = append(topics, TopicSubset)
	}
	for _, t := range topics {
		sub, err := n.r.Subscribe(t)
		if err != nil {
			return // closed meanwhile
		}
		s.wg.Add(1)
		go s.read(sub, n.idx)
	}
	s.mu.Lock()
	n.joinedAt = time.Now()
	s.mu.Unlock()
}

// Left implements simnet.Layer: the node is gone at once; its peers keep
// their dead connections for ConnTimeout.
func (s *Sim) Left(dn *simnet.Node) {
	s.mu.Lock()
	n := s.nodes[dn.KP.Identity()]
	if n == nil {
		s.mu.Unlock()
		return
	}
	delete(s.nodes, n.id)
	n.alive = false
	n.leftAt = time.Now()
	var peers []pki.Identity
	for id := range n.conns {
		peers = append(peers, id)
	}
	s.mu.Unlock()
	n.r.Close()
	s.wg.Add(1)
	time.AfterFunc(s.cfg.ConnTimeout, func() {
		defer s.wg.Done()
		for _, id := range peers {
			s.mu.Lock()
			p := s.nodes[id]
			gone := p != nil && p.conns[n.id] != nil
			if gone {
				s.removeLocked(p, n.id)
			}
			s.mu.Unlock()
			if gone {
				s.TimedOut.Add(1)
				s.reconcile(p, n.id)
			}
		}
	})
}

// ---- the peer table ----

// touch marks n's connection to peer used and reports whether it exists.
func (s *Sim) touch(n *node, peer pki.Identity) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.touchLocked(n, peer) != nil
}

func (s *Sim) touchLocked(n *node, peer pki.Identity) *conn {
	c := n.conns[peer]
	if c != nil {
		c.lastUsed = time.Now()
		n.lru.MoveToFront(c.el)
	}
	return c
}

// removeLocked drops n's end of its connection to peer.
func (s *Sim) removeLocked(n *node, peer pki.Identity) {
	if c := n.conns[peer]; c != nil {
		n.lru.Remove(c.el)
		delete(n.conns, peer)
	}
}

// addLocked adds n's end of a connection, evicting the least recently used
// connection when n is at MaxPeers. It returns the evicted peer, if any.
func (s *Sim) addLocked(n *node, peer *node, outbound bool) (evicted pki.Identity, ok bool) {
	if len(n.conns) >= s.cfg.MaxPeers {
		old := n.lru.Back().Value.(*conn)
		s.removeLocked(n, old.peer)
		evicted, ok = old.peer, true
	}
	c := &conn{peer: peer.id, addr: peer.ep.Addr().Addr(), outbound: outbound, lastUsed: time.Now()}
	c.el = n.lru.PushFront(c)
	n.conns[peer.id] = c
	return evicted, ok
}

type pair struct {
	n    *node
	peer pki.Identity
}

// connect opens a connection from a to b (both ends), unless one exists,
// and tells both routers. It reports whether the connection is up.
func (s *Sim) connect(a, b *node) bool {
	s.mu.Lock()
	if !a.alive || !b.alive {
		s.mu.Unlock()
		return false
	}
	if s.touchLocked(a, b.id) != nil {
		s.mu.Unlock()
		return true
	}
	changed := []pair{{a, b.id}, {b, a.id}}
	for _, end := range []struct {
		n, peer  *node
		outbound bool
	}{{a, b, true}, {b, a, false}} {
		ev, ok := s.addLocked(end.n, end.peer, end.outbound)
		if !ok {
			continue
		}
		// An evicted connection closes at both ends.
		s.EvictedLRU.Add(1)
		changed = append(changed, pair{end.n, ev})
		if o := s.nodes[ev]; o != nil {
			s.removeLocked(o, end.n.id)
			changed = append(changed, pair{o, end.n.id})
		}
	}
	s.mu.Unlock()
	s.Handshakes.Add(1)
	for _, c := range changed {
		s.reconcile(c.n, c.peer)
	}
	return true
}

// disconnect closes the connection between n and peer at both ends.
func (s *Sim) disconnect(n *node, peer pki.Identity) {
	s.mu.Lock()
	s.removeLocked(n, peer)
	o := s.nodes[peer]
	if o != nil {
		s.removeLocked(o, n.id)
	}
	s.mu.Unlock()
	s.reconcile(n, peer)
	if o != nil {
		s.reconcile(o, n.id)
	}
}

// reconcile makes n's router agree with n's peer table about peer. Calls
// for one node are serialized by hostMu and each reads the table under it,
// so whichever runs last leaves the router as the table is. Holding hostMu
// across the router call cannot deadlock: the router's loop never calls
// into the simulation, and its writers (sender.Send) never take hostMu.
func (s *Sim) reconcile(n *node, peer pki.Identity) {
	n.hostMu.Lock()
	defer n.hostMu.Unlock()
	s.mu.Lock()
	alive := n.alive
	c := n.conns[peer]
	var addr netip.Addr
	outbound := false
	if c != nil {
		addr, outbound = c.addr, c.outbound
	}
	s.mu.Unlock()
	switch {
	case !alive:
	case c != nil:
		n.r.AddPeer(peer, addr, outbound)
	default:
		n.r.RemovePeer(peer)
	}
}

// sweep closes connections idle for IdleEvict, every idleSweep, except
// those to peers of a topic the node subscribes to.
func (s *Sim) sweep(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(idleSweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			nodes := make([]*node, 0, len(s.nodes))
			for _, n := range s.nodes {
				nodes = append(nodes, n)
			}
			s.mu.Unlock()
			cutoff := now.Add(-s.cfg.IdleEvict)
			for _, n := range nodes {
				s.evictIdle(n, cutoff)
			}
		}
	}
}

func (s *Sim) evictIdle(n *node, cutoff time.Time) {
	// Cheap check first: most nodes have no idle connection at all.
	s.mu.Lock()
	back := n.lru.Back()
	idle := back != nil && back.Value.(*conn).lastUsed.Before(cutoff)
	s.mu.Unlock()
	if !idle {
		return
	}
	keep := make(map[pki.Identity]bool)
	for _, t := range n.r.Topics() {
		for _, pi := range n.r.TopicPeers(t) {
			keep[pi.ID] = true
		}
	}
	var victims []pki.Identity
	s.mu.Lock()
	for e := n.lru.Back(); e != nil; e = e.Prev() {
		c := e.Value.(*conn)
		if !c.lastUsed.Before(cutoff) {
			break
		}
		if !keep[c.peer] {
			victims = append(victims, c.peer)
		}
	}
	s.mu.Unlock()
	for _, id := range victims {
		s.EvictedIdle.Add(1)
		s.disconnect(n, id)
	}
}

// ---- the wires ----

// retransmit is the extra delay of a lost packet on a QUIC connection: a
// probe timeout (RFC 9002: smoothed RTT + 4 x RTT variance + max ack delay,
// with the variance at its initial RTT/2).
func retransmit(rtt time.Duration) time.Duration { return 3*rtt + 25*time.Millisecond }

// handshakeRetransmit is the extra delay of a lost handshake packet:
// RFC 9002's initial probe timeout (3 x 333 ms).
const handshakeRetransmit = time.Second

// oneWay is one delay from a to b on an established connection.
func (s *Sim) oneWay(a, b *node, handshake bool) time.Duration {
	d, lost := s.Net.Delay(a.region, b.region)
	if lost {
		if handshake {
			d += handshakeRetransmit
		} else {
			d += retransmit(s.Net.BaseRTT(a.region, b.region))
		}
	}
	return d
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// transport is a node's dht.Transport: it dials first when there is no
// connection, then calls through simnet.
type transport struct {
	s *Sim
	n *node
}

func (t transport) Call(ctx context.Context, to dht.Contact, req []byte) ([]byte, netip.AddrPort, error) {
	s, a := t.s, t.n
	if !s.touch(a, to.Identity) {
		s.mu.Lock()
		b := s.nodes[to.Identity]
		s.mu.Unlock()
		if b != nil {
			// The QUIC handshake: one round trip before the request.
			if err := sleep(ctx, s.oneWay(a, b, true)+s.oneWay(b, a, true)); err != nil {
				return nil, netip.AddrPort{}, err
			}
			s.connect(a, b)
		}
		// No such node (it left): simnet lets the call time out.
	}
	return a.ep.Call(ctx, to, req)
}

// sender is a node's gossipsub.Sender: one RPC on the connection, answered
// empty (rpc.ProtoGossip), so Send returns after a round trip.
type sender struct {
	s *Sim
	n *node
}

func (g sender) Send(ctx context.Context, to pki.Identity, b []byte) error {
	s, a := g.s, g.n
	s.mu.Lock()
	c := s.touchLocked(a, to)
	dst := s.nodes[to]
	s.mu.Unlock()
	if c == nil {
		return errNotConnected
	}
	s.GossipRPCs.Add(1)
	s.GossipBytes.Add(int64(len(b)))
	if dst == nil {
		// The peer left and our end has not timed out: the bytes are lost.
		return nil
	}
	d := s.oneWay(a, dst, false)
	s.wg.Add(1)
	time.AfterFunc(d, func() {
		defer s.wg.Done()
		s.mu.Lock()
		ok := dst.alive && s.touchLocked(dst, a.id) != nil
		s.mu.Unlock()
		if ok {
			dst.r.HandleRPC(a.id, b)
		}
	})
	return sleep(ctx, d+s.oneWay(dst, a, false))
}

// ---- pubsub traffic ----

// read records the messages one subscription receives until it closes.
func (s *Sim) read(sub *gossipsub.Subscription, idx int) {
	defer s.wg.Done()
	for m := range sub.Messages() {
		if len(m.Data) != 8 {
			continue
		}
		i := binary.BigEndian.Uint64(m.Data)
		s.mu.Lock()
		var p *published
		if i < uint64(len(s.msgs)) {
			p = s.msgs[i]
		}
		s.mu.Unlock()
		if p == nil {
			continue
		}
		s.recMu.Lock()
		p.recv = append(p.recv, receipt{idx: int32(idx), lat: time.Since(p.at)})
		s.recMu.Unlock()
	}
}

// Publish publishes one message on topic from a random present node that
// subscribes to it. It reports false when there is none.
func (s *Sim) Publish(topic string) bool {
	s.mu.Lock()
	var cands []*node
	for _, n := range s.nodes {
		if !n.joinedAt.IsZero() && (topic == TopicAll || n.subset) {
			cands = append(cands, n)
		}
	}
	if len(cands) == 0 {
		s.mu.Unlock()
		return false
	}
	// Map order is random: sort by index so the seed decides the pick.
	slices.SortFunc(cands, func(x, y *node) int { return x.idx - y.idx })
	n := cands[s.rng.IntN(len(cands))]
	p := &published{topic: topic, from: n.idx, at: time.Now()}
	i := len(s.msgs)
	s.msgs = append(s.msgs, p)
	s.mu.Unlock()
	var data [8]byte
	binary.BigEndian.PutUint64(data[:], uint64(i))
	return n.r.Publish(topic, data[:]) == nil
}

// PublishUntil publishes one message on each topic every interval until
// done is closed.
func (s *Sim) PublishUntil(done <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			s.Publish(TopicAll)
			s.Publish(TopicSubset)
		}
	}
}
