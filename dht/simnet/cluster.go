package simnet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/pki"
)

// ClusterConfig describes a simulated DHT network.
type ClusterConfig struct {
	N   int       // nodes
	Net NetConfig // latency model
	DHT dht.Config
	// PoWBits is the identities' proof of work; DHT.PoWBits should match.
	PoWBits int
	// JoinParallel is how many nodes bootstrap at once. Default 50.
	JoinParallel int
	// Layer, when set, sits between every node's DHT and the network and
	// hears of nodes joining and leaving: a simulation of more than the
	// DHT (internal/nodesim) adds its own per-node state there. Nil: the
	// DHT talks to its Endpoint directly.
	Layer Layer
}

// Layer is the hook of ClusterConfig.Layer.
type Layer interface {
	// Attach is called for each new node before its DHT exists. It returns
	// the transport the DHT is to use and a wrapper of the node's inbound
	// request handler.
	Attach(kp *pki.Keypair, ep *Endpoint) (dht.Transport, func(Handler) Handler)
	// Joined is called once a node has bootstrapped and published.
	Joined(n *Node)
	// Left is called once a node has left (Replace), after its DHT closed.
	Left(n *Node)
}

// Node is one simulated node.
type Node struct {
	KP  *pki.Keypair
	DHT *dht.DHT
	EP  *Endpoint
}

// Cluster is a set of nodes on one Network.
type Cluster struct {
	cfg ClusterConfig
	Net *Network

	mu    sync.Mutex // guards all following fields
	rng   *rand.Rand
	nodes []*Node // live nodes
	ready map[pki.Identity]bool
}

