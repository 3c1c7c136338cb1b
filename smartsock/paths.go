package smartsock

import (
	"context"
	"crypto/tls"
	"errors"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
)

// Probe timing, from the reference (every 5 s, stale after 30 s or 3 missed
// probes, RTT smoothed 0.8 old / 0.2 new), plus faster probing where it
// matters: a current path that went quiet (black-hole detection) and
// candidate paths being punched.
const (
	ProbeInterval = 5 * time.Second
	QuietAfter    = 400 * time.Millisecond // we send, but the current path was silent this long: probe fast
	QuietInterval = 200 * time.Millisecond // probe interval of a quiet current path
	PunchInterval = 250 * time.Millisecond // probe interval while punching
	PunchWindow   = 10 * time.Second       // how long Punch probes its candidates
	ProbeTimeout  = 1 * time.Second        // a probe unanswered this long is missed
	MaxMissed     = 3
	StaleAfter    = 30 * time.Second
	tick          = 100 * time.Millisecond
	// newPathWindow: a path learned outside a punch (peer-reflexive, a
	// contact record) is probed for this long at one per second.
	newPathWindow = 5 * time.Second
	// pruneAfter: an unproven path nobody dialed is forgotten after this.
	pruneAfter = 2 * time.Minute
)

// maxWaiters bounds outstanding pings.
const maxWaiters = 256

func (c *Conn) aliveLocked(pa *path, now time.Time) bool {
	return pa.missed < MaxMissed && (pa.lastReply.IsZero() || now.Sub(pa.lastReply) < StaleAfter)
}

// quiet reports whether p's traffic on pa stopped: nothing arrived for
// QuietAfter while we were sending, or while packets were arriving until
// shortly before. An idle peer is not quiet.
func quiet(p *peer, pa *path, now int64) bool {
	silent := now - pa.lastRecv.Load()
	return silent > int64(QuietAfter) && (now-p.lastSent < int64(time.Second) || silent < int64(3*time.Second))
}

// probeTimeout is how long a probe on pa may go unanswered: a few RTTs,
// between 300 ms and ProbeTimeout.
func probeTimeout(pa *path) time.Duration {
	return min(max(4*pa.srtt+100*time.Millisecond, 300*time.Millisecond), ProbeTimeout)
}

func (c *Conn) intervalLocked(p *peer, pa *path, now time.Time) time.Duration {
	switch {
	case pa == p.current && quiet(p, pa, now.UnixNano()):
		// Traffic stopped arriving on the path in use: maybe a black hole.
		return QuietInterval
	case pa.validated && pa.missed > 0 && pa.missed < MaxMissed:
		return QuietInterval // settle a doubt quickly
	case pa.validated:
		return ProbeInterval
	case now.Before(p.punchUntil):
		return PunchInterval
	case now.Sub(pa.added) < newPathWindow:
		return time.Second
	}
	return 0 // not probed
}

type outProbe struct {
	d   dest
	pkt [RequestSize]byte
}

func (c *Conn) probeLoop() {
	t := time.NewTicker(tick)
	defer t.Stop()
	var out []outProbe
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			out = c.probeTick(now, out[:0])
			for i := range out {
				c.sendProbe(out[i].d, out[i].pkt[:])
			}
		}
	}
}

// probeTick does one round of bookkeeping: missed probes, due probes,
// pruning and path selection. It returns the probes to send.
func (c *Conn) probeTick(now time.Time, out []outProbe) []outProbe {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.byVirt {
		if p.sent.Load() {
			p.sent.Store(false)
			p.lastSent = now.UnixNano()
		}
		if p.key == nil {
			continue
		}
		for i := len(p.paths) - 1; i >= 0; i-- {
			pa := p.paths[i]
			if pa.probeTx != 0 && now.Sub(pa.probeAt) > probeTimeout(pa) {
				pa.probeTx = 0
				pa.missed++
				c.stats.ProbeLost.Add(1)
			}
			if !pa.validated && !pa.dialed && pa != p.current && pa != p.handshake && now.Sub(pa.added) > pruneAfter {
				c.dropPathLocked(p, pa)
				continue
			}
			if !pa.owner && !pa.relay && c.byReal[pa.addr] == nil {
				// The owner left: a candidate that was refused takes over.
				ev := byWord
				if pa.validated {
					ev = byProof
				}
				c.claimLocked(pa, ev, now)
			}
			iv := c.intervalLocked(p, pa, now)
			if iv == 0 || pa.probeTx != 0 || now.Sub(pa.lastProbe) < iv {
				continue
			}
			pa.lastProbe = now
			out = append(out, outProbe{d: pa.dest()})
			op := &out[len(out)-1]
			c.newRequestLocked(p, pa, now, op.pkt[:0])
		}
		c.selectLocked(p, now)
	}
	return out
}

