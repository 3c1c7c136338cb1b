// Package overlay is the node: it wires the rooms that each own one job
// and its state, and offers the public Go API on top.
//
// The packet path, by package: a device (overlay/tun, overlay/netstack)
// -> datapath (route, held packets, ICMPv6 answers, per-peer send queues)
// -> peers (one authenticated QUIC connection per peer) -> smartsock (the
// paths under QUIC: direct, relayed, punched) -> UDP. Beside it: nat
// (configure_nat, SmartConnect, punching, the node's side of the relay
// protocol), relay/server (sessions this node relays, and their RPC side),
// dht, gossipsub, rpc and pki/tca.
//
// New only wires: it is given a device (with, for an in-process stack, its
// Dial and Listen face) and a UDP socket, and builds the in-process
// netstack and a socket on Config.Listen only when none is given. The node
// keeps little state of its own (the application's request queue, refusal
// counters and their log limiter, the DHT glue's cache of failed dials,
// membership); its goroutines (one request server per peer connection,
// the DHT join, same-identity checks, membership loops) stop when Close
// cancels them, and Close waits for them and for every room's.
//
// Close order: the listener, then every connection (so peers hear a
// CONNECTION_CLOSE at once and blocked senders return), then the DHT, the
// CA, gossip, NAT traversal, the peer set, the datapath (which closes the
// device), the QUIC transport and the socket.
package overlay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"
	"lukechampine.com/blake3"

	"github.com/korium/korium-tun/datapath"
	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/firewall"
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/internal/group"
	"github.com/korium/korium-tun/nat"
	"github.com/korium/korium-tun/overlay/netstack"
	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/rpc"
	"github.com/korium/korium-tun/smartaddr"
	"github.com/korium/korium-tun/smartsock"
)

// Node is one overlay participant. Create it with New; Close stops it.
type Node struct {
	cfg     Config
	kp      *pki.Keypair
	id      pki.Identity
	addr    netip.Addr
	started time.Time

	// The rooms. Each owns its state and goroutines; the node only wires
	// them (set in New, never changed).
	sock     *smartsock.Conn
	tr       *quic.Transport
	ln       *quic.Listener
	peers    *peers.Set
	dp       *datapath.Engine
	nat      *nat.Traversal
	relaySrv *server.Server    // nil when Config.NoRelay
	rpc      *rpc.Server       // serves every installed peer connection
	dht      *dht.DHT          // nil when Config.DisableDHT
	gossip   *gossipsub.Router // nil when Config.DisablePubSub
	ca       *tca.Service      // nil when Config.DisablePubSub
	mem      *members          // nil without Config.Members.CA (members.go)
	stack    Net               // the netstack's Dial/Listen face, or nil on a kernel TUN
	quicConf *quic.Config
	tlsConf  pki.TLSConfig
	srvTLS   *tls.Config

	fw *firewall.Firewall // nil without Config.Firewall (firewall.go)

	ctx    context.Context // canceled by Close: ends the node's own goroutines
	cancel context.CancelFunc
	group  group.Group // the node's own goroutines (see the package comment)

	// The node's mutexes (reqMu, unreachMu, logGate's, members' logMu)
	// are leaves: none is held while another is taken, or across a call
	// out of the package, so there is no lock order to keep.
	appHandler atomic.Pointer[rpc.Handler] // SetRequestHandler's, or nil
	reqMu      sync.Mutex                  // guards incoming
	incoming   chan *Request               // made by the first IncomingRequests call
	appSignals chan gossipsub.Signal       // signals for the application (mesh.go)

	unreachMu   sync.Mutex                 // guards unreachable
	unreachable map[pki.Identity]time.Time // failed direct dials, until when (dht.go)

	sameIDChecks atomic.Int64   // replaced() checks waiting
	pcache       peerCacheState // peercache.go
	stats        Counters
	refusals     refusalCounters
	logGate      logGate // rate-limits refusal lines

	closeOnce sync.Once
	closeErr  error
	done      chan struct{} // closed when Close has finished
	wired     chan struct{} // closed when start returned: fail's Close waits for it
	failOnce  sync.Once
	failErr   atomic.Pointer[error] // why the node stopped by itself
}

