// Package overlay is the node: it wires identity, smartsock, QUIC and a
// packet device together, keeps one mutually authenticated QUIC connection
// per peer, and runs the packet loop that carries IPv6 packets between the
// device and QUIC datagrams. The loop does not know whether it drives a
// kernel TUN (overlay/tun) or the in-process netstack (overlay/netstack).
package overlay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"
	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/tun"
	"lukechampine.com/blake3"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/rpc"
	"github.com/korium/korium-tun/smartaddr"
	"github.com/korium/korium-tun/smartsock"
)

// Application error codes on overlay QUIC connections.
const (
	codeNormal    quic.ApplicationErrorCode = 0
	codeDuplicate quic.ApplicationErrorCode = 1 // another connection to the same peer won
	codeRefused   quic.ApplicationErrorCode = 2 // identity does not own its address, or too many peers
)

// Device headroom: wireguard's tun needs offset >= 10 for its virtio header.
const devOffset = 16

// Node is one overlay participant. Create it with New; Close stops it.
type Node struct {
	cfg      Config
	kp       *pki.Keypair
	id       pki.Identity
	addr     netip.Addr
	sock     *smartsock.Conn
	tr       *quic.Transport
	ln       *quic.Listener
	dev      tun.Device
	devName  string   // for errors: a deleted device has no name any more
	stack    netStack // non-nil when dev is our netstack
	quicConf *quic.Config
	tlsConf  pki.TLSConfig
	srvTLS   *tls.Config
	started  time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	inbound chan *pbuf // checked packets for the device writer
	bufPool sync.Pool  // *pbuf

	mu      sync.RWMutex // guards the fields below
	peers   map[pki.Identity]*peer
	byAddr  map[netip.Addr]*peer
	desired map[pki.Identity]*desired
	gen     atomic.Uint64 // bumped whenever byAddr changes
	clock   atomic.Int64  // unix ns, refreshed every supervise tick: a cheap "now" for lastUsed

	pendMu    sync.Mutex // guards the three maps below
	pending   map[netip.Addr]*held
	resolving map[netip.Addr]bool    // a resolution is in flight
	failed    map[netip.Addr]failure // resolution failed; retry after

	unreachCode byte          // the Destination Unreachable code the device understands
	icmpLimit   *rate.Limiter // ICMPv6 errors we make up (Destination Unreachable)

	dht        *dht.DHT                    // nil when Config.DisableDHT
	gossip     *gossipsub.Router           // nil when Config.DisablePubSub
	ca         *tca.Service                // nil when Config.DisablePubSub
	mem        *members                    // nil without Config.Members.CA (members.go)
	rpc        *rpc.Server                 // serves every installed peer connection
	appHandler atomic.Pointer[rpc.Handler] // SetRequestHandler's, or nil
	reqMu      sync.Mutex                  // guards incoming
	incoming   chan *Request               // made by the first IncomingRequests call

	unreachMu   sync.Mutex                 // guards unreachable
	unreachable map[pki.Identity]time.Time // failed direct dials, until when
	dialMu      sync.Mutex                 // guards dials
	dials       map[pki.Identity]*dialCall
	relaySrv    *server.Server // nil when Config.NoRelay
	dialBacks   chan struct{}  // semaphore of dial-backs in flight
	nat         natState

	sameIDChecks atomic.Int64 // replaced() checks waiting

	stats    Counters
	refusals refusalCounters
	logGate  logGate // rate-limits refusal lines

	closeOnce sync.Once
	closeErr  error
	done      chan struct{} // closed when Close has finished
	failOnce  sync.Once
	failErr   atomic.Pointer[error] // why the node stopped by itself
}

// peer is one established connection. Fields are immutable after install
// except the atomic counters.
type peer struct {
	id          pki.Identity
	addr        netip.Addr
	conn        *quic.Conn
	outbound    bool
	incarnation string // the peer certificate's serial: new on every start
	nonce       uint64 // the peer's proof-of-work nonce, from its certificate
	spiffeID    string // the SPIFFE ID in its certificate (checked against its key), or ""
	since       time.Time
	txBytes     atomic.Uint64
	txPkts      atomic.Uint64
	rxBytes     atomic.Uint64
	rxPkts      atomic.Uint64
	lastUsed    atomic.Int64   // Node.clock when a packet or request last used this peer
	lastPunch   atomic.Int64   // unix ns of our last punch attempt
	realAddr    netip.AddrPort // where its handshake came from (invalid: relayed)

	member peerMember // member, enrollee or neither (members.go)
}

// desired is a peer the node keeps a connection to (a bootstrap contact).
type desired struct {
	contact  Contact
	dialing  bool
	nextDial time.Time
	backoff  time.Duration
}

// failure is a resolution that failed, remembered until until.
type failure struct {
	until time.Time
	// noOwner: the lookup found nobody owning the address (packets to it
	// are answered with Destination Unreachable). Otherwise an owner was
	// found but not reached, which may pass: packets are only dropped.
	noOwner bool
}

// held is the one packet kept for a destination with no connection yet.
type held struct {
	pkt []byte
	at  time.Time
}

// pbuf holds one checked inbound packet on its way to the device writer.
type pbuf struct {
	b [devOffset + MaxMTU]byte
	n int
}

