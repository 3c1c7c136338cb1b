// Package smartsock is the socket layer under quic-go. quic-go sees one
// stable virtual address per peer (its SmartAddr, port 1); smartsock owns the
// table that maps each virtual address to the real path packets take now,
// and demultiplexes the UDP socket it shares between QUIC, path probes (SMPR)
// and relay frames (CRLY).
//
// Conn implements quic-go's OOBCapablePacketConn and its batch-read interface
// over a real *net.UDPConn, so quic-go keeps its fast paths (GSO, batched
// reads with recvmmsg, ECN, path-MTU discovery) while every address it reads
// or writes passes through the path table.
//
// A peer has several paths: direct addresses and relay sessions (CRLY
// frames through a relay, set up by the node over an authenticated
// connection). A real address becomes a path of a peer only on that peer's
// word signed with its key (a hello probe), an authenticated probe, or
// because this node chose it (a dial, a contact record, a punch); a QUIC
// packet from any other address never reaches quic-go. Only one path owns
// an address: another peer naming it gets a candidate there, and takes the
// address only with stronger evidence than its owner holds it by, never
// from a peer that proved itself there and still answers (owner.go). A
// send error of a network that is away for a moment (a link flap) is a lost
// packet, not a failed connection (transient.go). A path carries data
// once the peer proved itself on it: a handshake with its certificate
// completed over it (Confirm), or it answered a probe MACed with a key from
// the QUIC session (SetPathKey). Paths are probed continuously and Select
// picks the one traffic takes (paths.go, select.go), so traffic moves between
// relay and direct paths without a new QUIC connection. It imports pki and
// smartaddr only.
package smartsock

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"hash"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// Config configures a Conn. The zero value of every field but Keypair means
// the default written on it.
type Config struct {
	// Keypair signs this node's hello probes. Required.
	Keypair *pki.Keypair
	// Logger receives rare events; nil discards.
	Logger *slog.Logger
	// MaxPeers caps the path table (default 10,000). Unconfirmed peers are
	// evicted first when it is full.
	MaxPeers int
	// HelloMaxSkew is how far a hello's timestamp may be from our clock
	// (default 2 minutes).
	HelloMaxSkew time.Duration
	// SilentAfter is how long a confirmed path may deliver nothing before a
	// signed hello from another address may replace it (default 3 s): this
	// follows a peer whose NAT mapping changed.
	SilentAfter time.Duration
	// HelloRate bounds hello signature checks per second (default 2,000).
	HelloRate int
	// StatelessResetKey, when set, must be the quic.Transport's key:
	// smartsock then answers short-header packets from unknown sources with
	// a QUIC stateless reset (at most ResetRate per second, each smaller
	// than the packet that caused it), so a peer that still holds a
	// connection to this node's previous run learns at once that it is gone.
	StatelessResetKey *[32]byte
	// ResetRate bounds stateless resets per second (default 100).
	ResetRate int
	// OnDirectPath, if set, is told whenever a peer's traffic moves to a
	// direct address (the relay server follows its endpoints with it). It
	// runs with the path table locked and must not call back into Conn.
	OnDirectPath func(id pki.Identity, addr netip.AddrPort)
	// ProbeRate bounds path probe requests answered per second (default 1,000).
	ProbeRate int
	// ProbeSourceRate bounds the probe requests checked per second from
	// one source (address, relay session and claimed peer; default 200),
	// before ProbeRate: a flood from one address spends its own budget.
	ProbeSourceRate int
	// HelloSourceRate bounds the hellos checked per second from one
	// address (default 50), before HelloRate.
	HelloSourceRate int
	// PoWBits is the network's proof-of-work difficulty: a hello from an
	// identity below it is dropped before its signature is checked, so
	// nobody fills the path table with free identities. 0 checks nothing.
	PoWBits int
	// OnRefusal, if set, is told of every refusal either way (refusal.go):
	// a hello we refused, a refusal a peer sent us. It runs on the read
	// path without locks held and must not block.
	OnRefusal func(Refusal)
}

