package smartsock

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// The node's calls into the path table. Each runs on the path loop and
// returns once the routes it changed are published.

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
	var virt *net.UDPAddr
	if !c.call(func() {
		p := c.getOrAdd(id)
		pa := c.direct(p, real, byWord, time.Now())
		pa.dialed = true
		if !p.confirmed() && pa.owner {
			p.current = pa
		}
		c.touch(p)
		virt = p.virtUDP
	}) {
		return nil, net.ErrClosed
	}
	return virt, nil
}

// AddRelayPath adds a relay session to id: packets go to relayAddr in CRLY
// frames with session, and frames with that session from relayAddr are id's.
// The session was set up over an authenticated connection with the relay
// (relayID), so the mapping is not taken from the network. A session ID
// that is already another peer's stays that peer's.
func (c *Conn) AddRelayPath(id, relayID pki.Identity, relayAddr netip.AddrPort, session [16]byte) *net.UDPAddr {
	relayAddr = unmap(relayAddr)
	now := time.Now()
	var virt *net.UDPAddr
	if !c.call(func() {
		p := c.getOrAdd(id)
		virt = p.virtUDP
		if old := c.sess.load(session); old != nil {
			if old.peer != p {
				// Relays choose session IDs at random: a relay that repeats
				// one it gave another peer does not get to move that peer's
				// traffic.
				c.stats.AddrClaimRefused.Add(1)
				return
			}
			c.dropPath(p, old)
		}
		for _, pa := range p.paths {
			if pa.relay && pa.relayID == relayID {
				c.dropPath(p, pa) // a new session with the same relay replaces the old
				break
			}
		}
		var relays []*path
		for _, pa := range p.paths {
			if pa.relay {
				relays = append(relays, pa)
			}
		}
		if len(relays) >= maxRelayPerPeer {
			c.dropPath(p, relays[0])
		}
		pa := &path{peer: p, addr: relayAddr, relay: true, session: session, relayID: relayID, dialed: true, added: now, owner: true, jitter: rand.N(idleJitter)}
		p.paths = append(p.paths, pa)
		c.sess.set(session, pa)
		if !p.confirmed() && p.current == nil {
			p.current = pa
		}
		c.touch(p)
	}) {
		return net.UDPAddrFromAddrPort(smartaddr.Virtual(id))
	}
	return virt
}

// Confirm marks the path of id's newest handshake as proven: a TLS handshake
// with id's certificate completed over it. Data goes there from now on.
func (c *Conn) Confirm(id pki.Identity) {
	c.call(func() {
		p := c.peerOf(id)
		if p == nil {
			return
		}
		if p.handshake != nil && p.handshake != p.current {
			c.setCurrent(p, p.handshake)
			c.stats.PathSwitches.Add(1)
		}
		if p.current != nil && p.current.owner {
			p.current.validated = true
			p.current.missed = 0
		}
		p.lastRecv.Store(time.Now().UnixNano())
		c.touch(p)
	})
}

// SetPathKey installs the key that authenticates path probes with id: both
// ends derive it from their QUIC session (TLS exporter), so only id can
// answer our probes and only we can answer its. Probing starts now.
func (c *Conn) SetPathKey(id pki.Identity, key [32]byte) {
	c.call(func() {
		p := c.peerOf(id)
		if p == nil {
			return
		}
		k := key
		p.key = &k
		// Proofs were made under the previous session's key (or by a
		// previous run of the peer): only the path this session's
		// handshake used stays proven; the others must answer probes
		// under the new key first.
		for _, pa := range p.paths {
			if pa != p.current {
				pa.validated = false
				pa.srtt = 0
			}
			pa.missed = 0
			pa.lastProbe = time.Time{}
			pa.clearProbes()
		}
		c.touch(p)
	})
}

// SetAuthClock tells the socket how long ago id's QUIC connection last
// authenticated a packet (quic.Conn.SinceAuthenticated; false: none yet).
// From then on, only packets from id's addresses that quic-go could
// authenticate show that a path delivers: anybody can send with a peer's
// address as the source. Forget ends it.
func (c *Conn) SetAuthClock(id pki.Identity, since func() (time.Duration, bool)) {
	c.call(func() {
		if p := c.peerOf(id); p != nil {
			p.authAge = since
		}
	})
}

// Forget drops id's probe key (its connection closed): its paths are no
// longer probed. They stay, unproven, as candidates for the next dial.
func (c *Conn) Forget(id pki.Identity) {
	c.call(func() {
		p := c.peerOf(id)
		if p == nil {
			return
		}
		p.key, p.authAge = nil, nil
		for _, pa := range p.paths {
			pa.clearProbes()
		}
		c.touch(p)
	})
}

// SetRelayForwarder installs the relay server (nil removes it).
func (c *Conn) SetRelayForwarder(f RelayForwarder) {
	if f == nil {
		c.forward.Store(nil)
		return
	}
	c.forward.Store(&f)
}
