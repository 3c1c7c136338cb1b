// Package simnet is an in-memory network for simulating the real dht code:
// nodes in several regions with a latency model (a few ms inside a region,
// 50-200 ms between regions), random loss, and seeded randomness so a
// topology repeats. Run it inside a testing/synctest bubble so the latencies
// cost virtual, not real, time.
//
// It imports dht, pki and the standard library only; nothing in the node
// imports it.
package simnet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/pki"
)

// NetConfig describes the simulated network. Zero fields take the defaults
// written on them.
type NetConfig struct {
	// Seed makes topology, addresses and latencies repeat. Default 1.
	Seed uint64
	// Regions is the number of regions. Default 5.
	Regions int
	// IntraRTT is the round-trip time range inside a region. Default 2-8 ms.
	IntraRTTMin, IntraRTTMax time.Duration
	// InterRTT is the round-trip time range between regions. Default
	// 50-200 ms.
	InterRTTMin, InterRTTMax time.Duration
	// Jitter is the relative random variation of each one-way delay.
	// Default 0.1.
	Jitter float64
	// Loss is the probability that one message (request or response) is
	// lost; the caller then waits for its own timeout.
	Loss float64
	// PrefixesPerRegion is how many IPv4 /16s each region's addresses come
	// from. Default 8.
	PrefixesPerRegion int
}

func (c *NetConfig) fill() {
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.Regions == 0 {
		c.Regions = 5
	}
	if c.IntraRTTMin == 0 {
		c.IntraRTTMin = 2 * time.Millisecond
	}
	if c.IntraRTTMax == 0 {
		c.IntraRTTMax = 8 * time.Millisecond
	}
	if c.InterRTTMin == 0 {
		c.InterRTTMin = 50 * time.Millisecond
	}
	if c.InterRTTMax == 0 {
		c.InterRTTMax = 200 * time.Millisecond
	}
	if c.Jitter == 0 {
		c.Jitter = 0.1
	}
	if c.PrefixesPerRegion == 0 {
		c.PrefixesPerRegion = 8
	}
}

// Handler receives a request; dht.DHT.HandleRequest is one.
type Handler func(from pki.Identity, fromAddr netip.AddrPort, req []byte) ([]byte, error)

// Network is the in-memory network.
type Network struct {
	cfg NetConfig
	rtt [][]time.Duration // base RTT between regions

	// Messages counts every message sent (requests and responses).
	Messages atomic.Int64
	// Requests counts requests by DHT message type (the second byte).
	Requests [16]atomic.Int64

	mu    sync.Mutex // guards all following fields
	rng   *rand.Rand
	nodes map[pki.Identity]*Endpoint
	used  map[netip.Addr]bool
}

// ErrUnreachable is returned when no route to the node exists... after the
// caller's timeout, as a real dial would.
var ErrUnreachable = errors.New("simnet: unreachable")

// NewNetwork builds a network.
func NewNetwork(cfg NetConfig) *Network {
	cfg.fill()
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	n := &Network{cfg: cfg, rng: rng, nodes: make(map[pki.Identity]*Endpoint), used: make(map[netip.Addr]bool)}
	n.rtt = make([][]time.Duration, cfg.Regions)
	for i := range n.rtt {
		n.rtt[i] = make([]time.Duration, cfg.Regions)
	}
	span := func(lo, hi time.Duration) time.Duration {
		return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
	}
	for i := 0; i < cfg.Regions; i++ {
		n.rtt[i][i] = span(cfg.IntraRTTMin, cfg.IntraRTTMax)
		for j := i + 1; j < cfg.Regions; j++ {
			d := span(cfg.InterRTTMin, cfg.InterRTTMax)
			n.rtt[i][j], n.rtt[j][i] = d, d
		}
	}
	return n
}

// Config returns the filled-in configuration.
func (n *Network) Config() NetConfig { return n.cfg }

// BaseRTT returns the RTT between two regions without jitter.
func (n *Network) BaseRTT(a, b int) time.Duration { return n.rtt[a][b] }

// Endpoint is one node's attachment; it implements dht.Transport.
type Endpoint struct {
	net     *Network
	id      pki.Identity
	addr    netip.AddrPort
	region  int
	handler atomic.Pointer[Handler]
}