// Counters are the node's own counters, by reason (the rooms keep theirs).
type Counters struct {
	HandshakeRefused           atomic.Uint64 // handshakes refused here, every reason
	SPIFFERefused              atomic.Uint64
	AppNoHandler, AppQueueFull atomic.Uint64
	AppSignalsDropped          atomic.Uint64 // the application's Signals channel was full
	// RxQUICQueueFullGone: datagrams dropped on a full quic-go receive
	// queue by connections that have ended (the live ones say theirs).
	RxQUICQueueFullGone atomic.Uint64
}

// Net is the Dial and Listen face of an in-process network stack (what
// netstack.Create returns beside its device).
type Net interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	Listen(network, address string) (net.Listener, error)
	ListenPacket(network, address string) (net.PacketConn, error)
}

// New starts a node on Config.Device and Config.Conn. Without a device it
// makes an in-process netstack (no root needed) and offers its Dial and
// Listen; without a socket it binds one to Config.Listen. The node owns
// both from now on (also when it fails).
func New(cfg Config) (*Node, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		closeGiven(cfg)
		return nil, err
	}
	if c.Keypair == nil {
		if c.Keypair, err = pki.GenerateKeypair(context.Background(), c.PoWBits); err != nil {
			closeGiven(c)
			return nil, err
		}
	}
	if err := pki.CheckPoW(c.Keypair.Identity(), c.Keypair.Nonce(), c.PoWBits); err != nil {
		closeGiven(c)
		return nil, fmt.Errorf("overlay: our own key is too weak for this network (%v): generate one with --pow-bits %d", err, c.PoWBits)
	}
	if c.Conn == nil {
		if c.Conn, err = ListenUDP(c.Listen); err != nil {
			closeGiven(c)
			return nil, err
		}
	}
	if c.Device == nil {
		dev, stack, err := netstack.Create(netstack.Config{Addr: smartaddr.FromIdentity(c.Keypair.Identity()), MTU: c.MTU, Logger: c.Logger})
		if err != nil {
			closeGiven(c)
			return nil, err
		}
		c.Device, c.Net = dev, stack
	} else if s, ok := c.Device.(Net); ok && c.Net == nil {
		c.Net = s // a netstack device handed over whole
	}
	return start(c)
}

func closeGiven(c Config) {
	if c.Conn != nil {
		c.Conn.Close()
	}
	if c.Device != nil {
		c.Device.Close()
	}
}

