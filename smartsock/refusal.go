package smartsock

import (
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
)

// Refusals. A hello that is well signed but refused (addressed to another
// identity, or from an identity below our proof-of-work difficulty) used
// to be dropped in silence: the dialer waited out its handshake timeout not
// knowing why, and the refuser logged nothing. Now the refuser answers with
// a signed wire.ProbeRefusal saying why, and both ends report the refusal
// to their node (Config.OnRefusal). A dialer whose TLS check refused its
// peer's certificate sends one too (SendRefusal), so the peer learns it.
//
// A refusal is smaller than the hello it answers (no amplification), sent
// at most refusalRate a second, and accepted only from an address we have
// a path to, signed by its sender, addressed to us and fresh. The read
// path does the cheap checks; the signatures (and the rates they spend)
// are the loop's.

// The reasons a refusal gives (see wire).
const (
	RefuseWrongIdentity = wire.RefuseWrongIdentity
	RefuseLowPoW        = wire.RefuseLowPoW
	RefuseSameIdentity  = wire.RefuseSameIdentity
)

// refusalRate bounds refusals sent per second (each costs a signature).
const refusalRate = 20

// Refusal is a refusal event reported to Config.OnRefusal.
type Refusal struct {
	// Local: we refused Peer (its hello, or its certificate on our dial).
	// Otherwise Peer refused us.
	Local bool
	// Peer is the other side: the identity we refused, or the identity we
	// believe is at Addr (the one we dialed) when it refused us.
	Peer pki.Identity
	// From is who signed a remote refusal: Peer itself, or, for
	// RefuseWrongIdentity, the identity actually at Addr.
	From pki.Identity
	// Wanted is, for a local RefuseWrongIdentity, the identity Peer's hello
	// was addressed to.
	Wanted pki.Identity
	Addr   netip.AddrPort
	Reason byte
	// Bits: for RefuseLowPoW, the difficulty required; Have is the refused
	// identity's proof of work (ours, when we were refused).
	Bits, Have int
}

// readRefusal is the read path's part of a refusal's checks: format,
// recipient, clock, and that src is a direct path whose peer fits the
// reason. It returns the peer of that path.
func (c *Conn) readRefusal(b []byte, src netip.AddrPort, now time.Time) (pki.Identity, bool) {
	r, err := wire.ParseRefusal(b)
	if err != nil || r.To != c.self || r.From == c.self {
		c.stats.DropBadProbe.Add(1)
		return pki.Identity{}, false
	}
	if c.skewed(r.Timestamp, now) {
		c.stats.DropStaleHello.Add(1)
		return pki.Identity{}, false
	}
	pa := c.real.load(src)
	if pa == nil || (r.Reason != RefuseWrongIdentity) != (r.From == pa.peer.id) {
		// Nobody we talk to at src, or a claim that does not fit it: a
		// wrong-identity refusal comes from someone else than the peer we
		// expect there, every other one from the peer itself.
		c.stats.DropBadProbe.Add(1)
		return pki.Identity{}, false
	}
	return pa.peer.id, true
}

// handleRefusal verifies a refusal the read path passed and reports it.
// Loop only.
func (c *Conn) handleRefusal(b []byte, src netip.AddrPort, now time.Time) {
	r, err := wire.ParseRefusal(b)
	if err != nil {
		return // the read path checked it
	}
	pa := c.real.load(src)
	if pa == nil {
		return // dropped meanwhile
	}
	if !c.helloLimit.Allow(now) {
		c.stats.DropHelloRate.Add(1)
		return
	}
	if !r.Verify(c.scratch[:0]) {
		c.stats.DropBadProbe.Add(1)
		return
	}
	c.stats.RxRefusal.Add(1)
	if f := c.cfg.OnRefusal; f != nil {
		f(Refusal{Peer: pa.peer.id, From: r.From, Addr: src, Reason: r.Reason, Bits: int(r.Bits), Have: c.cfg.Keypair.PoWBits()})
	}
}

