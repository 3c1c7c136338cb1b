package smartsock

import (
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
)

// route is a peer's routing state as the read and write paths see it: an
// immutable snapshot the loop publishes (peer.rt) whenever any of it
// changes, so a packet is routed with one atomic load and no lock. Routes
// are rebuilt at handshake and path-switch rates, never per packet.
type route struct {
	cur       *path // where data goes; nil: nowhere yet
	hs        *path // where the newest handshake came from
	confirmed bool  // cur is proven
	keyed     bool  // a probe key is installed: the peer is connected
	// long is where a long-header (handshake) packet goes: while no path
	// is proven every path we chose races (happy eyeballs: direct
	// addresses and relay sessions, the first to answer becomes the
	// path); once one is, the path of the newest handshake (a restarted
	// peer), else nil and cur.
	long   []dest
	direct []*path // every direct path, owned or a candidate
	owned  []*path // the direct paths that own their address
}

// dest is where one write goes.
type dest struct {
	addr    netip.AddrPort
	relay   bool
	session [16]byte
	pa      *path
}

// dest returns where a write on pa goes.
func (pa *path) dest() dest { return dest{pa.addr, pa.relay, pa.session, pa} }

// maxDests bounds the paths one handshake packet is copied to.
const maxDests = maxRealPerPeer + maxRelayPerPeer

// pathAt returns the direct path at real in paths, owned or not.
func pathAt(paths []*path, real netip.AddrPort) *path {
	for _, pa := range paths {
		if !pa.relay && pa.addr == real {
			return pa
		}
	}
	return nil
}

// publish builds p's route from the table. Loop only.
func (c *Conn) publish(p *peer) {
	if c.virt.load(p.virt) != p {
		p.rt.Store(nil) // evicted
		c.setRelayed(p, false)
		return
	}
	c.setRelayed(p, p.current != nil && p.current.relay)
	rt := &route{cur: p.current, hs: p.handshake, confirmed: p.confirmed(), keyed: p.key != nil}
	for _, pa := range p.paths {
		if !p.confirmed() && (pa.dialed || pa == p.handshake || pa == p.current) && len(rt.long) < maxDests {
			rt.long = append(rt.long, pa.dest())
		}
		if !pa.relay {
			rt.direct = append(rt.direct, pa)
			if pa.owner {
				rt.owned = append(rt.owned, pa)
			}
		}
	}
	if len(rt.long) == 0 && p.handshake != nil {
		rt.long = []dest{p.handshake.dest()}
	}
	p.rt.Store(rt)
}

// flush publishes every route changed in this turn of the loop. Loop only;
// it runs before anyone waiting for the turn is told it is over.
func (c *Conn) flush() {
	for _, p := range c.dirty {
		p.dirty = false
		c.publish(p)
	}
	clear(c.dirty)
	c.dirty = c.dirty[:0]
	if c.relayedChanged {
		c.relayedChanged = false
		ids := make([]pki.Identity, 0, len(c.relayed))
		for p := range c.relayed {
			ids = append(ids, p.id)
		}
		c.relayedIDs.Store(&ids)
	}
}

// setRelayed records whether p's published route is relayed. Loop only.
func (c *Conn) setRelayed(p *peer, relayed bool) {
	if _, was := c.relayed[p]; was == relayed {
		return
	}
	if relayed {
		c.relayed[p] = struct{}{}
	} else {
		delete(c.relayed, p)
	}
	c.relayedChanged = true
}

// RelayedPeers returns the peers whose traffic goes through a relay now,
// as Path would report them (Relayed), in no order. The slice is shared:
// the caller must not modify it. It never waits for the path loop and
// allocates nothing, so NAT traversal may look at it every tick instead of
// asking Path about every connected peer (at 1,000 peers that was 4,000
// Path calls a second and a seventh of the idle node's CPU).
func (c *Conn) RelayedPeers() []pki.Identity {
	if ids := c.relayedIDs.Load(); ids != nil {
		return *ids
	}
	return nil
}

// PathInfo describes a peer's current path.
type PathInfo struct {
	Current   netip.AddrPort // where packets go now (the relay's address when relayed)
	Relayed   bool
	Direct    netip.AddrPort // the peer's best known direct address (may be invalid)
	Confirmed bool
	LastRecv  time.Time
}

// Path returns id's current path. It reads the published route: it never
// waits for the path loop, so the node may call it per packet.
func (c *Conn) Path(id pki.Identity) (PathInfo, bool) {
	p := c.peerOf(id)
	if p == nil {
		return PathInfo{}, false
	}
	rt := p.rt.Load()
	if rt == nil {
		return PathInfo{}, false
	}
	pi := PathInfo{Confirmed: rt.confirmed, LastRecv: time.Unix(0, p.lastRecv.Load())}
	if rt.cur != nil {
		pi.Current, pi.Relayed = rt.cur.addr, rt.cur.relay
	}
	var best *path
	for _, pa := range rt.owned {
		if pa == rt.cur || best == nil || (best != rt.cur && pa.lastRecv.Load() > best.lastRecv.Load()) {
			best = pa
		}
	}
	if best != nil {
		pi.Direct = best.addr
	}
	return pi, true
}
