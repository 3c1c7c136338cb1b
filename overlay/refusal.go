package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartsock"
)

// Refusals made visible. A dial with the wrong expected identity, a peer
// below the network's proof of work, and two nodes running one key used to
// fail in silence on both ends. Each refusal is now counted by reason (in
// Status.Refusals) and logged once per peer and reason a minute, at the
// default level, on both sides: smartsock answers a refused hello with a
// signed refusal the dialer reports (and its dial fails at once instead of
// timing out), and a dialer whose TLS check refuses its peer's certificate
// tells the peer the same way.

// refusal is a reason a connection was refused, on either side.
type refusal int

const (
	weRefusedWrongIdentity refusal = iota // a dial (hello) for another identity reached us
	weRefusedLowPoW                       // the peer's proof of work is below ours
	weRefusedBadCert                      // its certificate is not an overlay certificate
	weRefusedNotOwner                     // its identity does not own the address it used
	weRefusedPeerLimit                    // no room for another peer
	weRefusedNoDatagrams                  // it does not speak QUIC datagrams
	weSawSameIdentity                     // two live nodes run one identity (a warning, not a refusal)
	refusedUsWrongIdentity                // the node at the address we dialed is someone else
	refusedUsLowPoW                       // the peer requires more proof of work than we have
	peerSawSameIdentity                   // a peer reports another node with our identity
	refusedUsClosed                       // the peer closed our connection as refused (peer limit, ...)
	numRefusals
)

// refusalNames are the Status.Refusals keys.
var refusalNames = [numRefusals]string{
	"we_refused_wrong_identity", "we_refused_low_pow", "we_refused_bad_certificate", "we_refused_not_owner",
	"we_refused_peer_limit", "we_refused_no_datagrams", "same_identity_seen",
	"refused_us_wrong_identity", "refused_us_low_pow", "same_identity_reported", "refused_us_closed",
}

// local reports whether we refused a handshake (it counts as
// handshake_refused).
func (r refusal) local() bool { return r < weSawSameIdentity }

// refusalCounters count refusals by reason.
type refusalCounters [numRefusals]atomic.Uint64

// logGate lets one line per key through every logGateEvery, for at most
// maxLogGateKeys keys at once: a peer retrying a refused dial (or many
// peers) cannot flood the log. The counters count every refusal.
type logGate struct {
	mu   sync.Mutex // guards last
	last map[string]time.Time
}

const (
	logGateEvery   = time.Minute
	maxLogGateKeys = 256
)

func (g *logGate) allow(key string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t, ok := g.last[key]; ok && now.Sub(t) < logGateEvery {
		return false
	}
	if g.last == nil {
		g.last = make(map[string]time.Time)
	}
	if len(g.last) >= maxLogGateKeys {
		for k, t := range g.last {
			if now.Sub(t) >= logGateEvery {
				delete(g.last, k)
			}
		}
		if len(g.last) >= maxLogGateKeys {
			return false
		}
	}
	g.last[key] = now
	return true
}

// refused counts a refusal of (or by) peer and logs msg at Warn, rate-limited.
func (n *Node) refused(r refusal, peer pki.Identity, addr netip.AddrPort, msg string) {
	n.refusals[r].Add(1)
	if r.local() {
		n.stats.HandshakeRefused.Add(1)
	}
	if n.logGate.allow(refusalNames[r]+peer.String(), time.Now()) {
		args := []any{"reason", refusalNames[r], "peer", peer.String()}
		if addr.IsValid() {
			args = append(args, "addr", addr.String())
		}
		n.cfg.Logger.Warn(msg, args...)
	}
}

// who names a peer in a log line: "bootstrap 5f1c…" for a bootstrap
// contact, "peer 5f1c…" otherwise.
func (n *Node) who(id pki.Identity) string {
	if n.peers.Snapshot().Kept(id) {
		return "bootstrap " + id.Short() + "…"
	}
	return "peer " + id.Short() + "…"
}