// Counters are the node's drop and traffic counters, by reason.
type Counters struct {
	TxNotIPv6, TxNotOverlay, TxNoPeer, TxTooBig, TxSendError atomic.Uint64
	RxMalformed, RxSpoofedSource, RxNotForUs                 atomic.Uint64
	DevReadErrors, DevWriteErrors, PendingDelivered          atomic.Uint64
	HandshakeRefused, DuplicateConns, PeersEvicted           atomic.Uint64
	PeersIdleEvicted, SPIFFERefused                          atomic.Uint64
	ResolveOK, ResolveFailed, TxResolveFailed, ResolveBusy   atomic.Uint64
	AppNoHandler, AppQueueFull                               atomic.Uint64
	RelayRefused, Punches, PunchRefused, DialBackBusy        atomic.Uint64
	ICMPUnreachSent, ICMPRateLimited, DialAddrRefused        atomic.Uint64
	Handshakes                                               atomic.Uint64 // completed QUIC handshakes, both ways
}

// netStack is what the netstack device offers Go programs.
type netStack interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	Listen(network, address string) (net.Listener, error)
	ListenPacket(network, address string) (net.PacketConn, error)
}

// New starts a node. It owns cfg.Conn and cfg.Device from now on (also
// when it fails).
func New(cfg Config) (n *Node, err error) {
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
	n = &Node{
		cfg:       c,
		kp:        c.Keypair,
		id:        c.Keypair.Identity(),
		addr:      smartaddr.FromIdentity(c.Keypair.Identity()),
		inbound:   make(chan *pbuf, inboundQueueLen),
		peers:     make(map[pki.Identity]*peer),
		byAddr:    make(map[netip.Addr]*peer),
		desired:   make(map[pki.Identity]*desired),
		pending:   make(map[netip.Addr]*held),
		resolving: make(map[netip.Addr]bool),
		failed:    make(map[netip.Addr]failure),
		started:   time.Now(),
		done:      make(chan struct{}),
	}
	n.bufPool.New = func() any { return new(pbuf) }
	n.clock.Store(time.Now().UnixNano())
	n.rpc = rpc.NewServer(rpcConfig(c))
	n.rpc.Handle(rpc.ProtoApp, n.handleApp)
	n.ctx, n.cancel = context.WithCancel(context.Background())
	node := n // the named result is nil on error returns
	defer func() {
		if err != nil {
			node.Close()
		}
	}()

	udp := c.Conn
	if udp == nil {
		if udp, err = ListenUDP(c.Listen); err != nil {
			closeGiven(c)
			return nil, err
		}
	}
	n.dev = c.Device
	if n.dev == nil {
		if n.dev, err = newNetstack(n.addr, c.MTU, c.Logger); err != nil {
			udp.Close()
			return nil, err
		}
	}
	if s, ok := n.dev.(netStack); ok {
		n.stack = s
	}
	if n.devName, err = n.dev.Name(); err != nil {
		n.devName = "(unnamed)"
	}
	n.icmpLimit = rate.NewLimiter(icmpRate, icmpRate)
	n.unreachCode = icmpAddrUnreachable
	if n.stack != nil {
		// gVisor passes only codes 0 (no route) and 4 (port) of ICMPv6
		// Destination Unreachable on to its sockets and drops code 3
		// (network/ipv6/icmp.go, handleICMP), so a netstack Dial would not
		// fail on it.
		n.unreachCode = icmpNoRoute
	}
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
	if n.sock, err = smartsock.New(udp, smartsock.Config{Keypair: c.Keypair, Logger: c.Logger, StatelessResetKey: &rk, PoWBits: c.PoWBits, OnDirectPath: onDirect, OnRefusal: n.onRefusal}); err != nil {
		udp.Close()
		return nil, err
	}
	n.tr = &quic.Transport{
		Conn:                  n.sock,
		ConnectionIDGenerator: smartsock.ConnIDGenerator{},
		StatelessResetKey:     &resetKey,
	}
	n.quicConf = &quic.Config{
		EnableDatagrams:         true,
		InitialPacketSize:       uint16(c.MTU + quicOverhead),
		DisablePathMTUDiscovery: true, // datagram size is fixed by InitialPacketSize
		KeepAlivePeriod:         c.KeepAlive,
		MaxIdleTimeout:          c.IdleTimeout,
		HandshakeIdleTimeout:    c.HandshakeTimeout,
		MaxIncomingStreams:      64, // the reference's MAX_CONCURRENT_STREAMS
		MaxIncomingUniStreams:   -1,
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
			// A DHT client until configure_nat finds us public (natLoop):
			// nobody may route to us before we know they can.
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
	n.initRelay()
	if err := n.initCA(); err != nil {
		return nil, err
	}
	n.tlsConf = pki.TLSConfig{Keypair: c.Keypair, PoWBits: c.PoWBits, Refused: n.onCertReject,
		SPIFFE: pki.SPIFFEConfig{TrustDomain: c.TrustDomain, Workload: c.Workload}}
	if n.srvTLS, err = n.memberTLS().Server(nil); err != nil {
		return nil, err
	}
	if n.ln, err = n.tr.Listen(n.srvTLS, n.quicConf); err != nil {
		return nil, fmt.Errorf("overlay: listen: %w", err)
	}
	for _, b := range c.Bootstrap {
		n.AddPeer(b)
	}
	n.goLoop(n.acceptLoop)
	n.goLoop(n.deviceReadLoop)
	n.goLoop(n.deviceWriteLoop)
	n.goLoop(n.supervise)
	n.goLoop(n.natLoop)
	if n.dht != nil {
		n.goLoop(n.dhtJoin)
	}
	c.Logger.Info("node started", "identity", n.id.String(), "address", n.addr.String(), "listen", udp.LocalAddr().String())
	return n, nil
}

func closeGiven(c Config) {
	if c.Conn != nil {
		c.Conn.Close()
	}
	if c.Device != nil {
		c.Device.Close()
	}
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

func (n *Node) goLoop(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

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
		// CONNECTION_CLOSE and drops us at once, not after its idle timeout.
		n.mu.Lock()
		peers := make([]*peer, 0, len(n.peers))
		for _, p := range n.peers {
			peers = append(peers, p)
		}
		n.mu.Unlock()
		var cwg sync.WaitGroup
		for _, p := range peers {
			cwg.Add(1)
			go func() { defer cwg.Done(); p.conn.CloseWithError(codeNormal, "node closing") }()
		}
		cwg.Wait()
		n.cancel()
		if n.dht != nil {
			n.dht.Close()
		}
		n.closeCA()
		if n.gossip != nil {
			n.gossip.Close()
		}
		if n.tr != nil {
			errs = append(errs, n.tr.Close())
		}
		if n.sock != nil {
			errs = append(errs, n.sock.Close())
		}
		if n.dev != nil {
			errs = append(errs, n.dev.Close())
		}
		n.wg.Wait()
		n.closeErr = errors.Join(errs...)
		close(n.done)
	})
	return n.closeErr
}