// start wires the rooms around c.Device and c.Conn, which it owns.
func start(c Config) (n *Node, err error) {
	n = &Node{
		cfg:     c,
		kp:      c.Keypair,
		id:      c.Keypair.Identity(),
		addr:    smartaddr.FromIdentity(c.Keypair.Identity()),
		stack:   c.Net,
		started: time.Now(),
		done:    make(chan struct{}),
		wired:   make(chan struct{}),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	node := n // the named result is nil on error returns
	closeDev := true
	defer func() {
		if err != nil {
			if closeDev {
				c.Device.Close()
			}
			node.Close()
		}
	}()
	defer close(n.wired)
	n.rpc = rpc.NewServer(rpcConfig(c))
	n.rpc.Handle(rpc.ProtoApp, n.handleApp)

	var resetKey quic.StatelessResetKey
	// Derived from the private key so a restarted node resets its peers'
	// stale connections at once instead of leaving them to time out.
	blake3.DeriveKey(resetKey[:], "korium-tun stateless reset v1", c.Keypair.Seed())
	rk := [32]byte(resetKey)
	onDirect := func(id pki.Identity, addr netip.AddrPort) {
		// The relay follows an endpoint whose address changed (NAT rebinding).
		if srv := n.relaySrv; srv != nil {
			srv.UpdateAddr(id, addr)
		}
	}
	if n.sock, err = smartsock.New(c.Conn, smartsock.Config{Keypair: c.Keypair, Logger: c.Logger, StatelessResetKey: &rk, PoWBits: c.PoWBits, OnDirectPath: onDirect, OnRefusal: n.onRefusal}); err != nil {
		c.Conn.Close()
		return nil, err
	}
	n.tr = &quic.Transport{
		Conn:                  n.sock,
		ConnectionIDGenerator: smartsock.ConnIDGenerator{},
		StatelessResetKey:     &resetKey,
	}
	n.quicConf = &quic.Config{
		EnableDatagrams:         true,
		InitialPacketSize:       uint16(c.MTU + datapath.QUICOverhead),
		DisablePathMTUDiscovery: true, // datagram size is fixed by InitialPacketSize
		KeepAlivePeriod:         c.KeepAlive,
		MaxIdleTimeout:          c.IdleTimeout,
		HandshakeIdleTimeout:    c.HandshakeTimeout,
		MaxIncomingStreams:      64, // the reference's MAX_CONCURRENT_STREAMS
		MaxIncomingUniStreams:   -1,
	}
	n.tlsConf = pki.TLSConfig{Keypair: c.Keypair, PoWBits: c.PoWBits, Refused: n.onCertReject,
		SPIFFE: pki.SPIFFEConfig{TrustDomain: c.TrustDomain, Workload: c.Workload}}
	n.peers = peers.New(peers.Config{
		Self: n.id, Transport: n.tr, QUIC: n.quicConf,
		ClientTLS:        func(id pki.Identity) (*tls.Config, error) { return n.memberTLS().Client(id) },
		HandshakeTimeout: c.HandshakeTimeout, MaxPeers: c.MaxPeers, IdleEvict: c.IdleEvict, Logger: c.Logger,
		Admit:         n.admit,
		HandshakeAddr: n.handshakeAddr,
		Redial:        func(ctx context.Context, ct peers.Contact) error { return n.Connect(ctx, ct) },
		Keep:          n.spareFromIdleEviction,
		Up:            n.peerUp, Down: n.peerDown, Evicted: n.peerEvicted,
		Replaced: n.replaced, Refused: n.peerRefused,
	})
	if !c.NoRelay {
		n.relaySrv = server.New(c.RelayServer, n.sock)
		n.sock.SetRelayForwarder(n.relaySrv.Forward)
	}
	if !c.DisableDHT {
		dc := c.DHT
		dc.PoWBits, dc.Logger = c.PoWBits, c.Logger
		dc.AllowLoopback = n.loopbackOK()
		if dc.PoWBits == 0 {
			dc.PoWBits = dht.NoPoW
		}
		if n.dht, err = dht.New(c.Keypair, dhtTransport{n}, n.AdvertisedAddrs(), dc); err != nil {
			return nil, err
		}
		n.rpc.Handle(rpc.ProtoDHT, n.handleDHT)
		if len(c.Bootstrap) > 0 {
			// A DHT client until configure_nat finds us public: nobody may
			// route to us before we know they can.
			n.dht.SetClient(true)
		}
		if n.cfg.Resolver == nil {
			n.cfg.Resolver = n.resolveViaDHT
		}
	}
	if !c.DisablePubSub {
		if n.gossip, err = gossipsub.New(c.PubSub, c.Keypair, gossipSender{n}, c.Logger); err != nil {
			return nil, err
		}
		n.rpc.Handle(rpc.ProtoGossip, n.handleGossip)
	}
	if err := n.initCA(); err != nil {
		return nil, err
	}
	if err := n.initFirewall(); err != nil {
		return nil, err
	}
	dc := datapath.Config{
		Addr: n.addr, MTU: c.MTU, Device: c.Device, Peers: n.peers,
		ResolveTimeout: c.ResolveTimeout, ResolveFailTTL: c.ResolveFailTTL, PendingTimeout: c.PendingTimeout,
		MaxPending: c.MaxPending, SendQueue: c.SendQueue, Logger: c.Logger, OnFail: n.fail,
		// gVisor drops Destination Unreachable code 3; the kernel TUN
		// coalesces in place, the netstack on its own.
		UnreachNoRoute: n.stack != nil, CoalesceCopy: n.stack == nil,
		Firewall: n.fw, FirewallSPIFFE: n.firewallSPIFFE,
	}
	if n.cfg.Resolver != nil {
		dc.Resolve = n.resolveOwner
	}
	if n.dp, err = datapath.New(dc); err != nil {
		return nil, err
	}
	closeDev = false // the datapath owns it now
	nc := nat.Config{
		Self: n.id, Peers: n.peers, Sock: n.sock, Call: n.callRelay, Relay: n.relaySrv,
		MayRelayTo: n.mayRelayTo, Reach: n.reachRelay, Advertised: n.AdvertisedAddrs, Spares: n.spares,
		Loopback: n.loopbackOK(), Seed: len(c.Bootstrap) == 0, OnChange: n.natChanged,
		IgnoreDialBacks: c.testNoDialBack, Logger: c.Logger,
	}
	if n.gossip != nil {
		nc.Signal = n.sendMeshSignal
	}
	n.nat = nat.New(nc)
	if n.gossip != nil {
		n.appSignals = make(chan gossipsub.Signal, signalQueue)
		n.goLoop(n.signalLoop)
	}
	n.rpc.Handle(rpc.ProtoRelay, func(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
		n.touch(from)
		return n.nat.HandleRelay(ctx, from, req)
	})
	if n.srvTLS, err = n.memberTLS().Server(nil); err != nil {
		return nil, err
	}
	if n.ln, err = n.tr.Listen(n.srvTLS, n.quicConf); err != nil {
		return nil, fmt.Errorf("overlay: listen: %w", err)
	}
	n.peers.Accept(n.ln)
	n.initPeerCache()
	for _, b := range c.Bootstrap {
		n.AddPeer(b)
	}
	if n.dht != nil {
		n.goLoop(n.dhtJoin)
	}
	n.startMembers()
	c.Logger.Info("node started", "identity", n.id.String(), "address", n.addr.String(), "listen", c.Conn.LocalAddr().String())
	return n, nil
}

// ListenUDP opens the node's UDP socket with an error that says what to do
// when the port is taken.
func ListenUDP(hostport string) (*net.UDPConn, error) {
	ap, err := net.ResolveUDPAddr("udp", hostport)
	if err != nil {
		return nil, fmt.Errorf("listen address %q is not HOST:PORT: %v", hostport, err)
	}
	c, err := net.ListenUDP("udp", ap)
	if err != nil {
		if errors.Is(err, syscallEADDRINUSE) {
			return nil, fmt.Errorf("UDP port %s is already in use: stop the other program or pick another with --listen", hostport)
		}
		return nil, fmt.Errorf("cannot listen on UDP %s: %v", hostport, err)
	}
	return c, nil
}

// goLoop runs f as one of the node's own goroutines (Close waits for it).
func (n *Node) goLoop(f func()) { n.group.Go(f) }

// Identity returns the node's identity.
func (n *Node) Identity() pki.Identity { return n.id }

// Addr returns the node's SmartAddr.
func (n *Node) Addr() netip.Addr { return n.addr }

// LocalAddr returns the real UDP address the node listens on.
func (n *Node) LocalAddr() netip.AddrPort {
	return n.sock.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Contact returns a bootstrap contact for this node at host (the UDP port
// is the node's). host must be an address others can reach.
func (n *Node) Contact(host netip.Addr) Contact {
	return Contact{Identity: n.id, Addr: netip.AddrPortFrom(host, n.LocalAddr().Port())}
}

// AdvertisedAddrs returns the addresses others can use to reach this node:
// Config.Advertise, else the listen address, else every usable address of
// the host with the listen port.
func (n *Node) AdvertisedAddrs() []netip.AddrPort {
	if len(n.cfg.Advertise) > 0 {
		return append([]netip.AddrPort(nil), n.cfg.Advertise...)
	}
	la := n.LocalAddr()
	if !la.Addr().IsUnspecified() {
		return []netip.AddrPort{netip.AddrPortFrom(la.Addr().Unmap(), la.Port())}
	}
	var out []netip.AddrPort
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !hostAddrAdvertisable(ip) || smartaddr.IsOverlay(ip) {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, la.Port()))
	}
	return out
}

// MTU returns the tunnel MTU.
func (n *Node) MTU() int { return n.cfg.MTU }

// Close stops the node: it closes every connection, the device and the
// socket, and waits for every goroutine. It is safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.ln != nil {
			errs = append(errs, n.ln.Close())
		}
		// Close connections before anything else so each peer gets a
		// CONNECTION_CLOSE and drops us at once, not after its idle
		// timeout, and every sender blocked on one returns.
		n.closeConns()
		n.cancel()
		if n.dht != nil {
			n.dht.Close()
		}
		n.closeCA()
		if n.gossip != nil {
			n.gossip.Close()
		}
		if n.nat != nil {
			n.nat.Close()
		}
		if n.peers != nil {
			n.peers.Close()
			n.closeConns() // any a redial installed meanwhile
		}
		if n.dp != nil {
			errs = append(errs, n.dp.Close())
		}
		if n.tr != nil {
			errs = append(errs, n.tr.Close())
		}
		if n.sock != nil {
			errs = append(errs, n.sock.Close())
		}
		n.group.Wait()
		n.closeErr = errors.Join(errs...)
		close(n.done)
	})
	return n.closeErr
}