func (c *Config) setDefaults() error {
	if c.Keypair == nil {
		return errors.New("smartsock: Config.Keypair is required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = 10000
	}
	if c.HelloMaxSkew <= 0 {
		c.HelloMaxSkew = 2 * time.Minute
	}
	if c.SilentAfter <= 0 {
		c.SilentAfter = 3 * time.Second
	}
	if c.HelloRate <= 0 {
		c.HelloRate = 2000
	}
	if c.ProbeRate <= 0 {
		c.ProbeRate = 1000
	}
	if c.ProbeSourceRate <= 0 {
		c.ProbeSourceRate = 200
	}
	if c.HelloSourceRate <= 0 {
		c.HelloSourceRate = 50
	}
	if c.ResetRate <= 0 {
		c.ResetRate = 100
	}
	return nil
}

// Bounds of one peer's paths.
const (
	maxRealPerPeer  = 8 // direct addresses
	maxRelayPerPeer = 4 // relay sessions
)

type peer struct {
	id      pki.Identity
	virt    netip.AddrPort
	virtUDP *net.UDPAddr // handed to quic-go; never mutated

	// Guarded by Conn.mu.
	paths       []*path   // every path: direct addresses and relay sessions
	current     *path     // where packets for this peer go; nil: none yet
	handshake   *path     // where the newest long-header packet came from
	lastHelloTS int64     // newest hello timestamp accepted
	key         *[32]byte // probe MAC key from the QUIC session; nil: not connected
	punchUntil  time.Time // probe unvalidated paths fast until then
	switches    uint64

	lastRecv atomic.Int64 // unix ns of the last packet from current
	sent     atomic.Bool  // quic-go wrote to this peer since the last probe tick
	lastSent int64        // unix ns of the last tick that saw a write; guarded by Conn.mu
}

func (p *peer) confirmed() bool { return p.current != nil && p.current.validated }

// path is one way to reach a peer: a direct UDP address, or a relay
// session (addr is then the relay's address).
type path struct {
	peer    *peer
	addr    netip.AddrPort
	relay   bool
	session [16]byte
	relayID pki.Identity

	// Guarded by Conn.mu.
	owner     bool // packets from addr (or with session) are this path's; see owner.go
	dialed    bool // we chose it (own dial, contact record, relay session, punch)
	validated bool // the peer proved itself on it: handshake or probe reply
	// lastSigned is when (unix ns) a hello signed by the peer last came
	// from addr.
	lastSigned int64
	srtt       time.Duration
	lastReply  time.Time
	missed     int
	probeTx    uint64    // outstanding probe, 0: none
	probeAt    time.Time // when it was sent
	lastProbe  time.Time // zero: probe at the next tick
	lastHello  time.Time // when we last announced ourselves on it
	added      time.Time

	lastRecv atomic.Int64 // unix ns of the last packet that arrived on it
}

// Conn is the packet conn quic-go runs on. See the package comment.
type Conn struct {
	cfg   Config
	udp   *net.UDPConn
	batch *ipv6.PacketConn
	self  pki.Identity

	mu       sync.RWMutex // guards the maps and peer/path fields marked above
	byVirt   map[netip.AddrPort]*peer
	byReal   map[netip.AddrPort]*path // direct paths by address
	sessions map[[16]byte]*path       // relay paths by session
	waiters  map[uint64]chan PingResult
	dialBack map[uint64]chan struct{}
	observed netip.AddrPort // our address as a peer last reported it

	helloMu    sync.Mutex // guards helloSrc, helloLimit and scratch
	helloSrc   *srcLimiter
	helloLimit limiter
	scratch    []byte

	resetMu    sync.Mutex // guards resetLimit and resetMAC
	resetLimit limiter
	resetMAC   hash.Hash

	probeMu    sync.Mutex // guards probeSrc and probeLimit
	probeSrc   *srcLimiter
	probeLimit limiter

	refuseMu    sync.Mutex // guards refuseLimit
	refuseLimit limiter

	forward  atomic.Pointer[RelayForwarder]
	fwd      fwdBatch
	relayBuf sync.Pool

	// ctlSent, when set (by tests, before any packet), is told of every
	// control packet (probe, reply, hello, reset) instead of its being sent.
	ctlSent func(dst netip.AddrPort, size int)

	txID   atomic.Uint64
	closed atomic.Bool
	done   chan struct{}
	stats  Stats
}

// RelayForwarder is the relay server's entry point: it gets every CRLY
// frame whose session is not one of ours and reports whether it was one of
// its sessions.
type RelayForwarder func(frame []byte, src netip.AddrPort, now time.Time) bool

// Stats counts packets by fate. Read with Snapshot.
type Stats struct {
	RxQUIC, RxHello, RxRelay, TxHello                           atomic.Uint64
	DropUnknownSource, DropBadProbe, DropStaleHello, DropNoPath atomic.Uint64
	DropHelloRate, DropRelay, PathSwitches, TxReset, TxCalls    atomic.Uint64
	TxProbe, RxProbe, RxProbeReply, DropProbeMAC, DropProbeRate atomic.Uint64
	TxRelayed, RxRelayed, RxForwarded, RxDialBack, ProbeLost    atomic.Uint64
	TxForwardGSO, TxRefusal, RxRefusal, DropRefusalRate         atomic.Uint64
	AddrClaimRefused, AddrReassigned                            atomic.Uint64
	DropProbeUnknown, DropProbeSrcRate, DropHelloSrcRate        atomic.Uint64
	// Send errors taken as packet loss (see transient.go), by kind.
	TxErrNetUnreach, TxErrHostUnreach, TxErrNetDown atomic.Uint64
	TxErrAddrNotAvail, TxErrNoBufs, TxErrPerm       atomic.Uint64
}

// StatsSnapshot is a copy of Stats.
type StatsSnapshot struct {
	RxQUIC            uint64 `json:"rx_quic"`
	RxHello           uint64 `json:"rx_hello"`
	RxRelay           uint64 `json:"rx_relay_frames"`
	TxHello           uint64 `json:"tx_hello"`
	DropUnknownSource uint64 `json:"drop_unknown_source"`
	DropBadProbe      uint64 `json:"drop_bad_probe"`
	DropStaleHello    uint64 `json:"drop_stale_hello"`
	DropNoPath        uint64 `json:"drop_no_path"`
	DropHelloRate     uint64 `json:"drop_hello_rate"`
	DropRelay         uint64 `json:"drop_relay_unknown_session"`
	PathSwitches      uint64 `json:"path_switches"`
	TxReset           uint64 `json:"tx_stateless_reset"`
	TxCalls           uint64 `json:"tx_calls"`
	TxProbe           uint64 `json:"tx_probe"`
	RxProbe           uint64 `json:"rx_probe_request"`
	RxProbeReply      uint64 `json:"rx_probe_reply"`
	DropProbeMAC      uint64 `json:"drop_probe_bad_mac"`
	DropProbeRate     uint64 `json:"drop_probe_rate"`
	TxRelayed         uint64 `json:"tx_relayed"`
	RxRelayed         uint64 `json:"rx_relayed"`
	RxForwarded       uint64 `json:"relay_forwarded"`
	RxDialBack        uint64 `json:"rx_dialback"`
	ProbeLost         uint64 `json:"probe_lost"`
	TxForwardGSO      uint64 `json:"relay_forward_gso_writes"`
	TxRefusal         uint64 `json:"tx_refusal"`
	RxRefusal         uint64 `json:"rx_refusal"`
	DropRefusalRate   uint64 `json:"drop_refusal_rate"`
	// A peer named an address (or relay session) another peer holds: its
	// path there stayed a candidate (refused), or took it from a weaker
	// holder (reassigned).
	AddrClaimRefused uint64 `json:"addr_claim_refused"`
	AddrReassigned   uint64 `json:"addr_reassigned"`
	// Probe requests from no connected peer; requests and hellos over
	// their source's budget (checked before the budgets all share).
	DropProbeUnknown uint64 `json:"drop_probe_unknown_peer"`
	DropProbeSrcRate uint64 `json:"drop_probe_source_rate"`
	DropHelloSrcRate uint64 `json:"drop_hello_source_rate"`
	// Send errors reported to quic-go as sent (lost) instead of failing
	// the connection: a link flap, a route change, a firewall.
	TxErrNetUnreach   uint64 `json:"tx_err_net_unreachable"`
	TxErrHostUnreach  uint64 `json:"tx_err_host_unreachable"`
	TxErrNetDown      uint64 `json:"tx_err_net_down"`
	TxErrAddrNotAvail uint64 `json:"tx_err_addr_not_available"`
	TxErrNoBufs       uint64 `json:"tx_err_no_buffers"`
	TxErrPerm         uint64 `json:"tx_err_not_permitted"`
}

// New wraps udp. The Conn owns udp from now on and closes it on Close.
func New(udp *net.UDPConn, cfg Config) (*Conn, error) {
	c, err := newConn(udp, cfg)
	if err != nil {
		return nil, err
	}
	go c.probeLoop()
	return c, nil
}

// newConn is New without the probe loop (tests drive probeTick).
func newConn(udp *net.UDPConn, cfg Config) (*Conn, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Conn{
		cfg:        cfg,
		udp:        udp,
		batch:      ipv6.NewPacketConn(udp),
		self:       cfg.Keypair.Identity(),
		byVirt:     make(map[netip.AddrPort]*peer),
		byReal:     make(map[netip.AddrPort]*path),
		sessions:   make(map[[16]byte]*path),
		waiters:    make(map[uint64]chan PingResult),
		dialBack:   make(map[uint64]chan struct{}),
		helloSrc:   newSrcLimiter(cfg.HelloSourceRate, time.Now()),
		helloLimit: newLimiter(cfg.HelloRate),
		probeSrc:   newSrcLimiter(cfg.ProbeSourceRate, time.Now()),
		resetLimit: newLimiter(cfg.ResetRate),
		probeLimit: newLimiter(cfg.ProbeRate),
		done:       make(chan struct{}),
	}
	c.refuseLimit = newLimiter(refusalRate)
	c.relayBuf.New = func() any { b := make([]byte, 0, relayBufSize); return &b }
	if cfg.StatelessResetKey != nil {
		c.resetMAC = hmac.New(sha256.New, cfg.StatelessResetKey[:])
	}
	return c, nil
}

// Stats returns a snapshot of the counters.
func (c *Conn) Stats() StatsSnapshot {
	s := &c.stats
	return StatsSnapshot{
		RxQUIC: s.RxQUIC.Load(), RxHello: s.RxHello.Load(), RxRelay: s.RxRelay.Load(), TxHello: s.TxHello.Load(),
		DropUnknownSource: s.DropUnknownSource.Load(), DropBadProbe: s.DropBadProbe.Load(),
		DropStaleHello: s.DropStaleHello.Load(), DropNoPath: s.DropNoPath.Load(),
		DropHelloRate: s.DropHelloRate.Load(), DropRelay: s.DropRelay.Load(), PathSwitches: s.PathSwitches.Load(), TxReset: s.TxReset.Load(), TxCalls: s.TxCalls.Load(),
		TxProbe: s.TxProbe.Load(), RxProbe: s.RxProbe.Load(), RxProbeReply: s.RxProbeReply.Load(), DropProbeMAC: s.DropProbeMAC.Load(),
		DropProbeRate: s.DropProbeRate.Load(), TxRelayed: s.TxRelayed.Load(), RxRelayed: s.RxRelayed.Load(), RxForwarded: s.RxForwarded.Load(),
		RxDialBack: s.RxDialBack.Load(), ProbeLost: s.ProbeLost.Load(), TxForwardGSO: s.TxForwardGSO.Load(),
		TxRefusal: s.TxRefusal.Load(), RxRefusal: s.RxRefusal.Load(), DropRefusalRate: s.DropRefusalRate.Load(),
		AddrClaimRefused: s.AddrClaimRefused.Load(), AddrReassigned: s.AddrReassigned.Load(),
		DropProbeUnknown: s.DropProbeUnknown.Load(), DropProbeSrcRate: s.DropProbeSrcRate.Load(), DropHelloSrcRate: s.DropHelloSrcRate.Load(),
		TxErrNetUnreach: s.TxErrNetUnreach.Load(), TxErrHostUnreach: s.TxErrHostUnreach.Load(), TxErrNetDown: s.TxErrNetDown.Load(),
		TxErrAddrNotAvail: s.TxErrAddrNotAvail.Load(), TxErrNoBufs: s.TxErrNoBufs.Load(), TxErrPerm: s.TxErrPerm.Load(),
	}
}

// ---- path table --------------------------------------------------------

// getOrAddLocked returns id's entry, creating it (evicting one if the table
// is full).
func (c *Conn) getOrAddLocked(id pki.Identity) *peer {
	virt := smartaddr.Virtual(id)
	if p := c.byVirt[virt]; p != nil {
		return p
	}
	if len(c.byVirt) >= c.cfg.MaxPeers {
		// Rare (only when full): evict an unconfirmed entry, else the
		// confirmed one silent the longest. Peers that left are never
		// removed otherwise, and live ones (at most the overlay's peer
		// limit, far below MaxPeers) keep their lastRecv fresh.
		var victim *peer
		for _, p := range c.byVirt {
			if victim == nil || evictBefore(p, victim) {
				victim = p
			}
		}
		c.removeLocked(victim)
	}
	p := &peer{id: id, virt: virt, virtUDP: net.UDPAddrFromAddrPort(virt)}
	c.byVirt[virt] = p
	return p
}

// evictBefore orders eviction candidates: unconfirmed first, then the
// longest silent.
func evictBefore(a, b *peer) bool {
	if a.confirmed() != b.confirmed() {
		return !a.confirmed()
	}
	return a.lastRecv.Load() < b.lastRecv.Load()
}

func (c *Conn) removeLocked(p *peer) {
	for _, pa := range p.paths {
		c.unindexLocked(pa)
	}
	delete(c.byVirt, p.virt)
}

func (c *Conn) unindexLocked(pa *path) {
	if pa.relay {
		if c.sessions[pa.session] == pa {
			delete(c.sessions, pa.session)
		}
	} else if c.byReal[pa.addr] == pa {
		delete(c.byReal, pa.addr)
	}
	pa.owner = false
}

// directLocked returns p's direct path to real, creating it if needed, and
// claims the address for it with evidence ev (see owner.go): the path may
// stay a candidate that owns nothing.
func (c *Conn) directLocked(p *peer, real netip.AddrPort, ev evidence, now time.Time) *path {
	if pa := pathAtLocked(p, real); pa != nil {
		c.claimLocked(pa, ev, now)
		return pa
	}
	n := 0
	for _, pa := range p.paths {
		if !pa.relay {
			n++
		}
	}
	if n >= maxRealPerPeer {
		// Drop the oldest direct path that carries nothing.
		var victim *path
		for _, pa := range p.paths {
			if pa.relay || pa == p.current || pa == p.handshake {
				continue
			}
			if victim == nil || (victim.validated && !pa.validated) || (victim.validated == pa.validated && pa.added.Before(victim.added)) {
				victim = pa
			}
		}
		if victim != nil {
			c.dropPathLocked(p, victim)
		}
	}
	pa := &path{peer: p, addr: real, added: now}
	p.paths = append(p.paths, pa)
	c.claimLocked(pa, ev, now)
	return pa
}

// dropPathLocked removes pa from p.
func (c *Conn) dropPathLocked(p *peer, pa *path) {
	c.unindexLocked(pa)
	for i, x := range p.paths {
		if x == pa {
			p.paths = append(p.paths[:i], p.paths[i+1:]...)
			break
		}
	}
	if p.current == pa {
		p.current = nil
	}
	if p.handshake == pa {
		p.handshake = nil
	}
}

// setCurrentLocked moves p's traffic to pa and reports a direct one.
func (c *Conn) setCurrentLocked(p *peer, pa *path) {
	p.current = pa
	if pa != nil && !pa.relay && c.cfg.OnDirectPath != nil {
		c.cfg.OnDirectPath(p.id, pa.addr)
	}
}

// AddPeer records that id is believed to be reachable at real (from a
// bootstrap string or a verified contact record) and returns the virtual
// address to dial. Handshake packets go to every such address until one
// answers; it does not replace a confirmed path. An address another peer
// holds stays that peer's: id's path there is only a candidate, which takes
// the address once id signs a hello from it or answers a probe there (and
// never while the other peer answers there).
func (c *Conn) AddPeer(id pki.Identity, real netip.AddrPort) (*net.UDPAddr, error) {
	real = unmap(real)
	if !real.IsValid() || real.Port() == 0 {
		return nil, errors.New("smartsock: invalid peer address " + real.String())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.getOrAddLocked(id)
	pa := c.directLocked(p, real, byWord, time.Now())
	pa.dialed = true
	if !p.confirmed() && pa.owner {
		p.current = pa
	}
	return p.virtUDP, nil
}

// AddRelayPath adds a relay session to id: packets go to relayAddr in CRLY
// frames with session, and frames with that session from relayAddr are id's.
// The session was set up over an authenticated connection with the relay
// (relayID), so the mapping is not taken from the network. A session ID
// that is already another peer's stays that peer's.
func (c *Conn) AddRelayPath(id, relayID pki.Identity, relayAddr netip.AddrPort, session [16]byte) *net.UDPAddr {
	relayAddr = unmap(relayAddr)
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.getOrAddLocked(id)
	if old := c.sessions[session]; old != nil {
		if old.peer != p {
			// Relays choose session IDs at random: a relay that repeats
			// one it gave another peer does not get to move that peer's
			// traffic.
			c.stats.AddrClaimRefused.Add(1)
			return p.virtUDP
		}
		c.dropPathLocked(p, old)
	}
	var relays []*path
	for _, pa := range p.paths {
		if pa.relay && pa.relayID == relayID {
			c.dropPathLocked(p, pa) // a new session with the same relay replaces the old
			break
		}
	}
	for _, pa := range p.paths {
		if pa.relay {
			relays = append(relays, pa)
		}
	}
	if len(relays) >= maxRelayPerPeer {
		c.dropPathLocked(p, relays[0])
	}
	pa := &path{peer: p, addr: relayAddr, relay: true, session: session, relayID: relayID, dialed: true, added: now, owner: true}
	p.paths = append(p.paths, pa)
	c.sessions[session] = pa
	if !p.confirmed() && p.current == nil {
		p.current = pa
	}
	pa.lastProbe = time.Time{}
	return p.virtUDP
}

// Confirm marks the path of id's newest handshake as proven: a TLS handshake
// with id's certificate completed over it. Data goes there from now on.
func (c *Conn) Confirm(id pki.Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peerLocked(id)
	if p == nil {
		return
	}
	if p.handshake != nil && p.handshake != p.current {
		c.setCurrentLocked(p, p.handshake)
		c.stats.PathSwitches.Add(1)
	}
	if p.current != nil && p.current.owner {
		p.current.validated = true
		p.current.missed = 0
	}
	now := time.Now()
	p.lastRecv.Store(now.UnixNano())
}

// SetPathKey installs the key that authenticates path probes with id: both
// ends derive it from their QUIC session (TLS exporter), so only id can
// answer our probes and only we can answer its. Probing starts now.
func (c *Conn) SetPathKey(id pki.Identity, key [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peerLocked(id)
	if p == nil {
		return
	}
	k := key
	p.key = &k
	// Proofs were made under the previous session's key (or by a previous
	// run of the peer): only the path this session's handshake used stays
	// proven; the others must answer probes under the new key first.
	for _, pa := range p.paths {
		if pa != p.current {
			pa.validated = false
			pa.srtt = 0
		}
		pa.missed = 0
		pa.lastProbe = time.Time{}
		pa.probeTx = 0
	}
}

// Forget drops id's probe key (its connection closed): its paths are no
// longer probed. They stay, unproven, as candidates for the next dial.
func (c *Conn) Forget(id pki.Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peerLocked(id)
	if p == nil {
		return
	}
	p.key = nil
	for _, pa := range p.paths {
		pa.probeTx = 0
	}
}

// PathInfo describes a peer's current path.
type PathInfo struct {
	Current   netip.AddrPort // where packets go now (the relay's address when relayed)
	Relayed   bool
	Direct    netip.AddrPort // the peer's best known direct address (may be invalid)
	Confirmed bool
	LastRecv  time.Time
}

// Path returns id's current path.
func (c *Conn) Path(id pki.Identity) (PathInfo, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p := c.peerLocked(id)
	if p == nil {
		return PathInfo{}, false
	}
	pi := PathInfo{Confirmed: p.confirmed(), LastRecv: time.Unix(0, p.lastRecv.Load())}
	if p.current != nil {
		pi.Current, pi.Relayed = p.current.addr, p.current.relay
	}
	var best *path
	for _, pa := range p.paths {
		if pa.relay || !pa.owner {
			continue
		}
		if pa == p.current || best == nil || (best != p.current && pa.lastRecv.Load() > best.lastRecv.Load()) {
			best = pa
		}
	}
	if best != nil {
		pi.Direct = best.addr
	}
	return pi, true
}

// ---- receive -------------------------------------------------------------

// ReadBatch implements quic-go's batch reader: it reads with recvmmsg into
// quic-go's buffers, unwraps frames of our relay sessions, hands probes and
// other relay frames to their handlers, drops packets from unknown sources,
// and rewrites the source of every remaining QUIC packet to its peer's
// virtual address. It never returns 0 packets without an error.
func (c *Conn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		n, err := c.batch.ReadBatch(ms, flags)
		if err != nil {
			return 0, err
		}
		if n = c.demux(ms, n, time.Now()); n > 0 {
			return n, nil
		}
	}
}

// demux dispatches the first n messages of a read batch, as they came off
// the socket: relay frames of our sessions are unwrapped, probes and other
// relay frames go to their handlers, packets from unknown sources are
// dropped (and may be answered with a stateless reset), and the source of
// every QUIC packet left is rewritten to its peer's virtual address. It
// returns how many are left in ms[:n] for quic-go. Its fast path (QUIC from
// a known source) allocates nothing.
func (c *Conn) demux(ms []ipv4.Message, n int, now time.Time) int {
	nowNS := now.UnixNano()
	forwarding := false // relay frames of others gathered: flush before returning
	c.mu.RLock()
	var lastReal netip.AddrPort
	var lastPath *path
	for i := 0; i < n; {
		m := &ms[i]
		b := m.Buffers[0][:m.N]
		ua, _ := m.Addr.(*net.UDPAddr)
		if ua == nil {
			n = removeMsg(ms, i, n)
			continue
		}
		real := ua.AddrPort()
		real = unmap(real)
		var pa *path
		if IsRelay(b) {
			c.stats.RxRelay.Add(1)
			pa = c.ourSessionLocked(b, real)
			if pa == nil {
				c.mu.RUnlock()
				if !forwarding {
					forwarding = true
					c.startForwarding()
				}
				c.handleForeignRelay(b, real, now)
				c.mu.RLock()
				lastPath = nil
				n = removeMsg(ms, i, n)
				continue
			}
			// Unwrap in place: quic-go reads the QUIC packet inside.
			m.N = copy(m.Buffers[0], b[RelayHeaderSize:])
			b = m.Buffers[0][:m.N]
			c.stats.RxRelayed.Add(1)
		}
		if IsProbe(b) {
			c.mu.RUnlock()
			c.handleProbe(b, real, pa, now)
			c.mu.RLock()
			lastPath = nil
			n = removeMsg(ms, i, n)
			continue
		}
		if pa == nil {
			pa = lastPath
			if pa == nil || real != lastReal {
				pa = c.byReal[real]
				lastReal, lastPath = real, pa
			}
		}
		if pa == nil {
			c.stats.DropUnknownSource.Add(1)
			c.mu.RUnlock()
			c.maybeReset(b, real, now)
			c.mu.RLock()
			lastPath = nil
			n = removeMsg(ms, i, n)
			continue
		}
		p := pa.peer
		if len(b) > 0 && b[0]&0x80 != 0 { // long header: a handshake
			c.mu.RUnlock()
			c.mu.Lock()
			if c.byVirt[p.virt] == p && pa.owner {
				p.handshake = pa
				if !p.confirmed() {
					p.current = pa
				}
			}
			c.mu.Unlock()
			c.mu.RLock()
			lastPath = nil
		}
		pa.lastRecv.Store(nowNS)
		if pa == p.current {
			p.lastRecv.Store(nowNS)
		}
		m.Addr = p.virtUDP
		i++
	}
	c.mu.RUnlock()
	if forwarding {
		c.endForwarding()
	}
	c.stats.RxQUIC.Add(uint64(n))
	return n
}

// ourSessionLocked returns the relay path a CRLY frame from src belongs to,
// or nil when the session is not one of ours (or src is not its relay).
func (c *Conn) ourSessionLocked(b []byte, src netip.AddrPort) *path {
	if len(b) < RelayHeaderSize {
		return nil
	}
	pa := c.sessions[[16]byte(b[4:RelayHeaderSize])]
	if pa == nil || pa.addr != src {
		return nil
	}
	return pa
}

// handleForeignRelay passes a frame that is not for one of our sessions to
// the relay server, if this node runs one.
func (c *Conn) handleForeignRelay(b []byte, src netip.AddrPort, now time.Time) {
	if f := c.forward.Load(); f != nil && len(b) >= RelayHeaderSize && (*f)(b, src, now) {
		c.stats.RxForwarded.Add(1)
		return
	}
	c.stats.DropRelay.Add(1)
}

// SetRelayForwarder installs the relay server (nil removes it).
func (c *Conn) SetRelayForwarder(f RelayForwarder) {
	if f == nil {
		c.forward.Store(nil)
		return
	}
	c.forward.Store(&f)
}

// removeMsg drops message i of the first n by moving the last one's contents
// into it (quic-go ties buffers to indices, so slices are copied, not swapped).
func removeMsg(ms []ipv4.Message, i, n int) int {
	last := n - 1
	if i != last {
		d, s := &ms[i], &ms[last]
		d.N = copy(d.Buffers[0][:cap(d.Buffers[0])], s.Buffers[0][:s.N])
		d.NN = copy(d.OOB[:cap(d.OOB)], s.OOB[:s.NN])
		d.Flags = s.Flags
		d.Addr = s.Addr
	}
	return last
}

// handleProbe handles an SMPR packet from src; pa is the relay path it came
// through, or nil when it came directly.
func (c *Conn) handleProbe(b []byte, src netip.AddrPort, pa *path, now time.Time) {
	if len(b) < ProbeHeaderSize {
		c.stats.DropBadProbe.Add(1)
		return
	}
	switch b[4] {
	case ProbeHello:
		h, err := ParseHello(b)
		if err != nil || pa != nil { // hellos map direct addresses only
			c.stats.DropBadProbe.Add(1)
			return
		}
		c.stats.RxHello.Add(1)
		c.handleHello(h, src, now)
	case ProbeRequest, ProbeReply:
		pr, err := ParseProbe(b)
		if err != nil {
			c.stats.DropBadProbe.Add(1)
			return
		}
		if pr.Type == ProbeRequest {
			c.handleRequest(&pr, src, pa, now)
		} else {
			c.handleReply(&pr, src, pa, now)
		}
	case ProbeRefusal:
		if pa != nil { // refusals answer hellos, which map direct addresses only
			c.stats.DropBadProbe.Add(1)
			return
		}
		c.handleRefusal(b, src, now)
	case ProbeDialBack:
		h, _, err := ParseProbeHeader(b)
		if err != nil || len(b) != DialBackSize {
			c.stats.DropBadProbe.Add(1)
			return
		}
		c.mu.RLock() // anyone can send these: no write lock unless it is ours
		ch := c.dialBack[h.TxID]
		c.mu.RUnlock()
		if ch != nil {
			c.mu.Lock()
			if c.dialBack[h.TxID] != ch {
				ch = nil // another copy got there first
			}
			delete(c.dialBack, h.TxID)
			c.mu.Unlock()
		}
		if ch != nil {
			c.stats.RxDialBack.Add(1)
			close(ch)
		} else {
			c.stats.DropBadProbe.Add(1)
		}
	default:
		c.stats.DropBadProbe.Add(1)
	}
}

func (c *Conn) handleHello(h *Hello, src netip.AddrPort, now time.Time) {
	if h.From == c.self {
		c.stats.DropBadProbe.Add(1)
		return
	}
	if d := now.UnixNano() - h.Timestamp; d > int64(c.cfg.HelloMaxSkew) || -d > int64(c.cfg.HelloMaxSkew) {
		c.stats.DropStaleHello.Add(1)
		return
	}
	// Cheapest checks first; the shared budget of signature checks is
	// spent only on hellos that passed them and their source's own budget,
	// so one sender cannot use it up for everyone.
	c.helloMu.Lock()
	ok := c.helloSrc.allow(&srcKey{addr: src}, now)
	c.helloMu.Unlock()
	if !ok {
		c.stats.DropHelloSrcRate.Add(1)
		return
	}
	if h.To != c.self {
		c.stats.DropBadProbe.Add(1)
		c.refuseHello(h, src, RefuseWrongIdentity, now)
		return
	}
	if c.cfg.PoWBits > 0 && pki.PoWBits(h.From, h.PoWNonce) < c.cfg.PoWBits {
		c.stats.DropBadProbe.Add(1)
		c.refuseHello(h, src, RefuseLowPoW, now)
		return
	}
	c.mu.RLock()
	replay := false
	if p := c.peerLocked(h.From); p != nil {
		replay = h.Timestamp <= p.lastHelloTS
	}
	c.mu.RUnlock()
	if replay {
		c.stats.DropStaleHello.Add(1)
		return
	}
	c.helloMu.Lock()
	if !c.helloLimit.allow(now) {
		c.helloMu.Unlock()
		c.stats.DropHelloRate.Add(1)
		return
	}
	ok = h.Verify(c.scratch)
	c.helloMu.Unlock()
	if !ok {
		c.stats.DropBadProbe.Add(1)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.getOrAddLocked(h.From)
	if h.Timestamp <= p.lastHelloTS {
		c.stats.DropStaleHello.Add(1) // a replay, or reordered
		return
	}
	p.lastHelloTS = h.Timestamp
	pa := c.directLocked(p, src, byPresence, now)
	pa.lastSigned = now.UnixNano()
	if !pa.owner {
		return // another peer holds src; h.From's path there is a candidate
	}
	silent := now.UnixNano()-p.lastRecv.Load() > int64(c.cfg.SilentAfter)
	if p.current != pa && (!p.confirmed() || silent) {
		if p.confirmed() {
			c.cfg.Logger.Info("peer moved", "peer", h.From.Short(), "from", p.current.addr, "to", src)
			c.stats.PathSwitches.Add(1)
			p.switches++
		}
		c.setCurrentLocked(p, pa)
	}
}

// A stateless reset is 5 unpredictable bytes and a 16-byte token at least
// (RFC 9000 10.3), and always shorter than the packet that caused it, so
// two endpoints can never loop and a spoofed source gains no amplification.
const (
	minResetSize   = 21
	maxResetSize   = 1 + 20 + 4 + 1 + 16 // quic-go's MinStatelessResetSize
	minResetReason = minResetSize + 1
)

// maybeReset answers a short-header packet from an unknown source with a
// stateless reset whose token quic-go computes the same way (HMAC-SHA256 of
// the destination connection ID under the shared key).
func (c *Conn) maybeReset(b []byte, dst netip.AddrPort, now time.Time) {
	if c.resetMAC == nil || len(b) < minResetReason || len(b) < 1+ConnIDLen || b[0]&0xc0 != 0x40 {
		return
	}
	var buf [maxResetSize]byte
	pkt := buf[:min(maxResetSize, len(b)-1)]
	c.resetMu.Lock()
	if !c.resetLimit.allow(now) {
		c.resetMu.Unlock()
		return
	}
	c.resetMAC.Reset()
	c.resetMAC.Write(b[1 : 1+ConnIDLen])
	var sum [sha256.Size]byte
	token := c.resetMAC.Sum(sum[:0])[:16]
	c.resetMu.Unlock()
	rand.Read(pkt[:len(pkt)-16])
	pkt[0] = pkt[0]&0x7f | 0x40
	copy(pkt[len(pkt)-16:], token)
	if err := c.writeCtl(pkt, dst); err == nil {
		c.stats.TxReset.Add(1)
	}
}

// ReadFrom implements net.PacketConn for callers other than quic-go.
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	ms := []ipv4.Message{{Buffers: [][]byte{b}, OOB: nil}}
	if _, err := c.ReadBatch(ms, 0); err != nil {
		return 0, nil, err
	}
	return ms[0].N, ms[0].Addr, nil
}

// ReadMsgUDP implements quic.OOBCapablePacketConn (quic-go uses ReadBatch).
func (c *Conn) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	ms := []ipv4.Message{{Buffers: [][]byte{b}, OOB: oob}}
	if _, err := c.ReadBatch(ms, 0); err != nil {
		return 0, 0, 0, nil, err
	}
	a, _ := ms[0].Addr.(*net.UDPAddr)
	return ms[0].N, ms[0].NN, ms[0].Flags, a, nil
}

// ---- send ----------------------------------------------------------------

// peerLocked returns id's entry, or nil. c.mu must be held.
func (c *Conn) peerLocked(id pki.Identity) *peer { return c.byVirt[smartaddr.Virtual(id)] }

// unmap turns an IPv4-mapped IPv6 address into plain IPv4: the path table
// keys on one form.
func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// dest returns where a write on pa goes.
func (pa *path) dest() dest { return dest{pa.addr, pa.relay, pa.session} }

// dest is where one write goes.
type dest struct {
	addr    netip.AddrPort
	relay   bool
	session [16]byte
}

// maxDests bounds the paths one handshake packet is copied to.
const maxDests = maxRealPerPeer + maxRelayPerPeer

// route fills ds with where a packet for virtual address a goes and returns
// how many destinations and the peer. Data goes to the current path only;
// a handshake packet goes to the path the peer's newest handshake came
// from, or, while no path is proven, to every path we chose (happy
// eyeballs: the direct addresses and relay sessions race, the first to
// answer becomes the path).
func (c *Conn) route(a netip.AddrPort, longHeader bool, ds *[maxDests]dest) (int, *peer) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p := c.byVirt[a]
	if p == nil {
		return 0, nil
	}
	if longHeader {
		if !p.confirmed() {
			n := 0
			for _, pa := range p.paths {
				if (pa.dialed || pa == p.handshake || pa == p.current) && n < maxDests {
					ds[n] = pa.dest()
					n++
				}
			}
			if n > 0 {
				return n, p
			}
		}
		if pa := p.handshake; pa != nil {
			// Answer a handshake where it came from (a restarted peer).
			ds[0] = pa.dest()
			return 1, p
		}
	}
	if pa := p.current; pa != nil {
		ds[0] = pa.dest()
		return 1, p
	}
	return 0, p
}