// ---- connections --------------------------------------------------------------

// AddPeer keeps a connection to c: it is dialed now and redialed with
// backoff whenever it drops.
func (n *Node) AddPeer(c Contact) {
	if c.Identity == n.id {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if d, ok := n.desired[c.Identity]; ok {
		d.contact = c
		return
	}
	n.desired[c.Identity] = &desired{contact: c}
	select {
	case <-n.ctx.Done():
	default:
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.kickDial(c.Identity) }()
	}
}

// Connect dials c once and returns when the connection is up (or an
// existing one is), or the dial failed. If c names relays, sessions through
// them race the direct address (see SmartConnect).
func (n *Node) Connect(ctx context.Context, c Contact) error {
	var addrs []netip.AddrPort
	if c.Addr.IsValid() {
		addrs = append(addrs, c.Addr)
	}
	return n.SmartConnect(ctx, c.Identity, addrs, c.Relays)
}

// dialCall is one dial in progress; others wanting the same peer wait.
type dialCall struct {
	done   chan struct{}
	err    error
	cancel context.CancelCauseFunc // fails the dial (the peer refused it)
	paths  int                     // addresses and relays it races
}

// dialOnce runs f unless a dial to id is already running, in which case it
// waits for that one: two dials to one peer would only race and replace
// each other. f's context is canceled with a *RefusedError when the peer
// refuses the dial; paths is how many addresses and relays it races.
func (n *Node) dialOnce(ctx context.Context, id pki.Identity, paths int, f func(context.Context) error) error {
	for waited := 0; ; waited++ {
		n.dialMu.Lock()
		if n.dials == nil {
			n.dials = make(map[pki.Identity]*dialCall)
		}
		c := n.dials[id]
		if c == nil {
			break // we dial; dialMu stays locked until registered below
		}
		n.dialMu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if n.peer(id) != nil {
			return nil
		}
		if waited > 0 {
			return c.err
		}
		// That dial failed; ours may know more (relays), so try once.
	}
	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c := &dialCall{done: make(chan struct{}), cancel: cancel, paths: paths}
	n.dials[id] = c
	n.dialMu.Unlock()
	c.err = f(dctx)
	n.dialMu.Lock()
	delete(n.dials, id)
	n.dialMu.Unlock()
	close(c.done)
	return c.err
}

// dial runs the handshake with id over every path smartsock has for it;
// addr only names the attempt in errors.
func (n *Node) dial(ctx context.Context, id pki.Identity, addr netip.AddrPort) error {
	virt := net.UDPAddrFromAddrPort(smartaddr.Virtual(id))
	tlsConf, err := n.memberTLS().Client(id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.HandshakeTimeout)
	defer cancel()
	conn, err := n.tr.Dial(ctx, virt, tlsConf, n.quicConf)
	if err != nil {
		var refused *RefusedError
		if errors.As(context.Cause(ctx), &refused) {
			return refused // it names the peer and the address
		}
		if errors.Is(err, context.DeadlineExceeded) && n.ctx.Err() == nil {
			// A node drops hellos addressed to another identity, so a wrong
			// identity looks like silence.
			return fmt.Errorf("overlay: dial %s at %s: no handshake answer within %v (the node there is down, unreachable, or is not %s): %w",
				id.Short(), addr, n.cfg.HandshakeTimeout, id, err)
		}
		return fmt.Errorf("overlay: dial %s at %s: %w", id.Short(), addr, err)
	}
	_, err = n.install(conn, id, true)
	return err
}