// NewCluster creates cfg.N nodes (not yet bootstrapped).
func NewCluster(cfg ClusterConfig) (*Cluster, error) {
	if cfg.JoinParallel == 0 {
		cfg.JoinParallel = 50
	}
	if cfg.DHT.Identities == nil {
		// One process, many nodes: one memo of checked identities (each
		// check is a point decompression) instead of one per node.
		cfg.DHT.Identities = dht.NewIdentityCache(2*cfg.N + dht.DefaultIdentityCacheSize)
	}
	c := &Cluster{cfg: cfg, Net: NewNetwork(cfg.Net), ready: make(map[pki.Identity]bool)}
	s := c.Net.Config().Seed
	c.rng = rand.New(rand.NewPCG(s+1, s+2))
	for i := 0; i < cfg.N; i++ {
		if _, err := c.newNode(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) newNode() (*Node, error) {
	c.mu.Lock()
	seed := make([]byte, 32)
	for i := range seed {
		seed[i] = byte(c.rng.Uint32())
	}
	region := c.rng.IntN(c.Net.Config().Regions)
	c.mu.Unlock()
	kp, err := pki.NewKeypair(seed, 0)
	if err != nil {
		return nil, err
	}
	nonce := uint64(0)
	for pki.PoWBits(kp.Identity(), nonce) < c.cfg.PoWBits {
		nonce++
	}
	kp, _ = pki.NewKeypair(seed, nonce)
	ep := c.Net.Attach(kp.Identity(), region)
	var tr dht.Transport = ep
	wrap := func(h Handler) Handler { return h }
	if c.cfg.Layer != nil {
		tr, wrap = c.cfg.Layer.Attach(kp, ep)
	}
	d, err := dht.New(kp, tr, []netip.AddrPort{ep.Addr()}, c.cfg.DHT)
	if err != nil {
		return nil, err
	}
	ep.SetHandler(wrap(func(from pki.Identity, fromAddr netip.AddrPort, req []byte) ([]byte, error) {
		return d.HandleRequest(from, fromAddr, req)
	}))
	n := &Node{KP: kp, DHT: d, EP: ep}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return n, nil
}

// Nodes returns the live nodes.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// Bootstrap joins every node: the first bootstraps alone, each later one
// from a random node that already joined, JoinParallel at a time; then every
// node publishes its record.
func (c *Cluster) Bootstrap(ctx context.Context) error {
	nodes := c.Nodes()
	if len(nodes) == 0 {
		return nil
	}
	joined := []*Node{nodes[0]}
	for i := 1; i < len(nodes); {
		end := min(i+c.cfg.JoinParallel, len(nodes))
		var wg sync.WaitGroup
		errs := make([]error, end-i)
		for j := i; j < end; j++ {
			seed := joined[c.intN(len(joined))]
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[j-i] = nodes[j].DHT.Bootstrap(ctx, []dht.Contact{seed.DHT.Self()})
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		joined = append(joined, nodes[i:end]...)
		i = end
	}
	return c.publish(ctx, nodes)
}

func (c *Cluster) publish(ctx context.Context, nodes []*Node) error {
	sem := make(chan struct{}, c.cfg.JoinParallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, n := range nodes {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := n.DHT.Publish(ctx)
			mu.Lock()
			if err != nil {
				errs = append(errs, err)
			} else {
				c.ready[n.KP.Identity()] = true
			}
			mu.Unlock()
			if err == nil && c.cfg.Layer != nil {
				c.cfg.Layer.Joined(n)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Cluster) intN(n int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rng.IntN(n)
}

// Replace removes one random live node and adds a fresh one that bootstraps
// from a random survivor and publishes.
func (c *Cluster) Replace(ctx context.Context) error {
	c.mu.Lock()
	// Victims and seeds are nodes that finished joining.
	pick := func() int {
		for {
			if i := c.rng.IntN(len(c.nodes)); c.ready[c.nodes[i].KP.Identity()] {
				return i
			}
		}
	}
	i := pick()
	old := c.nodes[i]
	c.nodes = slices.Delete(c.nodes, i, i+1)
	delete(c.ready, old.KP.Identity())
	// Three seeds, as a real node would be configured with: one seed that
	// departs mid-join must not strand the newcomer.
	seeds := make([]dht.Contact, 3)
	for j := range seeds {
		seeds[j] = c.nodes[pick()].DHT.Self()
	}
	c.mu.Unlock()
	c.Net.Detach(old.KP.Identity())
	old.DHT.Close()
	if c.cfg.Layer != nil {
		c.cfg.Layer.Left(old)
	}
	n, err := c.newNode()
	if err != nil {
		return err
	}
	if err := n.DHT.Bootstrap(ctx, seeds); err != nil {
		return err
	}
	if err := n.DHT.Publish(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	c.ready[n.KP.Identity()] = true
	c.mu.Unlock()
	if c.cfg.Layer != nil {
		c.cfg.Layer.Joined(n)
	}
	return nil
}

// Close closes every node.
func (c *Cluster) Close() {
	for _, n := range c.Nodes() {
		n.DHT.Close()
	}
}

// pickPair returns a random source and a different random target that has
// published.
func (c *Cluster) pickPair() (src *Node, dst pki.Identity, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.nodes) < 2 {
		return nil, dst, false
	}
	for tries := 0; tries < 100; tries++ {
		a, b := c.nodes[c.rng.IntN(len(c.nodes))], c.nodes[c.rng.IntN(len(c.nodes))]
		if a != b && c.ready[b.KP.Identity()] {
			return a, b.KP.Identity(), true
		}
	}
	return nil, dst, false
}

// Sample is the outcome of one lookup.
type Sample struct {
	OK       bool
	Hops     int
	Messages int
	Latency  time.Duration
}

// Resolve runs count lookups (Resolve of a random published identity from
// a random node), parallel at a time, and returns their samples.
func (c *Cluster) Resolve(ctx context.Context, count, parallel int) []Sample {
	out := make([]Sample, count)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := 0; i < count; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			src, dst, ok := c.pickPair()
			if !ok {
				return
			}
			res, err := src.DHT.ResolveDetailed(ctx, dst)
			out[i] = Sample{
				OK:       err == nil && res.Record != nil && res.Record.Identity == dst,
				Hops:     res.Hops,
				Messages: res.Messages,
				Latency:  res.Duration,
			}
		}()
	}
	wg.Wait()
	return out
}

// Churn replaces count random nodes, starting one replacement every
// interval (each departure is immediate; its successor joins and publishes
// concurrently, as real arrivals do). It returns when all have joined.
func (c *Cluster) Churn(ctx context.Context, count int, interval time.Duration) error {
	var wg sync.WaitGroup
	errs := make([]error, count)
	for i := 0; i < count; i++ {
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			wg.Wait()
			return ctx.Err()
		case <-t.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Replace(ctx); err != nil {
				errs[i] = fmt.Errorf("replacement %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ResolveUntil runs lookups from parallel workers, each pausing pause
// between lookups, until done is closed. Lookups whose target left the
// network while they ran are not counted: failing to find a node that is
// gone is correct.
func (c *Cluster) ResolveUntil(ctx context.Context, done <-chan struct{}, parallel int, pause time.Duration) []Sample {
	var mu sync.Mutex
	var out []Sample
	var wg sync.WaitGroup
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case <-time.After(pause):
				}
				src, dst, ok := c.pickPair()
				if !ok {
					continue
				}
				res, err := src.DHT.ResolveDetailed(ctx, dst)
				c.mu.Lock()
				gone := !c.ready[dst]
				c.mu.Unlock()
				if gone {
					continue
				}
				s := Sample{
					OK:       err == nil && res.Record != nil && res.Record.Identity == dst,
					Hops:     res.Hops,
					Messages: res.Messages,
					Latency:  res.Duration,
				}
				mu.Lock()
				out = append(out, s)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// Summary aggregates samples.
type Summary struct {
	Lookups      int
	Success      float64 // fraction
	HopsP50      int
	HopsP99      int
	LatencyP50   time.Duration
	LatencyP99   time.Duration
	MessagesMean float64
}

// Summarize computes a Summary.
func Summarize(s []Sample) Summary {
	var sum Summary
	sum.Lookups = len(s)
	if len(s) == 0 {
		return sum
	}
	var hops []int
	var lat []time.Duration
	msgs, ok := 0, 0
	for _, x := range s {
		msgs += x.Messages
		if x.OK {
			ok++
			hops = append(hops, x.Hops)
			lat = append(lat, x.Latency)
		}
	}
	sum.Success = float64(ok) / float64(len(s))
	sum.MessagesMean = float64(msgs) / float64(len(s))
	slices.Sort(hops)
	slices.Sort(lat)
	if len(hops) > 0 {
		sum.HopsP50, sum.HopsP99 = hops[pct(len(hops), 50)], hops[pct(len(hops), 99)]
		sum.LatencyP50, sum.LatencyP99 = lat[pct(len(lat), 50)], lat[pct(len(lat), 99)]
	}
	return sum
}

func pct(n, p int) int { return min(n-1, n*p/100) }

func (s Summary) String() string {
	return fmt.Sprintf("lookups=%d success=%.2f%% hops p50/p99=%d/%d latency p50/p99=%v/%v msgs/lookup=%.1f",
		s.Lookups, 100*s.Success, s.HopsP50, s.HopsP99, s.LatencyP50.Round(time.Millisecond), s.LatencyP99.Round(time.Millisecond), s.MessagesMean)
}

// HeapBytes returns the live heap after a GC, for memory-per-node figures.
func HeapBytes() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
