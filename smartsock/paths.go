package smartsock

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/internal/grid"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
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
	tickEvery     = 100 * time.Millisecond
	// newPathWindow: a path learned outside a punch (peer-reflexive, a
	// contact record) is probed for this long at one per second.
	newPathWindow = 5 * time.Second
	// pruneAfter: an unproven path nobody dialed is forgotten after this.
	pruneAfter = 2 * time.Minute
	// IdleProbeInterval is the probe interval of a proven path of an idle
	// peer (see idleTicks). Until traffic starts nothing chooses between
	// its paths (a peer that starts sending is probed every ProbeInterval
	// again at once, and quiet() watches the path in use), QUIC's
	// keep-alives hold the NAT mapping of the path in use, and 25 s alone
	// still keeps a mapping (NATs hold idle UDP mappings 30 s or more) and
	// stays below StaleAfter by more than ProbeTimeout. At 1,000 idle peers
	// it is 160 probe packets a second less (scripts/scale.sh).
	IdleProbeInterval = 25 * time.Second
	// idleJitter: each path probes at IdleProbeInterval less its own
	// random part of this, so that peers that connected together (a
	// restart, a thousand at once in scale.sh) do not probe together and
	// overrun the ProbeRate budget of the node they probe.
	idleJitter = 5 * time.Second
	// idleTicks: a peer that quic-go wrote to in at most this many probe
	// ticks of a ProbeInterval is idle: keep-alives (a PING and an ACK per
	// QUIC keep-alive period, and the answer to the peer's) fit, a second
	// of traffic does not.
	idleTicks = 4
	// QUICProof: the current path of an idle peer on which a QUIC packet
	// arrived within this long is not probed. QUIC's keep-alives (a PING
	// at least every keep-alive period, 15 s by default, answered with an
	// ACK) already show that it delivers and hold its NAT mapping; a probe
	// would add four packets per peer and IdleProbeInterval for nothing.
	// Once traffic starts the peer is busy and probed every ProbeInterval
	// again; a keep-alive left unanswered makes the path quiet (probed
	// every QuietInterval), as before; a path without QUIC packets this
	// long (keep-alives longer than this, or none) is probed every
	// IdleProbeInterval. It is below StaleAfter by more than ProbeTimeout,
	// so the first probe after the proof lapses is answered before the
	// path would count as stale.
	QUICProof = 20 * time.Second
)

// maxWaiters bounds outstanding pings (and, apart, dial-back checks).
const maxWaiters = 256

// alive reports whether pa may carry traffic: it did not miss MaxMissed
// probes in a row, and a probe was answered on it, or (once proven) a QUIC
// packet arrived on it, within StaleAfter. QUIC packets count because an
// idle peer's current path is not probed while they arrive (QUICProof);
// they cannot keep a path alive that misses probes.
func alive(pa *path, now time.Time) bool {
	if pa.missed >= MaxMissed {
		return false
	}
	return pa.lastReply.IsZero() || now.Sub(pa.lastReply) < StaleAfter ||
		pa.validated && now.UnixNano()-heard(pa, now.UnixNano()) < int64(StaleAfter)
}

// heard is when a QUIC packet last arrived on pa that counts (unix ns; now
// is the caller's clock): pa.lastRecv, capped by when pa's peer's
// connection last authenticated a packet. Anybody can send UDP packets with
// a peer's address as their source, and the demux sees them before quic-go
// drops them: uncapped, a spoofer spraying junk from a dead peer's address
// kept its path alive, proven and never quiet until QUIC's idle timeout
// (30 s). The cap is the peer's, not the path's (quic-go does not know which
// path a packet came by): junk on one path while the peer speaks on another
// still counts there.
func heard(pa *path, now int64) int64 { return pa.peer.heardAt(pa.lastRecv.Load(), now) }

// heardAt caps raw, when a packet from one of p's addresses last arrived
// (unix ns), by when p's connection last authenticated one (see heard).
func (p *peer) heardAt(raw, now int64) int64 {
	if p.authAge == nil {
		return raw
	}
	age, ok := p.authAge()
	if !ok {
		return 0
	}
	return min(raw, now-int64(age))
}

// quicProven reports whether pa is idle p's current path, answered a probe
// once (its RTT is known), and QUIC packets arrived on it within QUICProof.
func quicProven(p *peer, pa *path, now time.Time) bool {
	return p.idle && pa == p.current && pa.validated && !pa.doubted && !pa.lastReply.IsZero() &&
		now.UnixNano()-heard(pa, now.UnixNano()) < int64(QUICProof)
}

