package smartsock

import (
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
)

// SMPR handling. The read path (readProbe) drops what it can judge from
// the packet, its source and the published snapshots: the format, the
// clock, the recipient, proof of work, replays, whether the claimed peer is
// connected, whether a reply answers a probe of ours, and each source's own
// budget. What is left goes to the loop (handle*), which checks what needs
// the table or spends a budget all sources share: signatures, MACs, the
// shared rates; and then changes the table. Cheapest checks first, so a
// flood from one source spends its own budget and nothing anyone else
// needs.

// readProbe triages an SMPR packet from src; via is the relay path it came
// through, or nil when it came directly. The read path only.
func (c *Conn) readProbe(b []byte, src netip.AddrPort, via *path, now time.Time) {
	if len(b) < wire.ProbeHeaderSize {
		c.stats.DropBadProbe.Add(1)
		return
	}
	ev := event{src: src, via: via, now: now, n: uint8(min(len(b), wire.MaxProbeSize))}
	switch b[4] {
	case wire.ProbeHello:
		h, err := wire.ParseHello(b)
		if err != nil || via != nil { // hellos map direct addresses only
			c.stats.DropBadProbe.Add(1)
			return
		}
		c.stats.RxHello.Add(1)
		ok, refuse := c.checkHello(&h, src, now)
		if refuse {
			ev.kind = evRefuseHello
			break
		}
		if !ok {
			return
		}
		ev.kind = evHello
		// Wait for it unless src is already h.From's: the hello may make
		// src the sender's, and the packets after it (its handshake) must
		// find it so.
		q := c.real.load(src)
		ev.ack = q == nil || q.peer.id != h.From
	case wire.ProbeRequest:
		pr, err := wire.ParseProbe(b)
		if err != nil {
			c.stats.DropBadProbe.Add(1)
			return
		}
		if !c.checkRequest(&pr, src, via, now) {
			return
		}
		ev.kind = evRequest
		// A request from a direct source nobody owns becomes the peer's
		// (peer-reflexive, its NAT's new mapping): the QUIC packets that
		// follow it must find it.
		ev.ack = via == nil && c.real.load(src) == nil
	case wire.ProbeReply:
		pr, err := wire.ParseProbe(b)
		if err != nil {
			c.stats.DropBadProbe.Add(1)
			return
		}
		// Anyone can send replies: only one to a probe of ours goes on.
		if pa := c.probePath(pr.From, src, via); pa == nil || !pa.awaits(pr.TxID) {
			c.stats.DropBadProbe.Add(1) // late, duplicate, or not ours
			return
		}
		ev.kind = evReply
	case wire.ProbeRefusal:
		// Refusals answer hellos, which map direct addresses only.
		if via != nil {
			c.stats.DropBadProbe.Add(1)
			return
		}
		if _, ok := c.readRefusal(b, src, now); !ok {
			return
		}
		ev.kind = evRefusal
	case wire.ProbeDialBack:
		if _, err := wire.ParseDialBack(b); err != nil || c.dialBacks.Load() == 0 {
			c.stats.DropBadProbe.Add(1)
			return
		}
		ev.kind = evDialBack
	default:
		c.stats.DropBadProbe.Add(1)
		return
	}
	copy(ev.pkt[:], b)
	if seq := c.post(&ev); ev.ack {
		c.await(seq)
	}
}

// skewed reports whether ts (a peer's clock) is too far from now.
func (c *Conn) skewed(ts int64, now time.Time) bool {
	d := now.UnixNano() - ts
	return d > int64(c.cfg.HelloMaxSkew) || -d > int64(c.cfg.HelloMaxSkew)
}

// checkHello is the read path's part of a hello's checks. refuse: the
// hello is fresh and within its source's budget, but for another identity
// or below our proof of work, so the loop answers it with a refusal once
// its signature checks (refusal.go).
func (c *Conn) checkHello(h *wire.Hello, src netip.AddrPort, now time.Time) (ok, refuse bool) {
	if h.From == c.self {
		c.stats.DropBadProbe.Add(1)
		return false, false
	}
	if c.skewed(h.Timestamp, now) {
		c.stats.DropStaleHello.Add(1)
		return false, false
	}
	var k [srcKeySize]byte
	if !c.helloSrc.Allow(appendSrcKey(k[:0], src, nil, nil), now) {
		c.stats.DropHelloSrcRate.Add(1)
		return false, false
	}
	if h.To != c.self || c.cfg.PoWBits > 0 && pki.PoWBits(h.From, h.PoWNonce) < c.cfg.PoWBits {
		c.stats.DropBadProbe.Add(1)
		return false, true
	}
	if p := c.peerOf(h.From); p != nil && h.Timestamp <= p.lastHelloTS.Load() {
		c.stats.DropStaleHello.Add(1) // a replay, or reordered
		return false, false
	}
	return true, false
}