// closeConns closes every installed connection, in parallel.
func (n *Node) closeConns() {
	if n.peers == nil {
		return
	}
	var cwg sync.WaitGroup
	for p := range n.peers.Snapshot().All() {
		cwg.Add(1)
		go func() { defer cwg.Done(); p.Conn.CloseWithError(peers.CodeNormal, "node closing") }()
	}
	cwg.Wait()
}

// fail stops the node because it cannot go on (its device is gone): it logs
// err, makes Err return it and Done close, and closes the node. Close runs
// in a goroutine of its own, since the caller is one of the goroutines Close
// waits for.
func (n *Node) fail(err error) {
	n.failOnce.Do(func() {
		n.failErr.Store(&err)
		n.cfg.Logger.Error("node failed", "err", err)
		// A device can fail while start is still wiring the node (the
		// datapath reads from New on): Close reads what start writes.
		go func() { <-n.wired; n.Close() }()
	})
}

// Done is closed when the node has stopped: after Close, or after a failure
// that stopped it (see Err).
func (n *Node) Done() <-chan struct{} { return n.done }

// Err returns why the node stopped by itself (its device is gone), or nil
// while it runs and after a Close by its owner.
func (n *Node) Err() error {
	if e := n.failErr.Load(); e != nil {
		return *e
	}
	return nil
}