// quiet reports whether p's traffic on pa stopped: nothing arrived for
// QuietAfter while we were sending, or while packets were arriving until
// shortly before. An idle peer is not quiet, unless what we sent it last
// (a keep-alive) is still unanswered: the keep-alives and their ACKs of an
// idle peer that answers must not make it quiet after each of them.
func quiet(p *peer, pa *path, now int64) bool {
	last := heard(pa, now)
	silent := now - last
	if silent <= int64(QuietAfter) {
		return false
	}
	if p.idle {
		// A send within a tick of the last arrival is its answer (or
		// what it answered: our ACK of the peer's keep-alive). A send
		// after it gets a probe timeout for its answer (the ACK of our
		// keep-alive comes a round trip and the peer's ACK delay later),
		// then a second to make the path quiet.
		at := quietAt(p, pa, now)
		return !at.IsZero() && now >= at.UnixNano() && now < at.UnixNano()+int64(time.Second)
	}
	return now-p.lastSent < int64(time.Second) || silent < int64(3*time.Second)
}

// pending reports whether pa has a probe out that is not yet missed.
func pending(pa *path) bool { return pa.probeTx.Load() != 0 && !pa.lost }

// probeTimeout is how long a probe on pa may go unanswered: a few RTTs,
// between 300 ms and ProbeTimeout.
func probeTimeout(pa *path) time.Duration {
	return min(max(4*pa.srtt+100*time.Millisecond, 300*time.Millisecond), ProbeTimeout)
}

