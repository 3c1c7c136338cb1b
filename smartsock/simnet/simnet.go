// Package simnet is an in-memory UDP network for tests: sockets on public
// addresses and behind NAT boxes, links with latency and loss, and NATs
// that behave like the cone and symmetric NATs of the real Internet. Its
// sockets implement smartsock.UDP, so the path, relay and punching logic of
// smartsock (and anything above it) runs on a network the test controls,
// in milliseconds, beside the namespace lab that runs it on real kernels.
//
// Run it inside testing/synctest: time is then the bubble's fake clock, a
// second of probing takes no wall time, and whatever the test waits for
// happens at the same fake instant on every run. Loss is drawn from a
// seeded generator. Goroutines are scheduled as Go pleases, so two sockets
// writing at the same instant may be delivered in either order; everything
// else is deterministic.
//
// The model: the Internet is one flat space of public addresses. A socket
// listens on a public address (Network.Listen) or on a private one behind
// a NAT (NAT.Listen). A datagram from behind a NAT leaves with the NAT's
// public address and a port the NAT maps it to, and enters only through a
// mapping whose filter lets its sender in. Between two public addresses
// (a host's, or a NAT's) a Link sets the one-way latency and the loss. Two
// sockets behind one NAT reach each other directly on their private
// addresses. There are no offloads: control messages (oob) are ignored.
//
// simnet imports the standard library and x/net/ipv4 (the batch message
// type) only.
package simnet

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
)

// Config sets a Network's defaults. The zero value is a network with no
// latency and no loss.
type Config struct {
	// Seed seeds the loss draws.
	Seed uint64
	// Link is every pair of public addresses' link unless SetLink says
	// otherwise.
	Link Link
	// QueueLen bounds each socket's receive queue (default 1024): what
	// does not fit is dropped, as a full socket buffer drops.
	QueueLen int
}

// Link is the path between two public addresses, the same both ways.
type Link struct {
	Latency time.Duration // one way
	Loss    float64       // probability a datagram is lost, 0 to 1 (1: a black hole)
}

// Stats counts datagrams by fate.
type Stats struct {
	Sent, Delivered uint64
	Lost            uint64 // to a link's loss
	Filtered        uint64 // refused by a NAT: no mapping, or its filter
	NoRoute         uint64 // to an address where nothing listens
	QueueFull       uint64 // the receiving socket's queue was full
}

// Network is one simulated Internet. Its methods are safe for concurrent
// use.
type Network struct {
	cfg Config

	mu      sync.Mutex // guards every field below, and every NAT's and socket's table
	rng     *rand.Rand
	links   map[[2]netip.Addr]Link
	public  map[netip.AddrPort]*Conn // sockets on public addresses
	nats    map[netip.Addr]*NAT      // by public address
	queue   packetHeap
	seq     uint64
	stats   Stats
	closed  bool
	kick    chan struct{} // a packet was queued: the scheduler looks again
	done    chan struct{} // closed by Close
	stopped chan struct{} // closed by the scheduler when it returns
}

// New starts a network; Close stops it.
func New(cfg Config) *Network {
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 1024
	}
	n := &Network{
		cfg:     cfg,
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		links:   make(map[[2]netip.Addr]Link),
		public:  make(map[netip.AddrPort]*Conn),
		nats:    make(map[netip.Addr]*NAT),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go n.schedule()
	return n
}

// Close stops the network and closes every socket on it; it waits for the
// network's goroutine. Datagrams in flight are lost.
func (n *Network) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	var socks []*Conn
	for _, c := range n.public {
		socks = append(socks, c)
	}
	for _, nat := range n.nats {
		for _, c := range nat.inside {
			socks = append(socks, c)
		}
	}
	n.mu.Unlock()
	close(n.done)
	<-n.stopped
	for _, c := range socks {
		c.Close()
	}
	return nil
}

// Stats returns the counters.
func (n *Network) Stats() Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stats
}

func linkKey(a, b netip.Addr) [2]netip.Addr {
	if b.Less(a) {
		a, b = b, a
	}
	return [2]netip.Addr{a, b}
}

// SetLink sets the link between public addresses a and b (hosts' or
// NATs'), both ways, from now on: datagrams in flight keep the latency
// they left with.
func (n *Network) SetLink(a, b netip.Addr, l Link) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.links[linkKey(a, b)] = l
}