func (n *Node) acceptLoop() {
	for {
		conn, err := n.ln.Accept(n.ctx)
		if err != nil {
			return
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			id, err := pki.PeerIdentity(conn.ConnectionState().TLS)
			if err != nil {
				n.refused(weRefusedBadCert, id, netip.AddrPort{}, fmt.Sprintf("refused a connection without an identity: %v", err))
				conn.CloseWithError(codeRefused, "no identity")
				return
			}
			n.install(conn, id, false)
		}()
	}
}

// install makes conn the connection to id, unless an existing one wins
// (see preferNew). It checks that the peer's certificate key owns the
// virtual address quic-go saw: smartsock's mapping was only a claim.
func (n *Node) install(conn *quic.Conn, id pki.Identity, outbound bool) (*peer, error) {
	n.stats.Handshakes.Add(1)
	cs := conn.ConnectionState()
	certID, err := pki.PeerIdentity(cs.TLS)
	ra, _ := conn.RemoteAddr().(*net.UDPAddr)
	realAddr := n.handshakeAddr(id)
	if err != nil || certID != id || ra == nil || !smartaddr.Owns(id, ra.AddrPort().Addr()) {
		n.refused(weRefusedNotOwner, certID, realAddr, fmt.Sprintf("refused %s…: its identity does not own the address it used", certID.Short()))
		conn.CloseWithError(codeRefused, "identity does not own its address")
		return nil, fmt.Errorf("overlay: peer %s does not own address %v", certID.Short(), conn.RemoteAddr())
	}
	if !cs.SupportsDatagrams.Remote {
		n.refused(weRefusedNoDatagrams, id, realAddr, fmt.Sprintf("refused %s…: it does not support QUIC datagrams", id.Short()))
		conn.CloseWithError(codeRefused, "datagrams required")
		return nil, errors.New("overlay: peer does not support QUIC datagrams")
	}
	p := &peer{
		id:          id,
		addr:        smartaddr.FromIdentity(id),
		conn:        conn,
		outbound:    outbound,
		incarnation: cs.TLS.PeerCertificates[0].SerialNumber.String(),
		since:       time.Now(),
		realAddr:    realAddr,
	}
	p.nonce, _ = pki.PeerNonce(cs.TLS)
	p.spiffeID = pki.PeerSPIFFEID(cs.TLS.PeerCertificates)
	if err := n.admit(p, cs.TLS); err != nil {
		n.stats.HandshakeRefused.Add(1)
		conn.CloseWithError(codeRefused, "not a member")
		return nil, fmt.Errorf("overlay: peer %s: %w", id.Short(), err)
	}
	p.lastUsed.Store(n.clock.Load())
	n.mu.Lock()
	old := n.peers[id]
	var evicted *peer
	if old == nil && len(n.peers) >= n.cfg.MaxPeers {
		// The reference's connection cache: evict the least recently used
		// peer that is not a bootstrap contact.
		if evicted = n.lruPeerLocked(); evicted == nil {
			n.mu.Unlock()
			n.refused(weRefusedPeerLimit, id, realAddr, fmt.Sprintf("refused %s…: the peer limit (%d) is reached and every peer is a bootstrap contact", id.Short(), n.cfg.MaxPeers))
			conn.CloseWithError(codeRefused, "too many peers")
			return nil, errors.New("overlay: peer limit reached")
		}
		delete(n.peers, evicted.id)
		delete(n.byAddr, evicted.addr)
	}
	if old != nil && !preferNew(n.id, id, connInfo{old.outbound, old.incarnation}, connInfo{outbound, p.incarnation}) {
		n.mu.Unlock()
		n.stats.DuplicateConns.Add(1)
		conn.CloseWithError(codeDuplicate, "duplicate connection")
		return old, nil
	}

	if old != nil && old.conn.Context().Err() == nil {
		n.replaced(id, old.realAddr, realAddr)
	}
	n.peers[id] = p
	if p.enrollee() { // not routable: no IP packets to or from it
		delete(n.byAddr, p.addr)
	} else {
		n.byAddr[p.addr] = p
	}
	n.gen.Add(1)
	if d := n.desired[id]; d != nil {
		d.backoff = 0
	}
	n.mu.Unlock()
	n.sock.Confirm(id)
	if key, err := smartsock.PathKey(cs.TLS); err == nil {
		n.sock.SetPathKey(id, key)
	}
	if evicted != nil {
		n.stats.PeersEvicted.Add(1)
		if n.gossip != nil {
			n.gossip.RemovePeer(evicted.id)
		}
		evicted.conn.CloseWithError(codeNormal, "evicted: peer limit")
	}
	if old != nil {
		n.stats.DuplicateConns.Add(1)
		old.conn.CloseWithError(codeDuplicate, "replaced")
	}
	if n.gossip != nil && !p.enrollee() {
		n.gossip.AddPeer(id, n.peerIP(id), outbound)
	}
	n.cfg.Logger.Info("peer connected", "peer", id.String(), "address", p.addr.String(), "outbound", outbound, "path", n.pathString(id))
	n.wg.Add(2)
	go func() { defer n.wg.Done(); n.receiveLoop(p) }()
	// Serve returns when the connection closes (also when it is replaced
	// by a duplicate) after its handlers have returned.
	go func() { defer n.wg.Done(); n.rpcFor(p).Serve(n.ctx, conn, id) }()
	if !p.enrollee() {
		n.flushPending(p)
	}
	return p, nil
}