func interval(p *peer, pa *path, now time.Time) time.Duration {
	switch {
	case pa == p.current && quiet(p, pa, now.UnixNano()):
		// Traffic stopped arriving on the path in use: maybe a black hole.
		return QuietInterval
	case pa.validated && pa.missed > 0 && pa.missed < MaxMissed:
		return QuietInterval // settle a doubt quickly
	case quicProven(p, pa, now):
		return 0 // QUIC's keep-alives prove it
	case pa.validated && p.idle:
		return IdleProbeInterval - pa.jitter
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
	pkt [wire.RequestSize]byte
}

// probeRound does one round of bookkeeping (missed probes, due probes,
// pruning and path selection) and sends the probes due. Loop only.
func (c *Conn) probeRound(now time.Time) {
	c.out = c.probeTick(now, c.out[:0])
	for i := range c.out {
		c.sendProbe(c.out[i].d, c.out[i].pkt[:])
	}
	clear(c.out) // no path pointers kept until the next round
}

// probeTick is probeRound without the sending: it returns the probes due.
func (c *Conn) probeTick(now time.Time, out []outProbe) []outProbe {
	// The earliest due time of an idle peer, for the loop's next round;
	// zero while some peer needs every tick.
	look, every := now.Add(idleLook), false
	c.virt.all(func(_ netip.AddrPort, p *peer) {
		if !now.Before(p.due) || p.sent.Load() {
			out = c.lookAt(p, now, out)
		} // else idle, and nothing is due before p.due
		if p.due.IsZero() {
			every = true
		} else {
			look = minTime(look, p.due)
		}
	})
	c.nextLook = look
	if every {
		c.nextLook = time.Time{}
	}
	return out
}

// lookAt is the tick's turn at p: its sent flag, its paths' probes and
// timeouts, path selection and its next due time (nextDue).
func (c *Conn) lookAt(p *peer, now time.Time, out []outProbe) []outProbe {
	if p.sent.Load() {
		p.sent.Store(false)
		// When it wrote, not the tick's time: the ACK of a keep-alive
		// of the peer's goes out a few ms after it arrived, and must
		// not look like a send left unanswered (quiet) when the tick
		// falls between the two.
		p.lastSent = min(p.sentAt.Load(), now.UnixNano())
		if p.busyTicks++; p.busyTicks > idleTicks {
			p.idle = false // traffic started: back to ProbeInterval now
		}
	}
	if now.Sub(p.window) >= ProbeInterval {
		p.idle = p.busyTicks <= idleTicks
		p.busyTicks, p.window = 0, now
	}
	if p.key == nil {
		// Not connected: nothing to probe. Its sent flag (a dial)
		// brings it back; else the net.
		p.due = time.Time{}
		if p.idle {
			p.due = grid.Up(now.Add(idleLook), idleGrid)
		}
		return out
	}
	for i := len(p.paths) - 1; i >= 0; i-- {
		pa := p.paths[i]
		if pending(pa) && now.Sub(pa.probeAt) > probeTimeout(pa) {
			// Missed; its reply still counts until the next probe
			// replaces it (a slow peer is slow, not gone).
			pa.lost = true
			pa.missed++
			c.stats.ProbeLost.Add(1)
			c.touch(p)
		}
		if !pa.validated && !pa.dialed && pa != p.current && pa != p.handshake && now.Sub(pa.added) > pruneAfter {
			c.dropPath(p, pa)
			continue
		}
		if !pa.owner && !pa.relay && c.real.load(pa.addr) == nil {
			// The owner left: a candidate that was refused takes over.
			ev := byWord
			if pa.validated {
				ev = byProof
			}
			c.claim(pa, ev, now)
		}
		iv := interval(p, pa, now)
		if iv == 0 || pending(pa) || now.Sub(pa.lastProbe) < iv {
			continue
		}
		pa.lastProbe = now
		out = append(out, outProbe{d: pa.dest()})
		op := &out[len(out)-1]
		c.newRequest(p, pa, now, op.pkt[:0])
	}
	c.selectPath(p, now)
	p.due = time.Time{}
	if p.idle {
		p.due = nextDue(p, now)
	}
	return out
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// idleLook bounds how long the tick leaves an idle peer alone. nextDue
// names every time something is due; this is only the net below it.
const idleLook = ProbeInterval

// nextDue is when the tick must look at idle p's paths again: a probe's
// timeout, the next probe, the end of a QUIC proof, a keep-alive's answer
// due, a path going stale or to be pruned, at the latest idleLook from now; at the next tick while a path waits to claim
// its address. A write to p (its sent flag) and any change to p (touch)
// bring it back sooner: at 1,000 idle peers the tick, ten times a second
// over every peer, was half of the node's idle CPU.
func nextDue(p *peer, now time.Time) time.Time {
	// Soft due times (a probe to send, a proof or a path ending, the net)
	// are rounded up to a multiple of idleGrid, so that the idle peers'
	// fall on the same rounds and the loop sleeps between them (see
	// loop); hard ones (a probe's timeout, a keep-alive's answer) stay
	// exact.
	soft, hard := now.Add(idleLook), time.Time{}
	earlier := func(at *time.Time, t time.Time) {
		if at.IsZero() || t.Before(*at) {
			*at = t
		}
	}
	for _, pa := range p.paths {
		if !pa.owner && !pa.relay {
			return time.Time{}
		}
		if pending(pa) {
			earlier(&hard, pa.probeAt.Add(probeTimeout(pa)))
		} else if iv := interval(p, pa, now); iv > 0 {
			earlier(&soft, pa.lastProbe.Add(iv))
		} else if quicProven(p, pa, now) {
			earlier(&soft, time.Unix(0, heard(pa, now.UnixNano())).Add(QUICProof))
		}
		if stale := staleAt(pa, now.UnixNano()); stale.After(now) {
			earlier(&soft, stale) // path selection must see it go
		}
		if pa == p.current {
			if q := quietAt(p, pa, now.UnixNano()); q.After(now) {
				earlier(&hard, q) // a keep-alive still unanswered then makes it quiet
			}
		}
		if !pa.validated && !pa.dialed {
			earlier(&soft, pa.added.Add(pruneAfter))
		}
	}
	due := grid.Up(soft, idleGrid)
	if !hard.IsZero() && hard.Before(due) {
		due = hard
	}
	return due
}

// idleGrid is the step idle peers' soft due times are rounded up to.
const idleGrid = time.Second

// quietAt is when idle p's current path pa becomes quiet (see quiet) if
// nothing arrives on it meanwhile, or zero if nothing we sent waits for an
// answer. A probe answered after the send settles it too: the path works
// (replies are not QUIC packets: they leave lastRecv alone).
func quietAt(p *peer, pa *path, now int64) time.Time {
	if p.lastSent-max(heard(pa, now), pa.lastReply.UnixNano()) <= int64(tickEvery) {
		return time.Time{}
	}
	return time.Unix(0, p.lastSent).Add(probeTimeout(pa))
}

// staleAt is when pa stops being alive for want of answers (see alive),
// or zero if it never answered.
func staleAt(pa *path, now int64) time.Time {
	if pa.lastReply.IsZero() {
		return time.Time{}
	}
	t := pa.lastReply
	if r := time.Unix(0, heard(pa, now)); pa.validated && r.After(t) {
		t = r
	}
	return t.Add(StaleAfter)
}

// selectPath moves p to the best path (see Select).
func (c *Conn) selectPath(p *peer, now time.Time) {
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
		cands[n] = Candidate{Relay: pa.relay, Validated: pa.validated && pa.owner, Alive: alive(pa, now), RTT: pa.srtt}
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
	c.setCurrent(p, next)
	p.switches++
	c.stats.PathSwitches.Add(1)
}

func pathName(pa *path) string {
	if pa.relay {
		return "relay " + pa.addr.String()
	}
	return "direct " + pa.addr.String()
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

func (c *Conn) status(p *peer, pa *path, now time.Time) PathStatus {
	s := PathStatus{Kind: "direct", Addr: pa.addr.String(), Current: pa == p.current, Validated: pa.validated,
		Alive: pa.validated && alive(pa, now), RTT: pa.srtt, Missed: pa.missed}
	if pa.relay {
		s.Kind, s.Relay = "relay", pa.relayID.String()
	}
	return s
}

// Paths returns every path of id (the current one first) and how many times
// its traffic switched paths.
func (c *Conn) Paths(id pki.Identity) ([]PathStatus, uint64) {
	now := time.Now()
	var out []PathStatus
	var sw uint64
	c.call(func() {
		p := c.peerOf(id)
		if p == nil {
			return
		}
		out = make([]PathStatus, 0, len(p.paths))
		if p.current != nil {
			out = append(out, c.status(p, p.current, now))
		}
		for _, pa := range p.paths {
			if pa != p.current {
				out = append(out, c.status(p, pa, now))
			}
		}
		sw = p.switches
	})
	return out, sw
}

// Observed returns the address a peer last reported seeing our probes from.
func (c *Conn) Observed() netip.AddrPort {
	var a netip.AddrPort
	c.call(func() { a = c.observed })
	return a
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
	n := 0
	c.call(func() {
		p := c.peerOf(id)
		if p == nil || p.key == nil || now.Before(p.punchUntil) {
			return
		}
		for _, a := range addrs {
			a = unmap(a)
			if !a.IsValid() || a.Port() == 0 || a.Addr().IsUnspecified() || n == maxRealPerPeer {
				continue
			}
			pa := c.direct(p, a, byWord, now)
			if !pa.validated {
				pa.lastProbe = time.Time{}
			}
			n++
		}
		p.punchUntil = now.Add(PunchWindow)
		c.lookSoon(p)
	})
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
	var tx uint64
	var w chan PingResult
	var err error
	if !c.call(func() {
		p := c.peerOf(id)
		if p == nil || p.key == nil || p.current == nil {
			err = ErrNoPath
			return
		}
		if len(c.waiters) >= maxWaiters {
			err = errors.New("smartsock: too many pings in flight")
			return
		}
		pa := p.current
		var op outProbe
		tx = c.newRequest(p, pa, now, op.pkt[:0])
		w = make(chan PingResult, 1)
		c.waiters[tx] = w
		c.sendProbe(pa.dest(), op.pkt[:])
	}) {
		return PingResult{}, net.ErrClosed
	}
	if err != nil {
		return PingResult{}, err
	}
	select {
	case r := <-w:
		return r, nil
	case <-ctx.Done():
		c.call(func() { delete(c.waiters, tx) })
		return PingResult{}, ctx.Err()
	case <-c.loopDone:
		return PingResult{}, net.ErrClosed
	}
}

// ExpectDialBack registers a nonce a helper will send back to us from a
// fresh socket (ProbeDialBack); the returned channel closes when it
// arrives. Call CancelDialBack when giving up.
func (c *Conn) ExpectDialBack(nonce uint64) (<-chan struct{}, error) {
	var ch chan struct{}
	var err error
	if !c.call(func() {
		if len(c.dialBack) >= maxWaiters {
			err = errors.New("smartsock: too many dial-back checks in flight")
			return
		}
		ch = make(chan struct{})
		c.dialBack[nonce] = ch
		c.dialBacks.Store(int32(len(c.dialBack)))
	}) {
		return nil, net.ErrClosed
	}
	return ch, err
}

// CancelDialBack forgets nonce.
func (c *Conn) CancelDialBack(nonce uint64) {
	c.call(func() {
		delete(c.dialBack, nonce)
		c.dialBacks.Store(int32(len(c.dialBack)))
	})
}

// AppendDialBack encodes the dial-back packet carrying nonce (wire's
// format, stamped now).
func AppendDialBack(b []byte, nonce uint64) []byte {
	return wire.AppendDialBack(b, nonce, time.Now().UnixNano())
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