// Attach adds a node in region with a fresh address from that region's
// prefixes (10.(region*16+i).x.y).
func (n *Network) Attach(id pki.Identity, region int) *Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	region %= n.cfg.Regions
	var a netip.Addr
	for {
		p := byte(region*16 + n.rng.IntN(n.cfg.PrefixesPerRegion))
		a = netip.AddrFrom4([4]byte{10, p, byte(n.rng.IntN(256)), byte(1 + n.rng.IntN(254))})
		if !n.used[a] {
			break
		}
	}
	n.used[a] = true
	e := &Endpoint{net: n, id: id, addr: netip.AddrPortFrom(a, 4433), region: region}
	n.nodes[id] = e
	return e
}

// AttachAt adds a node with a chosen address (adversarial tests).
func (n *Network) AttachAt(id pki.Identity, region int, addr netip.AddrPort) *Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := &Endpoint{net: n, id: id, addr: addr, region: region % n.cfg.Regions}
	n.nodes[id] = e
	return e
}

// Detach removes a node: calls to it then time out.
func (n *Network) Detach(id pki.Identity) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.nodes, id)
}

// SetHandler installs the node's request handler.
func (e *Endpoint) SetHandler(h Handler) { e.handler.Store(&h) }

// Addr returns the node's address.
func (e *Endpoint) Addr() netip.AddrPort { return e.addr }

// Region returns the node's region.
func (e *Endpoint) Region() int { return e.region }

// delay returns one one-way delay between regions, jittered, and whether
// the message is lost.
func (n *Network) delay(a, b int) (time.Duration, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	base := float64(n.rtt[a][b]) / 2
	d := time.Duration(base * (1 + n.cfg.Jitter*(2*n.rng.Float64()-1)))
	lost := n.cfg.Loss > 0 && n.rng.Float64() < n.cfg.Loss
	return d, lost
}

// Delay draws one one-way delay from region a to region b and whether the
// message is lost, from the same model Call uses, for simulations that send
// other traffic over this network (internal/nodesim's gossip).
func (n *Network) Delay(a, b int) (time.Duration, bool) { return n.delay(a, b) }

func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Call implements dht.Transport: it delivers req to to.Identity after the
// one-way delay, runs its handler (telling it our address), and returns the
// response and the callee's address after the return delay. Lost messages
// and detached nodes make it wait for ctx.
func (e *Endpoint) Call(ctx context.Context, to dht.Contact, req []byte) ([]byte, netip.AddrPort, error) {
	n := e.net
	var none netip.AddrPort
	if len(req) > dht.MaxMessageSize {
		return nil, none, fmt.Errorf("simnet: request of %d bytes exceeds the limit", len(req))
	}
	n.mu.Lock()
	dst := n.nodes[to.Identity]
	n.mu.Unlock()
	if dst == nil {
		<-ctx.Done()
		return nil, none, fmt.Errorf("%w: %s: %w", ErrUnreachable, to.Identity.Short(), ctx.Err())
	}
	n.Messages.Add(1)
	if len(req) > 1 {
		n.Requests[req[1]&15].Add(1)
	}
	d, lost := n.delay(e.region, dst.region)
	if err := wait(ctx, d); err != nil {
		return nil, none, err
	}
	h := dst.handler.Load()
	if lost || h == nil {
		<-ctx.Done()
		return nil, none, ctx.Err()
	}
	n.mu.Lock()
	alive := n.nodes[to.Identity] == dst
	n.mu.Unlock()
	if !alive {
		<-ctx.Done()
		return nil, none, ctx.Err()
	}
	resp, err := (*h)(e.id, e.addr, req)
	if err != nil {
		return nil, none, fmt.Errorf("simnet: %s refused: %w", to.Identity.Short(), err)
	}
	if len(resp) > dht.MaxMessageSize {
		return nil, none, fmt.Errorf("simnet: response of %d bytes exceeds the limit", len(resp))
	}
	n.Messages.Add(1)
	d, lost = n.delay(dst.region, e.region)
	if lost {
		<-ctx.Done()
		return nil, none, ctx.Err()
	}
	if err := wait(ctx, d); err != nil {
		return nil, none, err
	}
	return resp, dst.addr, nil
}