// idleSweep is how often evictIdle runs.
const idleSweep = 15 * time.Second

// evictIdle closes connections nobody used for Config.IdleEvict: no packet,
// no request either way. Bootstrap peers, our relays and peers that share a
// pubsub topic with us (their mesh may be quiet) are kept.
func (n *Node) evictIdle(now time.Time) {
	if n.cfg.IdleEvict <= 0 {
		return
	}
	keep := make(map[pki.Identity]bool)
	if n.gossip != nil {
		for _, t := range n.gossip.Topics() {
			for _, pi := range n.gossip.TopicPeers(t) {
				keep[pi.ID] = true
			}
		}
	}
	n.nat.mu.Lock()
	for _, r := range n.nat.relays {
		keep[r] = true
	}
	n.nat.mu.Unlock()
	cutoff := now.Add(-n.cfg.IdleEvict).UnixNano()
	var idle []*peer
	n.mu.RLock()
	for id, p := range n.peers {
		if n.desired[id] == nil && !keep[id] && p.lastUsed.Load() < cutoff {
			idle = append(idle, p)
		}
	}
	n.mu.RUnlock()
	for _, p := range idle {
		n.stats.PeersIdleEvicted.Add(1)
		n.cfg.Logger.Debug("closing idle connection", "peer", p.id.Short())
		p.conn.CloseWithError(codeNormal, "idle")
	}
}

// touch marks id's connection as used (an inbound request).
func (n *Node) touch(id pki.Identity) {
	if p := n.peer(id); p != nil {
		p.lastUsed.Store(n.clock.Load())
	}
}

// lruPeerLocked returns the least recently used peer that is not a
// bootstrap contact, or nil. n.mu must be held.
func (n *Node) lruPeerLocked() *peer {
	var lru *peer
	for id, p := range n.peers {
		if n.desired[id] != nil {
			continue
		}
		if lru == nil || p.lastUsed.Load() < lru.lastUsed.Load() {
			lru = p
		}
	}
	return lru
}

// connInfo is what the duplicate rule looks at.
type connInfo struct {
	outbound    bool   // we dialed it
	incarnation string // the peer's certificate serial
}

// preferNew decides, identically on both ends, which of two connections
// between self and peer survives:
//   - a connection from a new incarnation of the peer (it restarted) wins;
//   - of two dialed by the same side, the newer wins (a redial);
//   - of two dialed by opposite sides at once, the one dialed by the smaller
//     identity wins, which both ends compute the same way.
func preferNew(self, peer pki.Identity, old, new connInfo) bool {
	if old.incarnation != new.incarnation {
		return true
	}
	if old.outbound == new.outbound {
		return true
	}
	dialer := func(c connInfo) pki.Identity {
		if c.outbound {
			return self
		}
		return peer
	}
	nd, od := dialer(new), dialer(old)
	return bytes.Compare(nd[:], od[:]) < 0
}

func (n *Node) peer(id pki.Identity) *peer {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.peers[id]
}

func (n *Node) removePeer(p *peer) {
	n.mu.Lock()
	removed := n.peers[p.id] == p
	if removed {
		delete(n.peers, p.id)
		delete(n.byAddr, p.addr)
		n.gen.Add(1)
	}
	n.mu.Unlock()
	if removed {
		n.sock.Forget(p.id)
	}
	if removed && n.gossip != nil {
		n.gossip.RemovePeer(p.id)
	}
	cause := context.Cause(p.conn.Context())
	n.closedAsRefused(p, cause)
	n.cfg.Logger.Info("peer disconnected", "peer", p.id.String(), "reason", cause)
}

// supervise redials desired peers with backoff and expires held packets.
func (n *Node) supervise() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var lastExpire, lastIdleSweep time.Time
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-t.C:
			n.clock.Store(now.UnixNano())
			n.mu.RLock()
			var due []pki.Identity
			for id, d := range n.desired {
				if n.peers[id] == nil && !d.dialing && now.After(d.nextDial) {
					due = append(due, id)
				}
			}
			n.mu.RUnlock()
			for _, id := range due {
				n.wg.Add(1)
				go func() { defer n.wg.Done(); n.kickDial(id) }()
			}
			n.expirePending(now)
			n.punchRelayed(now)
			if now.Sub(lastIdleSweep) > idleSweep {
				n.evictIdle(now)
				lastIdleSweep = now
			}
			if n.relaySrv != nil && now.Sub(lastExpire) > 5*time.Second {
				n.relaySrv.Expire(now)
				lastExpire = now
			}
		}
	}
}

func (n *Node) kickDial(id pki.Identity) {
	n.mu.Lock()
	d := n.desired[id]
	if d == nil || d.dialing || n.peers[id] != nil {
		n.mu.Unlock()
		return
	}
	d.dialing = true
	c := d.contact
	n.mu.Unlock()
	err := n.Connect(n.ctx, c)
	n.mu.Lock()
	d.dialing = false
	if err != nil {
		d.backoff = min(max(2*d.backoff, 500*time.Millisecond), 15*time.Second)
		d.nextDial = time.Now().Add(d.backoff)
	}
	retry := d.backoff // read under n.mu: the next kickDial writes it
	n.mu.Unlock()
	if err != nil && n.ctx.Err() == nil {
		n.cfg.Logger.Debug("dial failed", "peer", id.Short(), "err", err, "retry_in", retry)
	}
}