// newRequestLocked arms pa's outstanding probe and encodes it into b.
func (c *Conn) newRequestLocked(p *peer, pa *path, now time.Time, b []byte) uint64 {
	tx := c.txID.Add(1)<<16 | uint64(now.UnixNano()&0xffff)
	pa.probeTx, pa.probeAt = tx, now
	pr := Probe{ProbeHeader: ProbeHeader{Type: ProbeRequest, TxID: tx, Timestamp: now.UnixNano()}, From: c.self}
	pr.Seal(p.key, p.id)
	AppendProbe(b, &pr)
	return tx
}

// selectLocked moves p to the best path (see Select).
func (c *Conn) selectLocked(p *peer, now time.Time) {
	var cands [maxDests + 1]Candidate
	n, cur := 0, -1
	for _, pa := range p.paths {
		if n == len(cands) {
			break
		}
		if pa == p.current {
			cur = n
		}
		// A path that does not own its address is only a candidate.
		cands[n] = Candidate{Relay: pa.relay, Validated: pa.validated && pa.owner, Alive: c.aliveLocked(pa, now), RTT: pa.srtt}
		n++
	}
	j := Select(cands[:n], cur)
	if j < 0 || j == cur {
		return
	}
	next := p.paths[j]
	from := "none"
	if p.current != nil {
		from = pathName(p.current)
	}
	c.cfg.Logger.Info("path switch", "peer", p.id.Short(), "from", from, "to", pathName(next), "rtt", next.srtt)
	c.setCurrentLocked(p, next)
	p.switches++
	c.stats.PathSwitches.Add(1)
}

func pathName(pa *path) string {
	if pa.relay {
		return "relay " + pa.addr.String()
	}
	return "direct " + pa.addr.String()
}

// sendProbe writes an SMPR packet on d, in a CRLY frame if d is relayed.
func (c *Conn) sendProbe(d dest, pkt []byte) {
	var buf [RelayHeaderSize + ReplySize]byte
	b := pkt
	if d.relay {
		b = append(AppendRelayHeader(buf[:0], RelayHeader{Session: d.session}), pkt...)
	}
	if err := c.writeCtl(b, d.addr); err == nil {
		c.stats.TxProbe.Add(1)
	}
}

// probePeerLocked finds the sender of a probe and the path it came on
// (owned or a candidate); a direct source not known yet becomes a new
// unproven path of the peer (peer-reflexive: its NAT mapping toward us) if
// create is set.
func (c *Conn) probePeerLocked(from pki.Identity, src netip.AddrPort, via *path, create bool, now time.Time) (*peer, *path) {
	p := c.peerLocked(from)
	if p == nil || p.key == nil {
		return nil, nil
	}
	if via != nil {
		if via.peer != p {
			return nil, nil
		}
		return p, via
	}
	if pa := pathAtLocked(p, src); pa != nil {
		return p, pa
	}
	if !create {
		return p, nil
	}
	// A MACed request may be a replay from a spoofed source: only our word
	// for the address, until the peer answers our own probe there.
	return p, c.directLocked(p, src, byWord, now)
}