// ---- the peer set's hooks ---------------------------------------------------------

// peerUp wires a new connection into every room: the socket learns the
// path is proven, gossip gets a peer, the datapath starts carrying its
// packets (and sends what was held for it), and a request server serves it.
func (n *Node) peerUp(p *peers.Peer) {
	n.sock.Confirm(p.ID)
	if key, err := smartsock.PathKey(p.Conn.ConnectionState().TLS); err == nil {
		n.sock.SetPathKey(p.ID, key)
	}
	// Only packets quic-go authenticates show the socket that a path of
	// p's delivers, not any packet with p's address.
	n.sock.SetAuthClock(p.ID, p.Conn.SinceAuthenticated)
	// Admission and install took what they need from the certificate
	// (identity, serial, SPIFFE ID, membership), and the firewall's
	// verdict on its SPIFFE ID is taken now: ~2 KiB per peer less.
	n.vouchSPIFFE(p)
	p.Conn.DropPeerCertificates()
	if n.gossip != nil && !enrollee(p) {
		n.gossip.AddPeer(p.ID, n.peerIP(p.ID), p.Outbound)
	}
	n.cfg.Logger.Info("peer connected", "peer", p.ID.String(), "address", p.Addr.String(), "outbound", p.Outbound, "path", n.pathString(p.ID))
	n.dp.PeerUp(p)
	if p.Routable {
		n.cacheReached(p.ID)
	}
	// Serve returns when the connection closes (also when it is replaced
	// by a duplicate) after its handlers have returned.
	n.goLoop(func() { n.rpcFor(p).Serve(n.ctx, p.Conn, p.ID) })
}

// peerDown undoes peerUp once p's connection ended; a replaced connection
// (current false) leaves the socket's path and the gossip peer to its
// successor.
func (n *Node) peerDown(p *peers.Peer, current bool) {
	if current {
		n.sock.Forget(p.ID)
		// Paths relayed by p are dead now: traffic moves to another
		// proven path at once (a mesh relay's, nat/mesh.go).
		n.sock.RelayGone(p.ID)
		if n.gossip != nil {
			n.gossip.RemovePeer(p.ID)
		}
	}
	n.stats.RxQUICQueueFullGone.Add(p.Conn.ConnectionStats().DatagramsDropped)
	cause := context.Cause(p.Conn.Context())
	n.closedAsRefused(p, cause)
	n.cfg.Logger.Info("peer disconnected", "peer", p.ID.String(), "reason", cause)
}

