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
// A real address becomes a path of a peer only on that peer's word signed
// with its key (a hello probe), or because this node chose to dial it; a
// QUIC packet from any other address never reaches quic-go. A path carries
// data traffic once a handshake with the peer's certificate completed over
// it (Confirm). It imports pki and smartaddr only.
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
	// PoWBits is the network's proof-of-work difficulty: a hello from an
	// identity below it is dropped before its signature is checked, so
	// nobody fills the path table with free identities. 0 checks nothing.
	PoWBits int
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
	if c.ResetRate <= 0 {
		c.ResetRate = 100
	}
	return nil
}

// maxRealPerPeer bounds how many real addresses map to one peer.
const maxRealPerPeer = 8

type peer struct {
	id      pki.Identity
	virt    netip.AddrPort
	virtUDP *net.UDPAddr // handed to quic-go; never mutated

	// Guarded by Conn.mu.
	current     netip.AddrPort   // where packets for this peer go
	confirmed   bool             // a handshake completed over current
	reals       []netip.AddrPort // every real address mapped to this peer
	lastHelloTS int64            // newest hello timestamp accepted
	lastHelloTx time.Time        // when we last sent this peer a hello
	handshake   netip.AddrPort   // source of the newest long-header packet

	lastRecv atomic.Int64 // unix ns of the last packet from current
}

// Conn is the packet conn quic-go runs on. See the package comment.
type Conn struct {
	cfg   Config
	udp   *net.UDPConn
	batch *ipv6.PacketConn
	self  pki.Identity

	mu     sync.RWMutex // guards the maps and peer fields marked above
	byVirt map[netip.AddrPort]*peer
	byReal map[netip.AddrPort]*peer

	helloMu    sync.Mutex // guards helloLimit and scratch
	helloLimit limiter
	scratch    []byte

	resetMu    sync.Mutex // guards resetLimit and resetMAC
	resetLimit limiter
	resetMAC   hash.Hash

	txID   atomic.Uint64
	closed atomic.Bool
	stats  Stats
}

// Stats counts packets by fate. Read with Snapshot.
type Stats struct {
	RxQUIC, RxHello, RxRelay, TxHello                           atomic.Uint64
	DropUnknownSource, DropBadProbe, DropStaleHello, DropNoPath atomic.Uint64
	DropHelloRate, DropRelay, PathSwitches, TxReset, TxCalls    atomic.Uint64
}

// StatsSnapshot is a copy of Stats.
type StatsSnapshot struct {
	RxQUIC, RxHello, RxRelay, TxHello                           uint64
	DropUnknownSource, DropBadProbe, DropStaleHello, DropNoPath uint64
	DropHelloRate, DropRelay, PathSwitches, TxReset, TxCalls    uint64
}

// New wraps udp. The Conn owns udp from now on and closes it on Close.
func New(udp *net.UDPConn, cfg Config) (*Conn, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Conn{
		cfg:        cfg,
		udp:        udp,
		batch:      ipv6.NewPacketConn(udp),
		self:       cfg.Keypair.Identity(),
		byVirt:     make(map[netip.AddrPort]*peer),
		byReal:     make(map[netip.AddrPort]*peer),
		helloLimit: newLimiter(cfg.HelloRate),
		resetLimit: newLimiter(cfg.ResetRate),
	}
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
	if a.confirmed != b.confirmed {
		return !a.confirmed
	}
	return a.lastRecv.Load() < b.lastRecv.Load()
}

func (c *Conn) removeLocked(p *peer) {
	for _, r := range p.reals {
		if c.byReal[r] == p {
			delete(c.byReal, r)
		}
	}
	delete(c.byVirt, p.virt)
}

// mapRealLocked makes packets from real count as p's.
func (c *Conn) mapRealLocked(p *peer, real netip.AddrPort) {
	if old := c.byReal[real]; old == p {
		return
	} else if old != nil {
		old.reals = deleteAddr(old.reals, real)
	}
	if len(p.reals) >= maxRealPerPeer {
		drop := p.reals[0]
		for _, r := range p.reals {
			if r != p.current {
				drop = r
				break
			}
		}
		p.reals = deleteAddr(p.reals, drop)
		delete(c.byReal, drop)
	}
	p.reals = append(p.reals, real)
	c.byReal[real] = p
}