func (n *Node) pathString(id pki.Identity) string {
	pi, ok := n.sock.Path(id)
	if !ok {
		return ""
	}
	return pi.Current.String()
}

// ---- packet loop: device -> peers ---------------------------------------------

func (n *Node) deviceReadLoop() {
	batch := n.dev.BatchSize()
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, devOffset+65535)
	}
	var (
		cache   routeCache
		ptbBuf  = make([]byte, devOffset+MinMTU)
		ptbBufs = make([][]byte, 1)
		errRun  int
	)
	for {
		cnt, err := n.dev.Read(bufs, sizes, devOffset)
		for i := 0; i < cnt; i++ {
			pkt := bufs[i][devOffset : devOffset+sizes[i]]
			switch p, v := n.route(pkt, &cache); v {
			case routeSend:
				n.sendDatagram(p, pkt, ptbBuf, ptbBufs)
			case routeHold:
				n.hold(cache.addr, pkt)
			case routeTooBig:
				n.sendTooBig(pkt, n.cfg.MTU, ptbBuf, ptbBufs)
			}
		}
		if err != nil {
			if n.ctx.Err() != nil {
				return
			}
			if errors.Is(err, tun.ErrTooManySegments) {
				// One super-packet did not fit our buffers; the device is fine.
				n.stats.DevReadErrors.Add(1)
				continue
			}
			n.stats.DevReadErrors.Add(1)
			if deviceGone(err) {
				n.fail(fmt.Errorf("device %s is gone (%v): the node stops", n.devName, err))
				return
			}
			// As wireguard-go's receive path: a bounded run of temporary
			// errors, each waited out a little longer, then give up.
			if errRun++; errRun > maxDevErrors {
				n.fail(fmt.Errorf("device %s: %d reads in a row failed, the last with %v: the node stops", n.devName, errRun, err))
				return
			}
			if errRun == 1 && n.logGate.allow("device read", time.Now()) {
				n.cfg.Logger.Warn("device read failed; retrying", "device", n.devName, "err", err)
			}
			select {
			case <-n.ctx.Done():
				return
			case <-time.After(devErrBackoff(errRun)):
			}
			continue
		}
		errRun = 0
	}
}

// maxDevErrors is how many device reads in a row may fail before the node
// gives up on the device (about 4 s of backoff in all).
const maxDevErrors = 10

// devErrBackoff is the wait after the nth failed read in a row: 10 ms,
// doubling, at most 1 s.
func devErrBackoff(n int) time.Duration {
	return min(10*time.Millisecond<<min(n-1, 10), time.Second)
}

// deviceGone reports whether a device error means the device will never
// work again: closed under us (the kernel TUN's reads fail so once its
// interface is deleted), or the device no longer exists.
func deviceGone(err error) bool {
	if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrNotExist) {
		return true
	}
	for _, e := range goneErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// fail stops the node because it cannot go on (its device is gone): it logs