// refuseHello answers a hello we refuse (the read path's checks passed,
// but it is for another identity or below our proof of work), once its
// signature shows From really sent it (under the hello rate limit), and
// reports the refusal. Loop only.
func (c *Conn) refuseHello(b []byte, src netip.AddrPort, now time.Time) {
	h, err := wire.ParseHello(b)
	if err != nil {
		return
	}
	reason := RefuseWrongIdentity
	if h.To == c.self {
		reason = RefuseLowPoW
	}
	if !c.helloLimit.Allow(now) {
		c.stats.DropHelloRate.Add(1)
		return
	}
	if !h.Verify(c.scratch[:0]) {
		return // counted as a bad probe on the read path already
	}
	c.sendRefusal(h.From, src, reason, h.TxID, now)
	if f := c.cfg.OnRefusal; f != nil {
		f(Refusal{Local: true, Peer: h.From, Wanted: h.To, Addr: src, Reason: reason, Have: pki.PoWBits(h.From, h.PoWNonce), Bits: c.cfg.PoWBits})
	}
}

// sendRefusal signs and sends a refusal to dst, rate-limited. Loop only.
func (c *Conn) sendRefusal(to pki.Identity, dst netip.AddrPort, reason byte, txID uint64, now time.Time) {
	if !c.refuseLimit.Allow(now) {
		c.stats.DropRefusalRate.Add(1)
		return
	}
	r := wire.NewRefusal(c.cfg.Keypair, to, reason, byte(min(c.cfg.PoWBits, 255)), txID, now.UnixNano())
	var buf [wire.RefusalSize]byte
	if err := c.writeCtl(wire.AppendRefusal(buf[:0], &r), dst); err == nil {
		c.stats.TxRefusal.Add(1)
	}
}

// SendRefusal tells id, at the direct address its handshake came from (or
// its current direct path), that we refuse it for reason (our TLS check
// refused its certificate). It does nothing for a peer without one.
func (c *Conn) SendRefusal(id pki.Identity, reason byte) {
	c.call(func() {
		p := c.peerOf(id)
		if p == nil {
			return
		}
		var dst netip.AddrPort
		if pa := p.handshake; pa != nil && !pa.relay {
			dst = pa.addr
		} else if pa := p.current; pa != nil && !pa.relay {
			dst = pa.addr
		}
		if dst.IsValid() {
			c.sendRefusal(id, dst, reason, c.txID.Add(1), time.Now())
		}
	})
}

// SendRefusalTo tells id at dst, one of its direct paths, that we refuse it
// for reason.
func (c *Conn) SendRefusalTo(id pki.Identity, dst netip.AddrPort, reason byte) {
	dst = unmap(dst)
	c.call(func() {
		if pa := c.real.load(dst); pa != nil && pa.peer.id == id {
			c.sendRefusal(id, dst, reason, c.txID.Add(1), time.Now())
		}
	})
}

// HandshakeAddr returns the direct address id's newest handshake packet
// came from (relay paths: none), for reports about a handshake and the
// node's check for two nodes sharing one identity.
func (c *Conn) HandshakeAddr(id pki.Identity) (netip.AddrPort, bool) {
	rt := routeOf(c.peerOf(id))
	if rt == nil || rt.hs == nil || rt.hs.relay {
		return netip.AddrPort{}, false
	}
	return rt.hs.addr, true
}

// LastRecv returns when a QUIC packet last arrived from id on its direct
// path addr (zero time: never, or no such path). The node uses it to see
// whether a node it replaced is still sending as id.
func (c *Conn) LastRecv(id pki.Identity, addr netip.AddrPort) time.Time {
	pa := c.real.load(unmap(addr))
	if pa == nil || pa.peer.id != id {
		return time.Time{}
	}
	if t := pa.lastRecv.Load(); t != 0 {
		return time.Unix(0, t)
	}
	return time.Time{}
}
