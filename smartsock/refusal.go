package smartsock

import (
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
)

// Refusals. A hello that is well signed but refused (addressed to another
// identity, or from an identity below our proof-of-work difficulty) used
// to be dropped in silence: the dialer waited out its handshake timeout not
// knowing why, and the refuser logged nothing. Now the refuser answers with
// a signed ProbeRefusal saying why, and both ends report the refusal to
// their node (Config.OnRefusal). A dialer whose TLS check refused its
// peer's certificate sends one too (SendRefusal), so the peer learns it.
//
// A refusal is smaller than the hello it answers (no amplification), sent
// at most refusalRate a second, and accepted only from an address we have
// a path to, signed by its sender, addressed to us and fresh.

// ProbeRefusal is a signed "I refuse you, and why". Its transaction ID
// echoes the refused hello's.
//
//	header | From (32, the refuser) | To (32, the refused) | reason (1) | bits (1) | Ed25519 signature (64)
const ProbeRefusal byte = 5

// Reasons a refusal gives.
const (
	// RefuseWrongIdentity: the hello was addressed to another identity
	// than the refuser's (the dialer expects someone else at this address).
	RefuseWrongIdentity byte = 1
	// RefuseLowPoW: the refused identity's proof of work is below the
	// refuser's difficulty, given in bits.
	RefuseLowPoW byte = 2
	// RefuseSameIdentity is a notice rather than a refusal: the sender
	// sees two live nodes with the receiver's identity (two nodes run one
	// key). It is sent to both.
	RefuseSameIdentity byte = 3
)

// RefusalSize is the size of an encoded refusal: less than HelloSize.
const RefusalSize = ProbeHeaderSize + 2*pki.IdentitySize + 2 + 64

// refusalRate bounds refusals sent per second (each costs a signature).
const refusalRate = 20

const refusalContext = "korium-tun smartsock refusal v1\x00"

// RefusalMsg is a decoded refusal. It is trusted only after Verify.
type RefusalMsg struct {
	ProbeHeader
	From, To pki.Identity
	Reason   byte
	Bits     byte // the refuser's difficulty (RefuseLowPoW)
	Sig      [64]byte
}

func appendRefusalSigned(b []byte, r *RefusalMsg) []byte {
	b = append(b, refusalContext...)
	b = AppendProbeHeader(b, r.ProbeHeader)
	b = append(b, r.From[:]...)
	b = append(b, r.To[:]...)
	return append(b, r.Reason, r.Bits)
}

// NewRefusal builds and signs a refusal from kp to the refused identity.
func NewRefusal(kp *pki.Keypair, to pki.Identity, reason, bits byte, txID uint64, now int64) *RefusalMsg {
	r := &RefusalMsg{ProbeHeader: ProbeHeader{Type: ProbeRefusal, TxID: txID, Timestamp: now}, From: kp.Identity(), To: to, Reason: reason, Bits: bits}
	copy(r.Sig[:], kp.Sign(appendRefusalSigned(make([]byte, 0, 128), r)))
	return r
}

// AppendRefusal appends the encoded refusal to b.
func AppendRefusal(b []byte, r *RefusalMsg) []byte {
	b = AppendProbeHeader(b, r.ProbeHeader)
	b = append(b, r.From[:]...)
	b = append(b, r.To[:]...)
	b = append(b, r.Reason, r.Bits)
	return append(b, r.Sig[:]...)
}

// ParseRefusal decodes a refusal (header included). It checks only the
// format; callers must call Verify.
func ParseRefusal(b []byte) (*RefusalMsg, error) {
	ph, body, err := ParseProbeHeader(b)
	if err != nil {
		return nil, err
	}
	if ph.Type != ProbeRefusal {
		return nil, errType
	}
	if len(body) != RefusalSize-ProbeHeaderSize {
		return nil, errBadHello
	}
	r := &RefusalMsg{ProbeHeader: ph}
	copy(r.From[:], body[:32])
	copy(r.To[:], body[32:64])
	r.Reason, r.Bits = body[64], body[65]
	copy(r.Sig[:], body[66:])
	if r.Reason < RefuseWrongIdentity || r.Reason > RefuseSameIdentity {
		return nil, errType
	}
	return r, nil
}

// Verify checks the refusal's signature. scratch may be nil.
func (r *RefusalMsg) Verify(scratch []byte) bool {
	return r.From.Verify(appendRefusalSigned(scratch[:0], r), r.Sig[:])
}

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

// refuseHello answers a hello we refuse for reason, once its signature
// shows From really sent it (under the hello rate limit), and reports the
// refusal. It runs without c.mu held.
func (c *Conn) refuseHello(h *Hello, src netip.AddrPort, reason byte, now time.Time) {
	c.helloMu.Lock()
	if !c.helloLimit.allow(now) {
		c.helloMu.Unlock()
		c.stats.DropHelloRate.Add(1)
		return
	}
	ok := h.Verify(c.scratch)
	c.helloMu.Unlock()
	if !ok {
		return
	}
	ev := Refusal{Local: true, Peer: h.From, Wanted: h.To, Addr: src, Reason: reason, Have: pki.PoWBits(h.From, h.PoWNonce), Bits: c.cfg.PoWBits}
	c.sendRefusal(h.From, src, reason, h.TxID, now)
	if f := c.cfg.OnRefusal; f != nil {
		f(ev)
	}
}