func (n *Network) linkLocked(a, b netip.Addr) Link {
	if l, ok := n.links[linkKey(a, b)]; ok {
		return l
	}
	return n.cfg.Link
}

// Listen opens a socket on a public address; port 0 picks a free one.
func (n *Network) Listen(addr netip.AddrPort) (*Conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, net.ErrClosed
	}
	if _, ok := n.nats[addr.Addr()]; ok {
		return nil, fmt.Errorf("simnet: %v is a NAT's address", addr.Addr())
	}
	addr, err := freePort(addr, func(a netip.AddrPort) bool { return n.public[a] != nil })
	if err != nil {
		return nil, err
	}
	c := newConn(n, nil, addr)
	n.public[addr] = c
	return c, nil
}

func freePort(addr netip.AddrPort, taken func(netip.AddrPort) bool) (netip.AddrPort, error) {
	if !addr.Addr().IsValid() {
		return addr, errors.New("simnet: invalid address")
	}
	if addr.Port() != 0 {
		if taken(addr) {
			return addr, fmt.Errorf("simnet: %v: address in use", addr)
		}
		return addr, nil
	}
	for p := uint16(40000); p != 0; p++ {
		if a := netip.AddrPortFrom(addr.Addr(), p); !taken(a) {
			return a, nil
		}
	}
	return addr, errors.New("simnet: no free port")
}

// packet is a datagram on its way.
type packet struct {
	at       time.Time
	seq      uint64 // ties: the order they were sent in
	src, dst netip.AddrPort
	to       *Conn // the receiving socket, resolved when it arrives
	viaNAT   *NAT  // or the NAT whose public address it was sent to
	data     []byte
}

type packetHeap []*packet

func (h packetHeap) Len() int { return len(h) }
func (h packetHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h packetHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *packetHeap) Push(x any)   { *h = append(*h, x.(*packet)) }
func (h *packetHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	*h = old[:len(old)-1]
	return p
}

// send routes a datagram from socket from to dst. It never blocks.
func (n *Network) send(from *Conn, b []byte, dst netip.AddrPort) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.stats.Sent++
	p := &packet{src: from.addr, dst: dst, data: append([]byte(nil), b...)}
	srcPub := from.addr.Addr()
	if nat := from.nat; nat != nil {
		if to := nat.inside[dst]; to != nil { // on the NAT's own LAN
			p.to = to
			n.queueLocked(p, 0)
			return
		}
		p.src = nat.outboundLocked(from.addr, dst)
		srcPub = nat.public
	}
	l := n.linkLocked(srcPub, dst.Addr())
	if l.Loss > 0 && n.rng.Float64() < l.Loss {
		n.stats.Lost++
		return
	}
	if to := n.public[dst]; to != nil {
		p.to = to
	} else if nat := n.nats[dst.Addr()]; nat != nil {
		p.viaNAT = nat // its mapping and filter are checked when it arrives
	} else {
		n.stats.NoRoute++
		return
	}
	n.queueLocked(p, l.Latency)
}

func (n *Network) queueLocked(p *packet, latency time.Duration) {
	p.at = time.Now().Add(latency)
	n.seq++
	p.seq = n.seq
	heap.Push(&n.queue, p)
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// schedule delivers datagrams when their time comes. It is the network's
// one goroutine; Close stops it.
func (n *Network) schedule() {
	defer close(n.stopped)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		n.mu.Lock()
		now := time.Now()
		for n.queue.Len() > 0 && !n.queue[0].at.After(now) {
			n.deliverLocked(heap.Pop(&n.queue).(*packet))
		}
		// With nothing in flight, no timer: a fake clock (synctest) is
		// not moved by an idle network.
		var due <-chan time.Time
		if n.queue.Len() > 0 {
			t.Reset(n.queue[0].at.Sub(now))
			due = t.C
		}
		n.mu.Unlock()
		select {
		case <-n.done:
			return
		case <-n.kick:
		case <-due:
		}
	}
}

func (n *Network) deliverLocked(p *packet) {
	to := p.to
	if nat := p.viaNAT; nat != nil {
		if to = nat.inboundLocked(p.src, p.dst); to == nil {
			n.stats.Filtered++
			return
		}
	}
	if to.closed {
		n.stats.NoRoute++
		return
	}
	select {
	case to.in <- datagram{src: p.src, data: p.data}:
		n.stats.Delivered++
	default:
		n.stats.QueueFull++
	}
}