func (n *Node) peerEvicted(p *peers.Peer) {
	if n.gossip != nil {
		n.gossip.RemovePeer(p.ID)
	}
}

// spareFromIdleEviction names the peers idle eviction keeps besides the
// bootstrap contacts: our relays, and peers that share a pubsub topic with
// us (their mesh may be quiet).
func (n *Node) spareFromIdleEviction() map[pki.Identity]bool {
	keep := make(map[pki.Identity]bool)
	if n.gossip != nil {
		for _, t := range n.gossip.Topics() {
			for _, pi := range n.gossip.TopicPeers(t) {
				keep[pi.ID] = true
			}
		}
	}
	for _, r := range n.nat.Status().Relays {
		keep[r] = true
	}
	return keep
}

// peer returns the connection to id, or nil.
func (n *Node) peer(id pki.Identity) *peers.Peer { return n.peers.Peer(id) }

// touch marks id's connection as used (an inbound request).
func (n *Node) touch(id pki.Identity) {
	if p := n.peer(id); p != nil {
		p.Touch()
	}
}

func (n *Node) pathString(id pki.Identity) string {
	pi, ok := n.sock.Path(id)
	if !ok {
		return ""
	}
	return pi.Current.String()
}

// ---- datapath and nat glue --------------------------------------------------------

// resolveOwner is the datapath's Resolve: it asks the Resolver who owns
// dst and connects to the first answer that proves it (identity pinned in
// the handshake, address derived from the identity), racing every address
// (and relay) of the owner in one handshake.
func (n *Node) resolveOwner(ctx context.Context, dst netip.Addr) error {
	contacts, err := n.cfg.Resolver(ctx, dst)
	if err != nil {
		return fmt.Errorf("%w: %v", datapath.ErrNoOwner, err)
	}
	var owner *Contact
	var addrs []netip.AddrPort
	for i := range contacts {
		c := &contacts[i]
		if !smartaddr.Owns(c.Identity, dst) || (owner != nil && c.Identity != owner.Identity) {
			continue
		}
		if owner == nil {
			owner = c
		}
		if c.Addr.IsValid() {
			addrs = append(addrs, c.Addr)
		}
	}
	if owner == nil {
		return fmt.Errorf("%w: no contact owns the address", datapath.ErrNoOwner)
	}
	return n.nat.Connect(ctx, owner.Identity, addrs, owner.Relays, false)
}

// callRelay sends a relay request on the existing connection to `to`.
func (n *Node) callRelay(ctx context.Context, to pki.Identity, req []byte) ([]byte, error) {
	return n.callConnected(ctx, to, rpc.ProtoRelay, req)
}

// reachRelay connects to a relay known only by identity, through its
// contact record (relays are public).
func (n *Node) reachRelay(ctx context.Context, id pki.Identity) error {
	rec, err := n.Resolve(ctx, id)
	if err != nil {
		return err
	}
	_, err = n.connFor(ctx, id, rec.Addrs)
	return err
}

// mayRelayTo: no relaying for enrollees (members.go).
func (n *Node) mayRelayTo(p *peers.Peer) error {
	if enrollee(p) {
		return errors.New("the target is not a member")
	}
	return nil
}

// natChanged publishes what configure_nat found in our DHT record: the
// observed addresses, the relays, and whether others may route to us.
func (n *Node) natChanged(st nat.Status) {
	if n.dht == nil {
		return
	}
	addrs := n.AdvertisedAddrs()
	for _, o := range st.Observed {
		if !containsAddr(addrs, o) {
			addrs = append(addrs, o)
		}
	}
	n.dht.SetAddrs(addrs[:min(len(addrs), 16)])
	n.dht.SetRelays(st.Relays)
	// Behind NAT others cannot dial us: stay out of their routing tables
	// (our record, with relays, is how we are found).
	n.dht.SetClient(!st.Public)
}

func containsAddr(s []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}