// checkRequest is the read path's part of a probe request's checks: the
// clock, then whether the sender is a connected peer at all, then its
// source's budget. The MAC and the shared budget are the loop's.
func (c *Conn) checkRequest(pr *wire.Probe, src netip.AddrPort, via *path, now time.Time) bool {
	if c.skewed(pr.Timestamp, now) {
		c.stats.DropStaleHello.Add(1)
		return false
	}
	p := c.peerOf(pr.From)
	if rt := routeOf(p); rt == nil || !rt.keyed {
		c.stats.DropProbeUnknown.Add(1)
		return false
	}
	var session *[16]byte
	if via != nil {
		session = &via.session
	}
	var k [srcKeySize]byte
	if !c.probeSrc.Allow(appendSrcKey(k[:0], src, session, &pr.From), now) {
		c.stats.DropProbeSrcRate.Add(1)
		return false
	}
	return true
}

func routeOf(p *peer) *route {
	if p == nil {
		return nil
	}
	return p.rt.Load()
}

// awaits reports whether tx is the outstanding probe of pa or the missed
// one before it. Any goroutine.
func (pa *path) awaits(tx uint64) bool {
	return tx != 0 && (pa.probeTx.Load() == tx || pa.prevTx.Load() == tx)
}

// probePath is the path of from a probe from src (through via) came on, as
// the published route has it, or nil.
func (c *Conn) probePath(from pki.Identity, src netip.AddrPort, via *path) *path {
	p := c.peerOf(from)
	rt := routeOf(p)
	switch {
	case rt == nil || !rt.keyed:
		return nil
	case via != nil:
		if via.peer != p {
			return nil
		}
		return via
	}
	return pathAt(rt.direct, src)
}

// ---- the loop's part ---------------------------------------------------

func (c *Conn) handleHello(b []byte, src netip.AddrPort, now time.Time) {
	h, err := wire.ParseHello(b)
	if err != nil {
		return // the read path checked it
	}
	if p := c.peerOf(h.From); p != nil && h.Timestamp <= p.lastHelloTS.Load() {
		c.stats.DropStaleHello.Add(1) // a copy got here first
		return
	}
	// The budget of signature checks all sources share is spent only on
	// hellos that passed every cheaper check and their source's budget.
	if !c.helloLimit.Allow(now) {
		c.stats.DropHelloRate.Add(1)
		return
	}
	if !h.Verify(c.scratch[:0]) {
		c.stats.DropBadProbe.Add(1)
		return
	}
	p := c.getOrAdd(h.From)
	p.lastHelloTS.Store(h.Timestamp)
	pa := c.direct(p, src, byPresence, now)
	pa.lastSigned = now.UnixNano()
	if !pa.owner {
		return // another peer holds src; h.From's path there is a candidate
	}
	// Silent: nothing from the peer that quic-go authenticated (a spoofer
	// with its old address must not pin it there, see heard).
	silent := now.UnixNano()-p.heardAt(p.lastRecv.Load(), now.UnixNano()) > int64(c.cfg.SilentAfter)
	if p.current != pa && (!p.confirmed() || silent) {
		if p.confirmed() {
			c.cfg.Logger.Info("peer moved", "peer", h.From.Short(), "from", p.current.addr, "to", src)
			c.stats.PathSwitches.Add(1)
			p.switches++
		}
		c.setCurrent(p, pa)
	}
}

// probePeer finds the sender of a probe and the path it came on (owned or
// a candidate); a direct source not known yet becomes a new unproven path
// of the peer (peer-reflexive: its NAT mapping toward us) if create is set.
func (c *Conn) probePeer(from pki.Identity, src netip.AddrPort, via *path, create bool, now time.Time) (*peer, *path) {
	p := c.peerOf(from)
	if p == nil || p.key == nil {
		return nil, nil
	}
	if via != nil {
		if via.peer != p || c.sess.load(via.session) != via {
			return nil, nil // another peer's session, or dropped meanwhile
		}
		return p, via
	}
	if pa := pathAt(p.paths, src); pa != nil {
		return p, pa
	}
	if !create {
		return p, nil
	}
	// A MACed request may be a replay from a spoofed source: only our word
	// for the address, until the peer answers our own probe there.
	return p, c.direct(p, src, byWord, now)
}

