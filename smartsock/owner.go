package smartsock

import (
	"time"
)

// Who owns a real address.
//
// Packets arriving from a real address are attributed to the one path that
// owns it (Conn.real), and so to that path's peer. Many peers may name the same
// address (a punch candidate, a contact record, a hello or probe sent from
// there): each gets a path of its own at that address, but only one owns it.
// A path that does not own its address is a candidate of its peer: probed as
// that peer's, never chosen to carry traffic, and never given the packets
// that arrive from the address. It takes the address only with stronger
// evidence than the owner holds it by (claim), so an address that is
// a proven path of one peer is never reassigned on another peer's word.

// evidence is why an address is believed to be a peer's, weakest first.
type evidence int

const (
	// byWord: someone said so. Our dial of a contact record, a punch
	// candidate the peer sent, or a probe request MACed by the peer (it
	// may be a replay from a spoofed source).
	byWord evidence = iota + 1
	// byPresence: the peer is there now: a hello signed by it arrived from
	// the address within SilentAfter (replays are refused).
	byPresence
	// byProof: the peer answered our MACed probe there, or completed a
	// handshake with its certificate over it, and still answers.
	byProof
)

// holdOf is how strongly a path holds its address: proven while the peer is
// connected and answers probes there, present while its last signed hello
// from there is recent, otherwise only named. Packets arriving count only
// as alive counts them (an idle peer's current path is not probed while
// QUIC packets arrive there), and never against a claim: they would be a
// newcomer's, attributed to the old holder, and keep it forever. A refused
// claim makes us probe the holder (claim, doubted), so a peer that left an
// address (its node restarted with another identity, its NAT mapping went
// to someone else) loses it once it stops answering probes there.
func holdOf(validated, connected, alive bool, sinceSigned, silentAfter time.Duration) evidence {
	switch {
	case validated && connected && alive:
		return byProof
	case sinceSigned >= 0 && sinceSigned < silentAfter:
		return byPresence
	}
	return byWord
}

// takes reports whether evidence ev for one peer moves an address from
// another peer's path that holds it by hold: only strictly stronger evidence
// does, so nothing takes a proven path that still answers.
func takes(ev, hold evidence) bool { return ev > hold }

// hold is holdOf for pa now.
func (c *Conn) hold(pa *path, now time.Time) evidence {
	since := time.Duration(now.UnixNano() - pa.lastSigned)
	if pa.lastSigned == 0 {
		since = -1
	}
	return holdOf(pa.validated, pa.peer.key != nil, alive(pa, now), since, c.cfg.SilentAfter)
}

// claim makes pa the owner of its address if it is free, or held by
// another peer's path by weaker evidence than ev. It reports whether pa owns
// the address now. Loop only.
func (c *Conn) claim(pa *path, ev evidence, now time.Time) bool {
	if pa.owner {
		return true
	}
	if q := c.real.load(pa.addr); q != nil {
		if hold := c.hold(q, now); !takes(ev, hold) {
			c.stats.AddrClaimRefused.Add(1)
			if ev == byPresence && hold == byProof && !pending(q) {
				// Someone else signs hellos from q's address: maybe q's
				// peer left it (a restart under another identity). Check
				// at the next tick; if it still answers, nothing changes,
				// and a hello can make us probe it no faster than that.
				q.lastProbe = time.Time{}
				q.doubted = true // QUIC packets from there would be theirs too
				c.lookSoon(q.peer)
			}
			return false
		}
		c.cfg.Logger.Debug("address moved to another peer", "addr", pa.addr, "from", q.peer.id.Short(), "to", pa.peer.id.Short())
		c.stats.AddrReassigned.Add(1)
		c.disown(q)
	}
	c.real.set(pa.addr, pa)
	pa.owner = true
	c.touch(pa.peer)
	return true
}

// disown takes pa's address from it: it stays a candidate of its peer, but
// carries nothing. Loop only.
func (c *Conn) disown(pa *path) {
	c.unindex(pa)
	p := pa.peer
	if p.current == pa {
		p.current = nil
	}
	if p.handshake == pa {
		p.handshake = nil
	}
}