// NATKind is how a NAT maps and filters.
type NATKind int

const (
	// Cone maps each inside socket to one public port whatever it sends
	// to (endpoint-independent mapping), and lets in only datagrams from
	// addresses that socket has sent to (address- and port-dependent
	// filtering): two sockets behind cone NATs that send to each other's
	// mapping at the same time punch a hole.
	Cone NATKind = iota + 1
	// Symmetric maps each (inside socket, destination) pair to a port of
	// its own, filtering the same way: a peer learns a mapping that only
	// the destination it was made for can use, so punching fails and
	// traffic needs a relay.
	Symmetric
)

// NAT is a NAT box with one public address.
type NAT struct {
	net    *Network
	public netip.Addr
	kind   NATKind

	// Guarded by Network.mu.
	inside   map[netip.AddrPort]*Conn // sockets behind it, by private address
	out      map[mapKey]uint16        // mapping: (inside, destination or zero for cone) -> public port
	in       map[uint16]*mapping      // by public port
	nextPort uint16
}

type mapKey struct{ inside, dst netip.AddrPort }

type mapping struct {
	inside  netip.AddrPort
	allowed map[netip.AddrPort]bool // remotes the inside sent to through it
}

// NewNAT adds a NAT box of the given kind with public address pub.
func (n *Network) NewNAT(pub netip.Addr, kind NATKind) (*NAT, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.nats[pub]; ok {
		return nil, fmt.Errorf("simnet: NAT at %v exists", pub)
	}
	for a := range n.public {
		if a.Addr() == pub {
			return nil, fmt.Errorf("simnet: %v is a host's address", pub)
		}
	}
	if kind != Cone && kind != Symmetric {
		return nil, errors.New("simnet: unknown NAT kind")
	}
	nat := &NAT{net: n, public: pub, kind: kind, inside: make(map[netip.AddrPort]*Conn),
		out: make(map[mapKey]uint16), in: make(map[uint16]*mapping), nextPort: 20000}
	n.nats[pub] = nat
	return nat, nil
}

// Public is the NAT's public address.
func (nat *NAT) Public() netip.Addr { return nat.public }

// Listen opens a socket on a private address behind the NAT; port 0 picks
// a free one.
func (nat *NAT) Listen(addr netip.AddrPort) (*Conn, error) {
	n := nat.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, net.ErrClosed
	}
	addr, err := freePort(addr, func(a netip.AddrPort) bool { return nat.inside[a] != nil })
	if err != nil {
		return nil, err
	}
	c := newConn(n, nat, addr)
	nat.inside[addr] = c
	return c, nil
}

// Mapped returns the public address inside's datagrams to dst leave with,
// if the NAT has mapped it: what a server at dst observes (a relay's
// observe answer).
func (nat *NAT) Mapped(inside, dst netip.AddrPort) (netip.AddrPort, bool) {
	nat.net.mu.Lock()
	defer nat.net.mu.Unlock()
	port, ok := nat.out[nat.key(inside, dst)]
	return netip.AddrPortFrom(nat.public, port), ok
}

// Rebind forgets every mapping, as a NAT that rebooted or timed them out:
// the next datagram from inside leaves from a new port.
func (nat *NAT) Rebind() {
	nat.net.mu.Lock()
	defer nat.net.mu.Unlock()
	clear(nat.out)
	clear(nat.in)
}

func (nat *NAT) key(inside, dst netip.AddrPort) mapKey {
	if nat.kind == Cone {
		dst = netip.AddrPort{}
	}
	return mapKey{inside, dst}
}

// outboundLocked maps a datagram leaving from inside to dst and opens the
// mapping's filter for dst; it returns the public source.
func (nat *NAT) outboundLocked(inside, dst netip.AddrPort) netip.AddrPort {
	k := nat.key(inside, dst)
	port, ok := nat.out[k]
	if !ok {
		for nat.in[nat.nextPort] != nil || nat.nextPort == 0 {
			nat.nextPort++
		}
		port = nat.nextPort
		nat.nextPort++
		nat.out[k] = port
		nat.in[port] = &mapping{inside: inside, allowed: make(map[netip.AddrPort]bool)}
	}
	nat.in[port].allowed[dst] = true
	return netip.AddrPortFrom(nat.public, port)
}