func (c *Conn) handleRequest(b []byte, src netip.AddrPort, via *path, now time.Time) {
	pr, err := wire.ParseProbe(b)
	if err != nil {
		return
	}
	p := c.peerOf(pr.From)
	if p == nil || p.key == nil {
		c.stats.DropProbeUnknown.Add(1) // gone or disconnected meanwhile
		return
	}
	if !pr.CheckMAC(p.key, c.self) {
		c.stats.DropProbeMAC.Add(1)
		return
	}
	// Only now the budget all sources share: nothing unauthenticated
	// spends it.
	if !c.probeLimit.Allow(now) {
		c.stats.DropProbeRate.Add(1)
		return
	}
	_, pa := c.probePeer(pr.From, src, via, true, now)
	if pa == nil {
		c.stats.DropBadProbe.Add(1) // via is another peer's
		return
	}
	c.stats.RxProbe.Add(1)
	// Answer, and if this path is new to us, check it ourselves soon (the
	// peer's probe just opened our side of its NAT mapping).
	reply := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeReply, TxID: pr.TxID, Timestamp: pr.Timestamp}, From: c.self}
	if via == nil {
		reply.Observed = src
	}
	reply.Seal(p.key, p.id)
	var buf [wire.MaxReplySize]byte
	c.sendProbe(pa.dest(), wire.AppendProbe(buf[:0], &reply))
	if !pa.validated && !pending(pa) {
		var req [wire.RequestSize]byte
		c.newRequest(p, pa, now, req[:0])
		pa.lastProbe = now
		c.sendProbe(pa.dest(), req[:])
	}
}

func (c *Conn) handleReply(b []byte, src netip.AddrPort, via *path, now time.Time) {
	pr, err := wire.ParseProbe(b)
	if err != nil {
		return
	}
	p, pa := c.probePeer(pr.From, src, via, false, now)
	if pa == nil || !pa.awaits(pr.TxID) {
		c.stats.DropBadProbe.Add(1) // answered, re-keyed or evicted meanwhile
		return
	}
	if !pr.CheckMAC(p.key, c.self) {
		c.stats.DropProbeMAC.Add(1)
		return
	}
	c.stats.RxProbeReply.Add(1)
	sent := pa.probeAt
	if pr.TxID == pa.probeTx.Load() {
		pa.probeTx.Store(0)
		pa.lost = false
	} else { // the missed probe before it: the path works, slowly
		sent = pa.prevAt
		pa.prevTx.Store(0)
	}
	rtt := max(now.Sub(sent), time.Microsecond)
	if pa.srtt == 0 {
		pa.srtt = rtt
	} else {
		pa.srtt = (4*pa.srtt + rtt) / 5
	}
	pa.missed = 0
	pa.lastReply = now
	pa.doubted = false
	if !pa.validated {
		pa.validated = true
		c.cfg.Logger.Info("path proven", "peer", p.id.Short(), "path", pathName(pa), "rtt", rtt)
	}
	c.touch(p)
	if !pa.relay {
		c.claim(pa, byProof, now) // never from a peer that still answers there
	}
	if pr.Observed.IsValid() {
		c.observed = pr.Observed
	}
	w := c.waiters[pr.TxID]
	delete(c.waiters, pr.TxID)
	c.selectPath(p, now)
	if w != nil {
		w <- PingResult{Path: c.status(p, pa, now), RTT: rtt} // buffered: never blocks
	}
}

func (c *Conn) handleDialBack(b []byte) {
	nonce, err := wire.ParseDialBack(b)
	if err != nil {
		return
	}
	ch := c.dialBack[nonce]
	if ch == nil {
		c.stats.DropBadProbe.Add(1)
		return
	}
	delete(c.dialBack, nonce)
	c.dialBacks.Store(int32(len(c.dialBack)))
	c.stats.RxDialBack.Add(1)
	close(ch)
}

// handleHandshake: a long-header packet arrived on pa, so the peer's
// newest handshake runs there: answer it there, and while the peer has no
// proven path, send its data there too.
func (c *Conn) handleHandshake(pa *path) {
	p := pa.peer
	if c.virt.load(p.virt) != p || !pa.owner {
		return
	}
	p.handshake = pa
	if !p.confirmed() {
		p.current = pa
	}
	c.touch(p)
}

// newRequest arms pa's outstanding probe and encodes it into b.
func (c *Conn) newRequest(p *peer, pa *path, now time.Time, b []byte) uint64 {
	tx := c.txID.Add(1)<<16 | uint64(now.UnixNano()&0xffff)
	// A missed probe's reply still counts until this one's time is up.
	pa.prevTx.Store(0)
	if pa.lost {
		pa.prevTx.Store(pa.probeTx.Load())
		pa.prevAt = pa.probeAt
	}
	pa.probeTx.Store(tx)
	pa.lost = false
	pa.probeAt = now
	pr := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeRequest, TxID: tx, Timestamp: now.UnixNano()}, From: c.self}
	pr.Seal(p.key, p.id)
	wire.AppendProbe(b, &pr)
	return tx
}

// sendProbe writes an SMPR packet on d, in a CRLY frame if d is relayed.
func (c *Conn) sendProbe(d dest, pkt []byte) {
	var buf [wire.RelayHeaderSize + wire.MaxProbeSize]byte
	b := pkt
	if d.relay {
		b = append(wire.AppendRelayHeader(buf[:0], wire.RelayHeader{Session: d.session}), pkt...)
	}
	if err := c.writeCtl(b, d.addr); err == nil {
		c.stats.TxProbe.Add(1)
	}
}