// err, makes Err return it and Done close, and closes the node. Close runs
// in a goroutine of its own, since the caller is one of the goroutines Close
// waits for.
func (n *Node) fail(err error) {
	n.failOnce.Do(func() {
		n.failErr.Store(&err)
		n.cfg.Logger.Error("node failed", "err", err)
		go n.Close()
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

// routeCache remembers the last destination's peer until the peer set
// changes, so a stream of packets to one peer takes no lock.
type routeCache struct {
	addr netip.Addr
	peer *peer
	gen  uint64
}

type routeVerdict int

const (
	routeDrop   routeVerdict = iota // counted; nothing to do
	routeSend                       // send to the returned peer
	routeHold                       // no connection to the destination yet
	routeTooBig                     // answer with Packet Too Big
)

// route decides what happens to one packet read from the device.
func (n *Node) route(pkt []byte, c *routeCache) (*peer, routeVerdict) {
	dst, ok := ipv6Dst(pkt)
	if !ok {
		n.stats.TxNotIPv6.Add(1)
		return nil, routeDrop
	}
	if !smartaddr.IsOverlay(dst) || dst == n.addr {
		n.stats.TxNotOverlay.Add(1) // router solicitations, MLD, ...
		return nil, routeDrop
	}
	if len(pkt) > n.cfg.MTU {
		return nil, routeTooBig
	}
	if g := n.gen.Load(); dst != c.addr || g != c.gen {
		n.mu.RLock()
		p := n.byAddr[dst]
		n.mu.RUnlock()
		c.addr, c.peer, c.gen = dst, p, g
	}
	if c.peer == nil {
		return nil, routeHold
	}
	return c.peer, routeSend
}

func (n *Node) sendDatagram(p *peer, pkt, ptbBuf []byte, ptbBufs [][]byte) {
	err := p.conn.SendDatagram(pkt)
	if err == nil {
		p.lastUsed.Store(n.clock.Load())
		p.txPkts.Add(1)
		p.txBytes.Add(uint64(len(pkt)))
		return
	}
	var tooLarge *quic.DatagramTooLargeError
	if errors.As(err, &tooLarge) {
		n.sendTooBig(pkt, int(tooLarge.MaxDatagramPayloadSize), ptbBuf, ptbBufs)
		return
	}
	n.stats.TxSendError.Add(1)
}

// sendTooBig answers an oversized packet with ICMPv6 Packet Too Big.
func (n *Node) sendTooBig(pkt []byte, mtu int, buf []byte, bufs [][]byte) {
	n.stats.TxTooBig.Add(1)
	if !mayAnswerWithError(pkt) {
		return
	}
	out := appendPacketTooBig(buf[:devOffset], pkt, max(mtu, MinMTU))
	bufs[0] = out
	if _, err := n.dev.Write(bufs, devOffset); err != nil {
		n.stats.DevWriteErrors.Add(1)
	}
}

// ICMPv6 errors the node makes up on its own (Destination Unreachable) are
// limited to icmpRate a second with bursts of as many, whatever floods the
// device with packets to dead addresses.
const icmpRate = 100

// sendUnreachable answers pkt, a packet for an overlay address nobody owns
// (or nobody we can reach), with ICMPv6 Destination Unreachable, so the
// program that sent it fails now instead of retrying until its timeout. The
// answer goes through the device writer's queue; it is rate-limited and
// dropped (counted) when the queue is full.
func (n *Node) sendUnreachable(pkt []byte) {
	if !mayAnswerWithError(pkt) {
		return
	}
	if !n.icmpLimit.Allow() {
		n.stats.ICMPRateLimited.Add(1)
		return
	}
	b := n.bufPool.Get().(*pbuf)
	b.n = len(appendDstUnreachable(b.b[devOffset:devOffset], pkt, n.unreachCode))
	select {
	case n.inbound <- b:
		n.stats.ICMPUnreachSent.Add(1)
	default:
		n.bufPool.Put(b)
		n.stats.ICMPRateLimited.Add(1)
	}
}

// maxResolving bounds resolutions in flight at once.
const maxResolving = 64

// hold keeps the newest packet for an overlay address with no connection,
// for PendingTimeout, and starts one resolution of the address if a
// Resolver is set; a connection to its owner delivers the packet. A packet
// to an address nobody was found to own moments ago is answered with
// Destination Unreachable at once.
func (n *Node) hold(dst netip.Addr, pkt []byte) {
	n.pendMu.Lock()
	if f, ok := n.failed[dst]; ok && time.Now().Before(f.until) {
		n.pendMu.Unlock()
		n.stats.TxResolveFailed.Add(1)
		if f.noOwner {
			n.sendUnreachable(pkt)
		}
		return
	}
	defer n.pendMu.Unlock()
	h := n.pending[dst]
	if h == nil {
		if len(n.pending) >= n.cfg.MaxPending {
			n.stats.TxNoPeer.Add(1)
			return
		}
		h = &held{}
		n.pending[dst] = h
	} else {
		n.stats.TxNoPeer.Add(1) // the older held packet is replaced
	}
	h.pkt = append(h.pkt[:0], pkt...)
	h.at = time.Now()
	if n.cfg.Resolver == nil || n.resolving[dst] {
		return
	}
	if len(n.resolving) >= maxResolving {
		n.stats.ResolveBusy.Add(1)
		return
	}
	n.resolving[dst] = true
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.resolve(dst) }()
}

// resolve asks the Resolver who owns dst and connects to the first answer
// that proves it (identity pinned in the handshake, address derived from
// the identity). Installing the connection delivers the held packet. When
// nobody owns dst the held packet is answered with Destination
// Unreachable; when its owner was found but not reached (which may pass:
// a relay being set up, a NAT) it is only dropped.
func (n *Node) resolve(dst netip.Addr) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.ResolveTimeout)
	defer cancel()
	ok := false
	contacts, err := n.cfg.Resolver(ctx, dst)
	noOwner := err != nil
	if err == nil {
		// One handshake races every address (and relay) of the owner.
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
			noOwner = true
			err = errors.New("no contact owns the address")
		} else if err = n.smartConnect(ctx, owner.Identity, addrs, owner.Relays, false); err == nil {
			ok = true
		}
	}
	var answer []byte
	n.pendMu.Lock()
	delete(n.resolving, dst)
	if !ok && n.ctx.Err() == nil {
		if len(n.failed) < n.cfg.MaxPending {
			n.failed[dst] = failure{until: time.Now().Add(n.cfg.ResolveFailTTL), noOwner: noOwner}
		}
		if h := n.pending[dst]; h != nil {
			delete(n.pending, dst)
			n.stats.TxResolveFailed.Add(1)
			if noOwner {
				answer = h.pkt
			}
		}
	}
	n.pendMu.Unlock()
	if ok {
		n.stats.ResolveOK.Add(1)
		return
	}
	n.stats.ResolveFailed.Add(1)
	n.cfg.Logger.Debug("resolution failed", "address", dst.String(), "err", err)
	if answer != nil {
		n.sendUnreachable(answer)
	}
}

// resolveFailed reports whether dst was found to have no owner moments ago.
func (n *Node) resolveFailed(dst netip.Addr) bool {
	n.pendMu.Lock()
	defer n.pendMu.Unlock()
	f, ok := n.failed[dst]
	return ok && f.noOwner && time.Now().Before(f.until)
}