func deleteAddr(s []netip.AddrPort, a netip.AddrPort) []netip.AddrPort {
	for i, x := range s {
		if x == a {
			return append(s[:i], s[i+1:]...)
		}
	}
	return s
}

// AddPeer records that id is believed to be reachable at real (from a
// bootstrap string or a verified contact record) and returns the virtual
// address to dial. It does not replace a confirmed path.
func (c *Conn) AddPeer(id pki.Identity, real netip.AddrPort) (*net.UDPAddr, error) {
	real = netip.AddrPortFrom(real.Addr().Unmap(), real.Port())
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.getOrAddLocked(id)
	c.mapRealLocked(p, real)
	if !p.confirmed && p.current != real {
		p.current = real
	}
	return p.virtUDP, nil
}

// Confirm marks the path of id's newest handshake as proven: a TLS handshake
// with id's certificate completed over it. Data goes there from now on.
func (c *Conn) Confirm(id pki.Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.byVirt[smartaddr.Virtual(id)]
	if p == nil {
		return
	}
	if p.handshake.IsValid() && p.handshake != p.current {
		p.current = p.handshake
		c.stats.PathSwitches.Add(1)
	}
	p.confirmed = true
	p.lastRecv.Store(time.Now().UnixNano())
}

// PathInfo describes a peer's current path.
type PathInfo struct {
	Current   netip.AddrPort
	Confirmed bool
	LastRecv  time.Time
}

// Path returns id's current path.
func (c *Conn) Path(id pki.Identity) (PathInfo, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p := c.byVirt[smartaddr.Virtual(id)]
	if p == nil {
		return PathInfo{}, false
	}
	return PathInfo{Current: p.current, Confirmed: p.confirmed, LastRecv: time.Unix(0, p.lastRecv.Load())}, true
}

// ---- receive -------------------------------------------------------------

// ReadBatch implements quic-go's batch reader: it reads with recvmmsg into
// quic-go's buffers, hands probes and relay frames to their handlers, drops
// packets from unknown sources, and rewrites the source of every remaining
// QUIC packet to its peer's virtual address. It never returns 0 packets
// without an error.
func (c *Conn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		n, err := c.batch.ReadBatch(ms, flags)
		if err != nil {
			return 0, err
		}
		now := time.Now()
		c.mu.RLock()
		var lastReal netip.AddrPort
		var lastPeer *peer
		for i := 0; i < n; {
			m := &ms[i]
			b := m.Buffers[0][:m.N]
			ua, _ := m.Addr.(*net.UDPAddr)
			if ua == nil {
				n = removeMsg(ms, i, n)
				continue
			}
			real := ua.AddrPort()
			real = netip.AddrPortFrom(real.Addr().Unmap(), real.Port())
			if len(b) >= 4 && (IsProbe(b) || IsRelay(b)) {
				c.mu.RUnlock()
				c.handleNonQUIC(b, real, now)
				c.mu.RLock()
				lastPeer = nil
				n = removeMsg(ms, i, n)
				continue
			}
			p := lastPeer
			if p == nil || real != lastReal {
				p = c.byReal[real]
				lastReal, lastPeer = real, p
			}
			if p == nil {
				c.stats.DropUnknownSource.Add(1)
				c.mu.RUnlock()
				c.maybeReset(b, real, now)
				c.mu.RLock()
				n = removeMsg(ms, i, n)
				continue
			}
			if len(b) > 0 && b[0]&0x80 != 0 { // long header: a handshake
				c.mu.RUnlock()
				c.mu.Lock()
				p.handshake = real
				c.mu.Unlock()
				c.mu.RLock()
			}
			if real == p.current {
				p.lastRecv.Store(now.UnixNano())
			}
			m.Addr = p.virtUDP
			i++
		}
		c.mu.RUnlock()
		c.stats.RxQUIC.Add(uint64(n))
		if n > 0 {
			return n, nil
		}
	}
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