// sendRefusal signs and sends a refusal to dst, rate-limited.
func (c *Conn) sendRefusal(to pki.Identity, dst netip.AddrPort, reason byte, txID uint64, now time.Time) {
	c.refuseMu.Lock()
	ok := c.refuseLimit.allow(now)
	c.refuseMu.Unlock()
	if !ok {
		c.stats.DropRefusalRate.Add(1)
		return
	}
	r := NewRefusal(c.cfg.Keypair, to, reason, byte(min(c.cfg.PoWBits, 255)), txID, now.UnixNano())
	var buf [RefusalSize]byte
	if _, err := c.udp.WriteToUDPAddrPort(AppendRefusal(buf[:0], r), dst); err == nil {
		c.stats.TxRefusal.Add(1)
	}
}

// SendRefusal tells id, at the address its handshake came from, that we
// refuse it for reason (our TLS check refused its certificate). It does
// nothing for a peer without a path.
func (c *Conn) SendRefusal(id pki.Identity, reason byte) {
	c.mu.RLock()
	var dst netip.AddrPort
	if p := c.peerLocked(id); p != nil {
		if pa := p.handshake; pa != nil && !pa.relay {
			dst = pa.addr
		} else if pa := p.current; pa != nil && !pa.relay {
			dst = pa.addr
		}
	}
	c.mu.RUnlock()
	if dst.IsValid() {
		c.sendRefusal(id, dst, reason, c.txID.Add(1), time.Now())
	}
}

// SendRefusalTo tells id at dst, one of its direct paths, that we refuse it
// for reason.
func (c *Conn) SendRefusalTo(id pki.Identity, dst netip.AddrPort, reason byte) {
	c.mu.RLock()
	pa := c.byReal[unmap(dst)]
	ok := pa != nil && pa.peer.id == id
	c.mu.RUnlock()
	if ok {
		c.sendRefusal(id, dst, reason, c.txID.Add(1), time.Now())
	}
}

// handleRefusal takes a refusal from src: it must be addressed to us, fresh,
// from an address we have a direct path to, and signed by its sender, who
// must be the identity of that path, except for RefuseWrongIdentity (the
// identity we expected is not there). It runs without c.mu held.
func (c *Conn) handleRefusal(b []byte, src netip.AddrPort, now time.Time) {
	r, err := ParseRefusal(b)
	if err != nil || r.To != c.self || r.From == c.self {
		c.stats.DropBadProbe.Add(1)
		return
	}
	if d := now.UnixNano() - r.Timestamp; d > int64(c.cfg.HelloMaxSkew) || -d > int64(c.cfg.HelloMaxSkew) {
		c.stats.DropStaleHello.Add(1)
		return
	}
	c.mu.RLock()
	var peer pki.Identity
	pa := c.byReal[src]
	if pa != nil {
		peer = pa.peer.id
	}
	c.mu.RUnlock()
	if pa == nil || (r.Reason != RefuseWrongIdentity) != (r.From == peer) {
		// Nobody we talk to at src, or a claim that does not fit it: a
		// wrong-identity refusal comes from someone else than the peer we
		// expect there, every other one from the peer itself.
		c.stats.DropBadProbe.Add(1)
		return
	}
	c.helloMu.Lock()
	if !c.helloLimit.allow(now) {
		c.helloMu.Unlock()
		c.stats.DropHelloRate.Add(1)
		return
	}
	ok := r.Verify(c.scratch)
	c.helloMu.Unlock()
	if !ok {
		c.stats.DropBadProbe.Add(1)
		return
	}
	c.stats.RxRefusal.Add(1)
	if f := c.cfg.OnRefusal; f != nil {
		f(Refusal{Peer: peer, From: r.From, Addr: src, Reason: r.Reason, Bits: int(r.Bits), Have: c.cfg.Keypair.PoWBits()})
	}
}

// HandshakeAddr returns the direct address id's newest handshake packet
// came from (relay paths: none), for reports about a handshake and the
// node's check for two nodes sharing one identity.
func (c *Conn) HandshakeAddr(id pki.Identity) (netip.AddrPort, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p := c.peerLocked(id)
	if p == nil || p.handshake == nil || p.handshake.relay {
		return netip.AddrPort{}, false
	}
	return p.handshake.addr, true
}

// LastRecv returns when a QUIC packet last arrived from id on its direct
// path addr (zero time: never, or no such path). The node uses it to see
// whether a node it replaced is still sending as id.
func (c *Conn) LastRecv(id pki.Identity, addr netip.AddrPort) time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	pa := c.byReal[unmap(addr)]
	if pa == nil || pa.peer.id != id || pa.lastRecv.Load() == 0 {
		return time.Time{}
	}
	return time.Unix(0, pa.lastRecv.Load())
}