// WriteMsgUDP implements quic.OOBCapablePacketConn: b may hold several
// packets for GSO (oob carries the segment size), all to one address.
func (c *Conn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if addr == nil {
		return 0, 0, errors.New("smartsock: nil address")
	}
	long := len(b) > 0 && b[0]&0x80 != 0
	var ds [maxDests]dest
	nd, p := c.route(addr.AddrPort(), long, &ds)
	if nd == 0 {
		c.stats.DropNoPath.Add(1)
		return len(b), len(oob), nil // like a lost packet; quic-go recovers
	}
	if !p.sent.Load() {
		p.sent.Store(true) // the probe tick turns it into lastSent; a load is all a busy peer costs
	}
	var firstErr error
	for _, d := range ds[:nd] {
		if long && !d.relay {
			c.maybeSendHello(p, d.addr)
		}
		c.stats.TxCalls.Add(1)
		var err error
		if d.relay {
			err = c.writeRelay(d, b, oob)
		} else {
			_, _, err = c.udp.WriteMsgUDPAddrPort(b, oob, d.addr)
		}
		if err != nil && c.countTransient(err) {
			err = nil // a lost packet, not a broken connection (transient.go)
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if nd > 1 {
		// One dead candidate must not fail the handshake on the others.
		firstErr = nil
	}
	if firstErr != nil {
		return 0, 0, firstErr
	}
	return len(b), len(oob), nil
}

// WriteTo implements net.PacketConn.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("smartsock: not a UDP address")
	}
	n, _, err := c.WriteMsgUDP(b, nil, ua)
	return n, err
}