func (c *Conn) handleNonQUIC(b []byte, src netip.AddrPort, now time.Time) {
	if IsRelay(b) {
		c.stats.RxRelay.Add(1)
		c.stats.DropRelay.Add(1) // relay sessions arrive with the SmartSock paths issue
		return
	}
	h, err := ParseHello(b)
	if err != nil {
		c.stats.DropBadProbe.Add(1)
		return
	}
	c.stats.RxHello.Add(1)
	c.handleHello(h, src, now)
}

func (c *Conn) handleHello(h *Hello, src netip.AddrPort, now time.Time) {
	if h.To != c.self || h.From == c.self {
		c.stats.DropBadProbe.Add(1)
		return
	}
	if d := now.UnixNano() - h.Timestamp; d > int64(c.cfg.HelloMaxSkew) || -d > int64(c.cfg.HelloMaxSkew) {
		c.stats.DropStaleHello.Add(1)
		return
	}
	if c.cfg.PoWBits > 0 && pki.PoWBits(h.From, h.PoWNonce) < c.cfg.PoWBits {
		c.stats.DropBadProbe.Add(1)
		return
	}
	c.helloMu.Lock()
	if !c.helloLimit.allow(now) {
		c.helloMu.Unlock()
		c.stats.DropHelloRate.Add(1)
		return
	}
	ok := h.Verify(c.scratch)
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
	c.mapRealLocked(p, src)
	silent := now.UnixNano()-p.lastRecv.Load() > int64(c.cfg.SilentAfter)
	if p.current != src && (!p.confirmed || silent) {
		if p.confirmed {
			c.cfg.Logger.Info("peer moved", "peer", h.From.Short(), "from", p.current, "to", src)
			c.stats.PathSwitches.Add(1)
		}
		p.current = src
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
	if _, err := c.udp.WriteToUDPAddrPort(pkt, dst); err == nil {
		c.stats.TxReset.Add(1)
	}
}

// limiter is a token bucket; its owner serializes calls.
type limiter struct {
	rate   float64
	tokens float64
	last   time.Time
}

func newLimiter(perSecond int) limiter {
	return limiter{rate: float64(perSecond), tokens: float64(perSecond), last: time.Now()}
}

func (l *limiter) allow(now time.Time) bool {
	l.tokens = min(l.rate, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
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

// route returns where a packet for virtual address a goes, and the peer.
func (c *Conn) route(a netip.AddrPort, longHeader bool) (netip.AddrPort, *peer) {
	c.mu.RLock()
	p := c.byVirt[a]
	if p == nil {
		c.mu.RUnlock()
		return netip.AddrPort{}, nil
	}
	dst := p.current
	if longHeader && p.handshake.IsValid() {
		// Answer a handshake where it came from (a restarted peer, or one
		// whose confirmed path is stale).
		dst = p.handshake
	}
	c.mu.RUnlock()
	return dst, p
}

// WriteMsgUDP implements quic.OOBCapablePacketConn: b may hold several
// packets for GSO (oob carries the segment size), all to one address.
func (c *Conn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if addr == nil {
		return 0, 0, errors.New("smartsock: nil address")
	}
	long := len(b) > 0 && b[0]&0x80 != 0
	dst, p := c.route(addr.AddrPort(), long)
	if p == nil || !dst.IsValid() {
		c.stats.DropNoPath.Add(1)
		return len(b), len(oob), nil // like a lost packet; quic-go recovers
	}
	if long {
		c.maybeSendHello(p, dst)
	}
	c.stats.TxCalls.Add(1)
	return c.udp.WriteMsgUDPAddrPort(b, oob, dst)
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
// every 100 ms per peer, so the peer's smartsock maps dst to our identity.
func (c *Conn) maybeSendHello(p *peer, dst netip.AddrPort) {
	now := time.Now()
	c.mu.Lock()
	if now.Sub(p.lastHelloTx) < 100*time.Millisecond {
		c.mu.Unlock()
		return
	}
	p.lastHelloTx = now
	c.mu.Unlock()
	h := NewHello(c.cfg.Keypair, p.id, c.txID.Add(1), now.UnixNano())
	var buf [HelloSize]byte
	if _, err := c.udp.WriteToUDPAddrPort(AppendHello(buf[:0], h), dst); err == nil {
		c.stats.TxHello.Add(1)
	}
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
	return c.udp.Close()
}