// expirePending drops held packets nobody resolved in time, and forgets
// failed resolutions past their TTL. Without a Resolver nobody will ever
// own an address we have no connection to: those packets are answered with
// Destination Unreachable (with one, they waited for a busy resolver).
func (n *Node) expirePending(now time.Time) {
	var expired [][]byte
	n.pendMu.Lock()
	for a, h := range n.pending {
		if now.Sub(h.at) > n.cfg.PendingTimeout && !n.resolving[a] {
			delete(n.pending, a)
			n.stats.TxNoPeer.Add(1)
			if n.cfg.Resolver == nil {
				expired = append(expired, h.pkt)
			}
		}
	}
	for a, f := range n.failed {
		if now.After(f.until) {
			delete(n.failed, a)
		}
	}
	n.pendMu.Unlock()
	for _, pkt := range expired {
		n.sendUnreachable(pkt)
	}
}

func (n *Node) flushPending(p *peer) {
	n.pendMu.Lock()
	h := n.pending[p.addr]
	delete(n.pending, p.addr)
	n.pendMu.Unlock()
	if h != nil && p.conn.SendDatagram(h.pkt) == nil {
		n.stats.PendingDelivered.Add(1)
		p.txPkts.Add(1)
		p.txBytes.Add(uint64(len(h.pkt)))
	}
}

// ---- packet loop: peers -> device -------------------------------------------

// pollCtx makes quic-go's ReceiveDatagram non-blocking: its Done channel is
// closed but Err is nil, so ReceiveDatagram returns a queued datagram, or
// (nil, nil) when the queue is empty (TestPollReceive pins this behaviour).
type pollCtx struct{ context.Context }

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (pollCtx) Done() <-chan struct{} { return closedChan }
func (pollCtx) Err() error            { return nil }

var pollContext = pollCtx{context.Background()}

// inboundQueueLen bounds packets between the receive loops and the device
// writer (at most inboundQueueLen * 1.4 KiB). It is large so that quic-go's
// own 128-entry datagram queue, which drops when full, is always drained
// quickly even while the writer is inside a slow device write.
const inboundQueueLen = 4096

// receiveLoop drains p's datagrams: it blocks for the first, takes whatever
// else is queued without blocking, checks each and queues it for the
// device writer. It does nothing slow, so quic-go's queue never overflows.
// A packet must be IPv6 from p's own SmartAddr to ours: a peer can never
// speak with another peer's address.
func (n *Node) receiveLoop(p *peer) {
	defer n.removePeer(p)
	ctx := n.ctx
	for {
		d, err := p.conn.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		for d != nil {
			if b := n.acceptInbound(p, d); b != nil {
				select {
				case n.inbound <- b:
				case <-n.ctx.Done():
					return
				}
			}
			d, _ = p.conn.ReceiveDatagram(pollContext)
		}
	}
}

// deviceWriteLoop writes queued packets to the device in batches. It copies
// each into a 64 KiB buffer of its own so the kernel TUN can coalesce
// consecutive TCP segments into one (GRO) in place.
func (n *Node) deviceWriteLoop() {
	max := n.dev.BatchSize()
	gro := make([][]byte, max)
	for i := range gro {
		gro[i] = make([]byte, devOffset+65535)
	}
	bufs := make([][]byte, 0, max)
	for {
		var b *pbuf
		select {
		case b = <-n.inbound:
		case <-n.ctx.Done():
			return
		}
		for {
			bufs = append(bufs, gro[len(bufs)][:devOffset+copy(gro[len(bufs)][devOffset:], b.b[devOffset:devOffset+b.n])])
			n.bufPool.Put(b)
			if len(bufs) == max {
				break
			}
			select {
			case b = <-n.inbound:
				continue
			default:
			}
			break
		}
		if _, err := n.dev.Write(bufs, devOffset); err != nil && n.ctx.Err() == nil {
			n.stats.DevWriteErrors.Add(1)
			if deviceGone(err) {
				n.fail(fmt.Errorf("device %s is gone (%v): the node stops", n.devName, err))
				return
			}
		}
		bufs = bufs[:0]
	}
}

// acceptInbound checks one datagram from p and copies it into a device
// buffer, or counts why it was dropped and returns nil.
func (n *Node) acceptInbound(p *peer, d []byte) *pbuf {
	src, dst, ok := ipv6Addrs(d)
	switch {
	case !ok || len(d) > n.cfg.MTU:
		// Larger than our MTU (a peer can send a datagram a little over
		// it) would be cut by the copy below, or exceed the device's MTU.
		n.stats.RxMalformed.Add(1)
		return nil
	case src != p.addr:
		n.stats.RxSpoofedSource.Add(1)
		return nil
	case dst != n.addr:
		n.stats.RxNotForUs.Add(1)
		return nil
	case p.enrollee():
		n.countEnrolleeIP()
		return nil
	}
	p.lastUsed.Store(n.clock.Load())
	p.rxPkts.Add(1)
	p.rxBytes.Add(uint64(len(d)))
	b := n.bufPool.Get().(*pbuf)
	b.n = copy(b.b[devOffset:], d)
	return b
}