// maybeSendHello announces us on dst before a handshake packet, at most
// every 100 ms per path, so the peer's smartsock maps dst to our identity.
func (c *Conn) maybeSendHello(p *peer, dst netip.AddrPort) {
	now := time.Now()
	c.mu.Lock()
	pa := pathAtLocked(p, dst)
	if pa == nil || now.Sub(pa.lastHello) < 100*time.Millisecond {
		c.mu.Unlock()
		return
	}
	pa.lastHello = now
	c.mu.Unlock()
	h := NewHello(c.cfg.Keypair, p.id, c.txID.Add(1), now.UnixNano())
	var buf [HelloSize]byte
	if err := c.writeCtl(AppendHello(buf[:0], h), dst); err == nil {
		c.stats.TxHello.Add(1)
	}
}

// writeCtl sends a control packet of ours (not a QUIC packet).
func (c *Conn) writeCtl(b []byte, dst netip.AddrPort) error {
	if c.ctlSent != nil {
		c.ctlSent(dst, len(b))
		return nil
	}
	_, err := c.udp.WriteToUDPAddrPort(b, dst)
	return err
}

// ---- plumbing quic-go needs -------------------------------------------------

// SyscallConn exposes the real socket so quic-go can set DF, detect GSO and
// read socket options. quic-go reads through ReadBatch, never the fd directly.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.udp.SyscallConn() }

// SetReadBuffer sets the socket's receive buffer.
func (c *Conn) SetReadBuffer(n int) error { return c.udp.SetReadBuffer(n) }

// SetWriteBuffer sets the socket's send buffer.
func (c *Conn) SetWriteBuffer(n int) error { return c.udp.SetWriteBuffer(n) }

// LocalAddr returns the real local address.
func (c *Conn) LocalAddr() net.Addr { return c.udp.LocalAddr() }

// SetDeadline implements net.PacketConn.
func (c *Conn) SetDeadline(t time.Time) error { return c.udp.SetDeadline(t) }

// SetReadDeadline implements net.PacketConn.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.udp.SetReadDeadline(t) }

// SetWriteDeadline implements net.PacketConn.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.udp.SetWriteDeadline(t) }

// Close closes the socket; blocked reads return net.ErrClosed.
func (c *Conn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(c.done)
	return c.udp.Close()
}