// RefusedError is why a dial failed when the other side refused it: it
// says what the peer told us.
type RefusedError struct{ msg string }

func (e *RefusedError) Error() string { return e.msg }

// onRefusal takes smartsock's refusal events (it runs on the read path:
// nothing here blocks).
func (n *Node) onRefusal(ev smartsock.Refusal) {
	switch {
	case ev.Local && ev.Reason == smartsock.RefuseWrongIdentity:
		n.refused(weRefusedWrongIdentity, ev.Peer, ev.Addr, fmt.Sprintf(
			"refused a dial from %s… at %s: it expects identity %s… at this address, but this node is %s… (its --bootstrap names the wrong identity)",
			ev.Peer.Short(), ev.Addr, ev.Wanted.Short(), n.id.Short()))
	case ev.Local && ev.Reason == smartsock.RefuseLowPoW:
		n.refused(weRefusedLowPoW, ev.Peer, ev.Addr, lowPoWLine(ev.Peer, ev.Addr, ev.Have, ev.Bits))
	case ev.Reason == smartsock.RefuseWrongIdentity:
		msg := fmt.Sprintf("%s is not at %s: the node there is %s… (check the identity you gave for that address)", n.who(ev.Peer), ev.Addr, ev.From.Short())
		n.refused(refusedUsWrongIdentity, ev.Peer, ev.Addr, msg)
		n.abortDial(ev.Peer, false, &RefusedError{msg})
	case ev.Reason == smartsock.RefuseSameIdentity:
		n.refused(peerSawSameIdentity, ev.Peer, ev.Addr, fmt.Sprintf(
			"%s sees another node running our identity %s…: the two reset each other's connections. Two nodes use the same key file: give each node its own (korium-tun keygen)", n.who(ev.Peer), n.id.Short()))
	case ev.Reason == smartsock.RefuseLowPoW:
		msg := fmt.Sprintf("%s refused our proof of work: it requires %d bits, we have %d (every node of a network needs a key made with the same --pow-bits)", n.who(ev.Peer), ev.Bits, ev.Have)
		n.refused(refusedUsLowPoW, ev.Peer, ev.Addr, msg)
		n.abortDial(ev.Peer, true, &RefusedError{msg})
	}
}

func lowPoWLine(id pki.Identity, addr netip.AddrPort, have, want int) string {
	at := ""
	if addr.IsValid() {
		at = " at " + addr.String()
	}
	return fmt.Sprintf("refused %s…%s: its proof of work has %d bits, this network requires %d (it needs a key made with --pow-bits %d)", id.Short(), at, have, want, want)
}

// onCertReject hears of every peer certificate our TLS check refuses
// (either end of a handshake). A dialer that refuses its peer's proof of
// work tells the peer with a signed refusal.
func (n *Node) onCertReject(err error) {
	n.tlsRefused(err)
	var id pki.Identity
	var pe *pki.PoWError
	var ie *pki.IdentityError
	switch {
	case errors.As(err, &pe):
		id = pe.ID
	case errors.As(err, &ie):
		id = ie.Got
	}
	addr := n.handshakeAddr(id)
	switch {
	case pe != nil:
		n.refused(weRefusedLowPoW, id, addr, lowPoWLine(id, addr, pe.Have, pe.Want))
		n.sock.SendRefusal(id, smartsock.RefuseLowPoW)
	case ie != nil:
		// smartsock refuses misaddressed hellos, so the other side only
		// gets here by lying about who it is.
		n.refused(weRefusedWrongIdentity, id, addr, fmt.Sprintf("refused %s…: it presented a certificate for %s…, not the identity we dialed", ie.Want.Short(), ie.Got.Short()))
	default:
		n.refused(weRefusedBadCert, id, addr, fmt.Sprintf("refused a handshake: %v", err))
	}
}

