package smartsock

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// The path table. Every function and method in this file runs on the path
// loop, which owns the fields marked "loop"; the read and write paths see
// the table only through the indexes and each peer's route (route.go).

// Bounds of one peer's paths.
const (
	maxRealPerPeer  = 8 // direct addresses
	maxRelayPerPeer = 4 // relay sessions
)

type peer struct {
	// Immutable.
	id      pki.Identity
	virt    netip.AddrPort
	virtUDP *net.UDPAddr // handed to quic-go; never mutated

	// Written by the loop, read by anyone.
	rt          atomic.Pointer[route] // where packets for this peer go; see route.go
	lastRecv    atomic.Int64          // unix ns of the last packet from current
	lastHelloTS atomic.Int64          // newest hello timestamp accepted
	sent        atomic.Bool           // quic-go wrote to this peer since the last probe tick
	sentAt      atomic.Int64          // unix ns of the write that set sent

	// Loop.
	paths     []*path   // every path: direct addresses and relay sessions
	current   *path     // where packets for this peer go; nil: none yet
	handshake *path     // where the newest long-header packet came from
	key       *[32]byte // probe MAC key from the QUIC session; nil: not connected
	// authAge is how long ago the peer's QUIC connection last
	// authenticated a packet (SetAuthClock); nil: no connection told us.
	authAge    func() (time.Duration, bool)
	punchUntil time.Time // probe unvalidated paths fast until then
	switches   uint64
	lastSent   int64 // unix ns of the first write the last tick that saw one saw
	// busyTicks counts the ticks that saw a write since window (at most
	// ProbeInterval ago); idle: at most idleTicks did in the last window.
	busyTicks int
	window    time.Time
	idle      bool
	due       time.Time // idle: the probe tick skips it until then (nextDue)
	dirty     bool      // in Conn.dirty: its route is to be published
}

func (p *peer) confirmed() bool { return p.current != nil && p.current.validated }

// path is one way to reach a peer: a direct UDP address, or a relay
// session (addr is then the relay's address).
type path struct {
	// Immutable.
	peer    *peer
	addr    netip.AddrPort
	relay   bool
	session [16]byte
	relayID pki.Identity
	jitter  time.Duration // subtracted from IdleProbeInterval (see idleJitter)

	// Written by the loop, read by anyone.
	probeTx   atomic.Uint64 // outstanding probe, 0: none (the read path drops replies to nothing)
	prevTx    atomic.Uint64 // the probe before it, if that one was missed; 0: none
	lastRecv  atomic.Int64  // unix ns of the last packet that arrived on it
	lastHello atomic.Int64  // unix ns we last announced ourselves on it (the write path's)

	// Loop.
	owner     bool // packets from addr (or with session) are this path's; see owner.go
	dialed    bool // we chose it (own dial, contact record, relay session, punch)
	validated bool // the peer proved itself on it: handshake or probe reply
	// lastSigned is when (unix ns) a hello signed by the peer last came
	// from addr.
	lastSigned int64
	srtt       time.Duration
	lastReply  time.Time
	missed     int
	probeAt    time.Time // when the outstanding probe was sent
	prevAt     time.Time // when prevTx was sent
	lost       bool      // the outstanding probe was counted missed (its reply still counts)
	// doubted: another peer claimed addr (claim) while QUIC packets kept
	// it from being probed (quicProven): probe it until it answers.
	doubted   bool
	lastProbe time.Time // zero: probe at the next tick
	added     time.Time
}

// peerOf returns id's entry, or nil.
func (c *Conn) peerOf(id pki.Identity) *peer { return c.virt.load(smartaddr.Virtual(id)) }

// lookSoon has the next probe round, one tick after the last, look at p
// (nextDue, loop). The loop only.
func (c *Conn) lookSoon(p *peer) {
	p.due = time.Time{}
	c.wantTick = true
}

// touch marks p's route for publication at the end of the loop's turn.
func (c *Conn) touch(p *peer) {
	c.lookSoon(p)
	if !p.dirty {
		p.dirty = true
		c.dirty = append(c.dirty, p)
	}
}

// getOrAdd returns id's entry, creating it (evicting one if the table is
// full).
func (c *Conn) getOrAdd(id pki.Identity) *peer {
	virt := smartaddr.Virtual(id)
	if p := c.virt.load(virt); p != nil {
		return p
	}
	if c.virt.len() >= c.cfg.MaxPeers {
		// Rare (only when full): evict an unconfirmed entry, else the
		// confirmed one silent the longest. Peers that left are never
		// removed otherwise, and live ones (at most the overlay's peer
		// limit, far below MaxPeers) keep their lastRecv fresh.
		var victim *peer
		c.virt.all(func(_ netip.AddrPort, p *peer) {
			if victim == nil || evictBefore(p, victim) {
				victim = p
			}
		})
		c.remove(victim)
	}
	p := &peer{id: id, virt: virt, virtUDP: net.UDPAddrFromAddrPort(virt)}
	c.virt.set(virt, p)
	c.touch(p)
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

// clearProbes forgets pa's probes: replies to them are dropped. Loop only.
func (pa *path) clearProbes() {
	pa.probeTx.Store(0)
	pa.prevTx.Store(0)
	pa.lost = false
}

func (c *Conn) remove(p *peer) {
	for _, pa := range p.paths {
		c.unindex(pa)
		pa.clearProbes()
	}
	c.virt.del(p.virt)
	p.rt.Store(nil)
	c.setRelayed(p, false)
}

func (c *Conn) unindex(pa *path) {
	if pa.relay {
		if c.sess.load(pa.session) == pa {
			c.sess.del(pa.session)
		}
	} else if c.real.load(pa.addr) == pa {
		c.real.del(pa.addr)
	}
	pa.owner = false
	c.touch(pa.peer)
}

// direct returns p's direct path to real, creating it if needed, and
// claims the address for it with evidence ev (see owner.go): the path may
// stay a candidate that owns nothing.
func (c *Conn) direct(p *peer, real netip.AddrPort, ev evidence, now time.Time) *path {
	if pa := pathAt(p.paths, real); pa != nil {
		c.claim(pa, ev, now)
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
			c.dropPath(p, victim)
		}
	}
	pa := &path{peer: p, addr: real, added: now, jitter: rand.N(idleJitter)}
	p.paths = append(p.paths, pa)
	c.touch(p)
	c.claim(pa, ev, now)
	return pa
}

// dropPath removes pa from p.
func (c *Conn) dropPath(p *peer, pa *path) {
	c.unindex(pa)
	pa.clearProbes()
	for i, x := range p.paths {
		if x == pa {
			// A new slice: routes published earlier keep the old one.
			p.paths = append(p.paths[:i:i], p.paths[i+1:]...)
			break
		}
	}
	if p.current == pa {
		p.current = nil
	}
	if p.handshake == pa {
		p.handshake = nil
	}
	c.touch(p)
}

// setCurrent moves p's traffic to pa and reports a direct one.
func (c *Conn) setCurrent(p *peer, pa *path) {
	p.current = pa
	c.touch(p)
	if pa != nil && !pa.relay && c.cfg.OnDirectPath != nil {
		c.cfg.OnDirectPath(p.id, pa.addr)
	}
}

// unmap turns an IPv4-mapped IPv6 address into plain IPv4: the path table
// keys on one form.
func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