// inboundLocked returns the inside socket a datagram from src to the
// public dst reaches, or nil when no mapping lets it in.
func (nat *NAT) inboundLocked(src, dst netip.AddrPort) *Conn {
	m := nat.in[dst.Port()]
	if m == nil || !m.allowed[src] {
		return nil
	}
	return nat.inside[m.inside]
}

// datagram is one received datagram.
type datagram struct {
	src  netip.AddrPort
	data []byte
}

// Conn is a socket on the network. It implements smartsock.UDP.
type Conn struct {
	net  *Network
	nat  *NAT // nil: on a public address
	addr netip.AddrPort
	in   chan datagram

	mu       sync.Mutex // guards deadline and dlChange
	deadline time.Time
	dlChange chan struct{} // closed when the read deadline changes
	once     sync.Once
	closedCh chan struct{}
	closed   bool // guarded by Network.mu
}

func newConn(n *Network, nat *NAT, addr netip.AddrPort) *Conn {
	return &Conn{net: n, nat: nat, addr: addr, in: make(chan datagram, n.cfg.QueueLen),
		dlChange: make(chan struct{}), closedCh: make(chan struct{})}
}

// Addr is the socket's own address (private when behind a NAT).
func (c *Conn) Addr() netip.AddrPort { return c.addr }

// LocalAddr implements smartsock.UDP.
func (c *Conn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(c.addr) }

// WriteTo sends b to dst. Like UDP, a datagram nobody receives is lost
// without an error; oob is ignored.
func (c *Conn) WriteTo(b, _ []byte, dst netip.AddrPort) error {
	select {
	case <-c.closedCh:
		return &net.OpError{Op: "write", Net: "udp", Source: c.LocalAddr(), Err: net.ErrClosed}
	default:
	}
	c.net.send(c, b, dst)
	return nil
}

// ReadBatch implements smartsock.UDP: it waits for one datagram, then takes
// as many more as are queued and fit in ms.
func (c *Conn) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	d, err := c.wait()
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		m := &ms[n]
		m.N = copy(m.Buffers[0], d.data)
		m.NN, m.Flags = 0, 0
		m.Addr = net.UDPAddrFromAddrPort(d.src)
		n++
		if n == len(ms) {
			return n, nil
		}
		select {
		case d = <-c.in:
		default:
			return n, nil
		}
	}
}

// wait returns the next datagram, or an error when the socket closes or
// the read deadline passes.
func (c *Conn) wait() (datagram, error) {
	for {
		c.mu.Lock()
		dl, change := c.deadline, c.dlChange
		c.mu.Unlock()
		var t *time.Timer
		var timeout <-chan time.Time
		if !dl.IsZero() {
			wait := time.Until(dl)
			if wait <= 0 {
				return datagram{}, &net.OpError{Op: "read", Net: "udp", Source: c.LocalAddr(), Err: os.ErrDeadlineExceeded}
			}
			t = time.NewTimer(wait)
			timeout = t.C
		}
		var d datagram
		var err error
		got := false
		select {
		case d = <-c.in:
			got = true
		case <-c.closedCh:
			err = &net.OpError{Op: "read", Net: "udp", Source: c.LocalAddr(), Err: net.ErrClosed}
		case <-change: // look at the new deadline
		case <-timeout: // passed: the next turn says so
		}
		if t != nil {
			t.Stop()
		}
		if got || err != nil {
			return d, err
		}
	}
}

// SetReadDeadline implements smartsock.UDP.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	close(c.dlChange)
	c.dlChange = make(chan struct{})
	return nil
}

// SetWriteDeadline does nothing: writes never block.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer does nothing: the queue is Config.QueueLen datagrams.
func (c *Conn) SetReadBuffer(int) error { return nil }

// SetWriteBuffer does nothing.
func (c *Conn) SetWriteBuffer(int) error { return nil }

// Close closes the socket: a blocked read returns net.ErrClosed, and its
// address is free again.
func (c *Conn) Close() error {
	c.once.Do(func() {
		n := c.net
		n.mu.Lock()
		c.closed = true
		if c.nat != nil {
			delete(c.nat.inside, c.addr)
		} else if n.public[c.addr] == c {
			delete(n.public, c.addr)
		}
		n.mu.Unlock()
		close(c.closedCh)
	})
	return nil
}