// handshakeAddr is where id's newest handshake came from, if known.
func (n *Node) handshakeAddr(id pki.Identity) netip.AddrPort {
	if id == (pki.Identity{}) {
		return netip.AddrPort{}
	}
	a, _ := n.sock.HandshakeAddr(id)
	return a
}

// abortDial fails a dial to id in progress with err. Unless always, only a
// dial with a single path is failed: one of several addresses answering
// for someone else says nothing about the others.
func (n *Node) abortDial(id pki.Identity, always bool, err error) { n.peers.AbortDial(id, always, err) }

// peerRefused takes the peer set's refusals: each is counted and logged by
// reason like ours, except a refusal of the host's admission (members.go
// counts and logs those itself).
func (n *Node) peerRefused(r peers.Refusal, id pki.Identity, addr netip.AddrPort, msg string) {
	switch r {
	case peers.RefusedBadCert:
		n.refused(weRefusedBadCert, id, addr, msg)
	case peers.RefusedNotOwner:
		n.refused(weRefusedNotOwner, id, addr, msg)
	case peers.RefusedNoDatagrams:
		n.refused(weRefusedNoDatagrams, id, addr, msg)
	case peers.RefusedPeerLimit:
		n.refused(weRefusedPeerLimit, id, addr, msg)
	default:
		n.stats.HandshakeRefused.Add(1)
	}
}

// closedAsRefused logs and counts a connection the peer closed as refused.
func (n *Node) closedAsRefused(p *peers.Peer, cause error) {
	var ae *quic.ApplicationError
	if !errors.As(cause, &ae) || !ae.Remote {
		return
	}
	addr := n.handshakeAddr(p.ID)
	if ae.ErrorCode == peers.CodeRefused {
		n.refused(refusedUsClosed, p.ID, addr, fmt.Sprintf("%s refused our connection: %s", n.who(p.ID), ae.ErrorMessage))
	}
}

// Two nodes that run one key look, to a peer of both, like one peer whose
// connection keeps being replaced from another address, and since its
// path table has one entry per identity, each node gets the other's
// packets and resets its connection (they share the stateless reset key).
// A node that restarted, or whose NAT mapping changed, leaves its old
// address silent; a dialer racing several addresses stops sending to the
// others once its handshake is done. So when a live connection from one
// address was replaced by one from another, and QUIC packets still arrive
// as that identity from the old address more than sameIDBurst after the
// replacement (the other node's keep-alives), two nodes share it: we warn,
// and tell both with a signed notice so that they warn too. Nothing is
// refused: which of the two is "the" node is not ours to decide.
const (
	sameIDBurst    = time.Second
	maxSameIDCheck = 64 // checks waiting at once
)

// replaced starts a check, after a live connection of id from was was
// replaced by one from addr, for a second node still sending from was.
func (n *Node) replaced(id pki.Identity, was, addr netip.AddrPort) {
	if !was.IsValid() || !addr.IsValid() || was == addr {
		return
	}
	if n.sameIDChecks.Add(1) > maxSameIDCheck {
		n.sameIDChecks.Add(-1)
		return
	}
	at := time.Now()
	n.goLoop(func() {
		defer n.sameIDChecks.Add(-1)
		// The other node sends at least a keep-alive per KeepAlive.
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(n.cfg.KeepAlive + sameIDBurst):
		}
		if last := n.sock.LastRecv(id, was); last.Sub(at) < sameIDBurst {
			return // silent since: a restart, a NAT rebinding, a raced dial
		}
		n.refused(weSawSameIdentity, id, was, fmt.Sprintf(
			"two nodes run identity %s…, at %s and at %s: they reset each other's connections; each node needs its own key file", id.Short(), was, addr))
		n.sock.SendRefusalTo(id, was, smartsock.RefuseSameIdentity)
		n.sock.SendRefusalTo(id, addr, smartsock.RefuseSameIdentity)
	})
}