func (c *Conn) handleRequest(pr *Probe, src netip.AddrPort, via *path, now time.Time) {
	// Cheapest checks first: the clock, then whether the sender is a
	// connected peer at all (read lock only), then its source's budget,
	// then the MAC, and only then the budget shared by all sources, so
	// nothing unauthenticated spends it.
	if d := now.UnixNano() - pr.Timestamp; d > int64(c.cfg.HelloMaxSkew) || -d > int64(c.cfg.HelloMaxSkew) {
		c.stats.DropStaleHello.Add(1)
		return
	}
	c.mu.RLock()
	var key *[32]byte
	if p := c.peerLocked(pr.From); p != nil {
		key = p.key
	}
	c.mu.RUnlock()
	if key == nil {
		c.stats.DropProbeUnknown.Add(1)
		return
	}
	k := srcKey{addr: src, id: pr.From}
	if via != nil {
		k.session = via.session
	}
	c.probeMu.Lock()
	ok := c.probeSrc.allow(&k, now)
	c.probeMu.Unlock()
	if !ok {
		c.stats.DropProbeSrcRate.Add(1)
		return
	}
	if !pr.CheckMAC(key, c.self) {
		c.stats.DropProbeMAC.Add(1)
		return
	}
	c.probeMu.Lock()
	ok = c.probeLimit.allow(now)
	c.probeMu.Unlock()
	if !ok {
		c.stats.DropProbeRate.Add(1)
		return
	}
	c.mu.Lock()
	p, pa := c.probePeerLocked(pr.From, src, via, true, now)
	if pa == nil || p.key != key {
		c.mu.Unlock() // re-keyed or gone meanwhile, or via is another peer's
		c.stats.DropBadProbe.Add(1)
		return
	}
	c.stats.RxProbe.Add(1)
	// Answer, and if this path is new to us, check it ourselves soon (the
	// peer's probe just opened our side of its NAT mapping).
	reply := Probe{ProbeHeader: ProbeHeader{Type: ProbeReply, TxID: pr.TxID, Timestamp: pr.Timestamp}, From: c.self}
	if via == nil {
		reply.Observed = src
	}
	reply.Seal(p.key, p.id)
	var trig outProbe
	triggered := false
	if !pa.validated && pa.probeTx == 0 {
		triggered = true
		trig.d = pa.dest()
		c.newRequestLocked(p, pa, now, trig.pkt[:0])
		pa.lastProbe = now
	}
	d := pa.dest()
	c.mu.Unlock()
	var buf [ReplySize]byte
	c.sendProbe(d, AppendProbe(buf[:0], &reply))
	if triggered {
		c.sendProbe(trig.d, trig.pkt[:])
	}
}

func (c *Conn) handleReply(pr *Probe, src netip.AddrPort, via *path, now time.Time) {
	// Anyone can send replies: check them under the read lock, so a
	// flood never takes the write lock the data path waits on.
	c.mu.RLock()
	p, pa := c.probePeerLocked(pr.From, src, via, false, now)
	var key *[32]byte
	if pa != nil && pa.probeTx != 0 && pa.probeTx == pr.TxID {
		key = p.key
	}
	c.mu.RUnlock()
	if key == nil {
		c.stats.DropBadProbe.Add(1) // late, duplicate, or not ours
		return
	}
	if !pr.CheckMAC(key, c.self) {
		c.stats.DropProbeMAC.Add(1)
		return
	}
	c.mu.Lock()
	if pa.probeTx != pr.TxID || p.key != key || c.byVirt[p.virt] != p {
		c.mu.Unlock() // answered, re-keyed or evicted meanwhile
		c.stats.DropBadProbe.Add(1)
		return
	}
	c.stats.RxProbeReply.Add(1)
	rtt := max(now.Sub(pa.probeAt), time.Microsecond)
	if pa.srtt == 0 {
		pa.srtt = rtt
	} else {
		pa.srtt = (4*pa.srtt + rtt) / 5
	}
	pa.probeTx = 0
	pa.missed = 0
	pa.lastReply = now
	if !pa.validated {
		pa.validated = true
		c.cfg.Logger.Info("path proven", "peer", p.id.Short(), "path", pathName(pa), "rtt", rtt)
	}
	if !pa.relay {
		c.claimLocked(pa, byProof, now) // never from a peer that still answers there
	}
	if pr.Observed.IsValid() {
		c.observed = pr.Observed
	}
	w := c.waiters[pr.TxID]
	delete(c.waiters, pr.TxID)
	c.selectLocked(p, now)
	res := PingResult{Path: c.statusLocked(p, pa, now), RTT: rtt}
	c.mu.Unlock()
	if w != nil {
		w <- res
	}
}

// PathStatus describes one path of a peer.
type PathStatus struct {
	Kind      string        `json:"kind"` // "direct" or "relay"
	Addr      string        `json:"addr"` // the peer's address, or the relay's
	Relay     string        `json:"relay,omitempty"`
	Current   bool          `json:"current"`
	Validated bool          `json:"validated"`
	Alive     bool          `json:"alive"`
	RTT       time.Duration `json:"rtt_ns"`
	Missed    int           `json:"missed"`
}

func (c *Conn) statusLocked(p *peer, pa *path, now time.Time) PathStatus {
	s := PathStatus{Kind: "direct", Addr: pa.addr.String(), Current: pa == p.current, Validated: pa.validated,
		Alive: pa.validated && c.aliveLocked(pa, now), RTT: pa.srtt, Missed: pa.missed}
	if pa.relay {
		s.Kind, s.Relay = "relay", pa.relayID.String()
	}
	return s
}

// Paths returns every path of id (the current one first) and how many times
// its traffic switched paths.
func (c *Conn) Paths(id pki.Identity) ([]PathStatus, uint64) {
	now := time.Now()
	c.mu.RLock()
	defer c.mu.RUnlock()
	p := c.peerLocked(id)
	if p == nil {
		return nil, 0
	}
	out := make([]PathStatus, 0, len(p.paths))
	if p.current != nil {
		out = append(out, c.statusLocked(p, p.current, now))
	}
	for _, pa := range p.paths {
		if pa != p.current {
			out = append(out, c.statusLocked(p, pa, now))
		}
	}
	return out, p.switches
}

// Observed returns the address a peer last reported seeing our probes from.
func (c *Conn) Observed() netip.AddrPort {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.observed
}

// Punch starts hole punching toward id: addrs (its candidate addresses,
// learned from the peer over our connection) become candidate paths, probed
// every PunchInterval for PunchWindow. When the peer does the same at the
// same time, both NATs see outgoing packets first and let the other side's
// in; a path whose probe is answered is proven and Select may move to it.
// It returns how many candidates it took: 0 while a punch toward id runs, so
// a peer cannot make us probe addresses of its choosing faster than that.
func (c *Conn) Punch(id pki.Identity, addrs []netip.AddrPort) int {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peerLocked(id)
	if p == nil || p.key == nil || now.Before(p.punchUntil) {
		return 0
	}
	n := 0
	for _, a := range addrs {
		a = unmap(a)
		if !a.IsValid() || a.Port() == 0 || a.Addr().IsUnspecified() || n == maxRealPerPeer {
			continue
		}
		pa := c.directLocked(p, a, byWord, now)
		if !pa.validated {
			pa.lastProbe = time.Time{}
		}
		n++
	}
	p.punchUntil = now.Add(PunchWindow)
	return n
}

// PingResult is the answer to one Ping.
type PingResult struct {
	Path PathStatus
	RTT  time.Duration
}

// ErrNoPath is returned by Ping for a peer without a connection.
var ErrNoPath = errors.New("smartsock: no connected path to that peer")

// Ping sends an authenticated probe on id's current path and waits for the
// reply: it shows which path traffic takes and its round-trip time.
func (c *Conn) Ping(ctx context.Context, id pki.Identity) (PingResult, error) {
	now := time.Now()
	c.mu.Lock()
	p := c.peerLocked(id)
	if p == nil || p.key == nil || p.current == nil {
		c.mu.Unlock()
		return PingResult{}, ErrNoPath
	}
	if len(c.waiters) >= maxWaiters {
		c.mu.Unlock()
		return PingResult{}, errors.New("smartsock: too many pings in flight")
	}
	pa := p.current
	var op outProbe
	op.d = pa.dest()
	tx := c.newRequestLocked(p, pa, now, op.pkt[:0])
	w := make(chan PingResult, 1)
	c.waiters[tx] = w
	c.mu.Unlock()
	c.sendProbe(op.d, op.pkt[:])
	select {
	case r := <-w:
		return r, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.waiters, tx)
		c.mu.Unlock()
		return PingResult{}, ctx.Err()
	}
}

// ExpectDialBack registers a nonce a helper will send back to us from a
// fresh socket (ProbeDialBack); the returned channel closes when it
// arrives. Call CancelDialBack when giving up.
func (c *Conn) ExpectDialBack(nonce uint64) (<-chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.dialBack) >= maxWaiters {
		return nil, errors.New("smartsock: too many dial-back checks in flight")
	}
	ch := make(chan struct{})
	c.dialBack[nonce] = ch
	return ch, nil
}

// CancelDialBack forgets nonce.
func (c *Conn) CancelDialBack(nonce uint64) {
	c.mu.Lock()
	delete(c.dialBack, nonce)
	c.mu.Unlock()
}

// AppendDialBack encodes the dial-back packet carrying nonce.
func AppendDialBack(b []byte, nonce uint64) []byte {
	return AppendProbeHeader(b, ProbeHeader{Type: ProbeDialBack, TxID: nonce, Timestamp: time.Now().UnixNano()})
}

// PathKey derives the probe MAC key of a QUIC connection from its TLS
// session (RFC 8446 exporter): both ends get the same key, nobody else can.
func PathKey(cs tls.ConnectionState) ([32]byte, error) {
	var k [32]byte
	b, err := cs.ExportKeyingMaterial("EXPORTER-korium-tun path probe v1", nil, len(k))
	if err != nil {
		return k, err
	}
	copy(k[:], b)
	return k, nil
}
