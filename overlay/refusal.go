package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

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
	weRefusedSameIdentity                 // another node with its identity is connected
	refusedUsWrongIdentity                // the node at the address we dialed is someone else
	refusedUsLowPoW                       // the peer requires more proof of work than we have
	refusedUsSameIdentity                 // the peer holds a connection from another node with our identity
	refusedUsClosed                       // the peer closed our connection as refused (peer limit, ...)
	numRefusals
)

// refusalNames are the Status.Refusals keys.
var refusalNames = [numRefusals]string{
	"we_refused_wrong_identity", "we_refused_low_pow", "we_refused_bad_certificate", "we_refused_not_owner",
	"we_refused_peer_limit", "we_refused_no_datagrams", "we_refused_same_identity",
	"refused_us_wrong_identity", "refused_us_low_pow", "refused_us_same_identity", "refused_us_closed",
}

// local reports whether we made the refusal (it counts as handshake_refused).
func (r refusal) local() bool { return r < refusedUsWrongIdentity }

// refusalCounters count refusals by reason.
type refusalCounters [numRefusals]atomic.Uint64

// codeSameIdentity closes a connection from a node whose identity another
// live connection already holds (two nodes run the same key).
const codeSameIdentity quic.ApplicationErrorCode = 3

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
	n.mu.RLock()
	_, boot := n.desired[id]
	n.mu.RUnlock()
	if boot {
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
		msg := fmt.Sprintf("%s refused us: another node with our identity %s… is connected to it. Two nodes run the same key file: give each node its own (korium-tun keygen)", n.who(ev.Peer), n.id.Short())
		n.refused(refusedUsSameIdentity, ev.Peer, ev.Addr, msg)
		n.abortDial(ev.Peer, true, &RefusedError{msg})
		if p := n.peer(ev.Peer); p != nil {
			// Signed by the peer itself: our side of the handshake it
			// refused is dead.
			p.conn.CloseWithError(codeNormal, "refused: another node has our identity")
		}
		n.backOffDial(ev.Peer, time.Minute)
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
func (n *Node) onCertReject(id pki.Identity, err error) {
	addr := n.handshakeAddr(id)
	var pe *pki.PoWError
	var ie *pki.IdentityError
	switch {
	case errors.As(err, &pe):
		n.refused(weRefusedLowPoW, id, addr, lowPoWLine(id, addr, pe.Have, pe.Want))
		n.sock.SendRefusal(id, smartsock.RefuseLowPoW)
	case errors.As(err, &ie):
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
func (n *Node) abortDial(id pki.Identity, always bool, err error) {
	n.dialMu.Lock()
	defer n.dialMu.Unlock()
	if c := n.dials[id]; c != nil && (always || c.paths == 1) {
		c.cancel(err)
	}
}

// backOffDial keeps a desired peer from being redialed for at least d:
// its refusal will not change soon.
func (n *Node) backOffDial(id pki.Identity, d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ds := n.desired[id]; ds != nil {
		ds.backoff = max(ds.backoff, d)
		ds.nextDial = time.Now().Add(ds.backoff)
	}
}

// closedAsRefused logs and counts a connection the peer closed as refused.
func (n *Node) closedAsRefused(p *peer, cause error) {
	var ae *quic.ApplicationError
	if !errors.As(cause, &ae) || !ae.Remote {
		return
	}
	addr := n.handshakeAddr(p.id)
	switch ae.ErrorCode {
	case codeSameIdentity:
		n.refused(refusedUsSameIdentity, p.id, addr, fmt.Sprintf(
			"%s dropped us: %s. Two nodes run the same key file: give each node its own (korium-tun keygen)", n.who(p.id), ae.ErrorMessage))
	case codeRefused:
		n.refused(refusedUsClosed, p.id, addr, fmt.Sprintf("%s refused our connection: %s", n.who(p.id), ae.ErrorMessage))
	}
}

// Two nodes that run one key look, to a peer of both, like one peer whose
// connections alternate between two addresses. A restarted node, or one
// whose NAT mapping changed, moves to a new address and does not come
// back to the one before. So a handshake from the address before the last
// one, within sameIdentityWindow, is a second node with that identity.
const (
	sameIdentityWindow = 2 * time.Minute
	maxAddrHistory     = 1024
)

// addrHistory is where an identity's last two accepted handshakes came from.
type addrHistory struct {
	last, prev netip.AddrPort
	at         time.Time
}

// noteHandshake records a handshake from id at addr and reports whether it
// comes from a second node with id (then it is not recorded: the node we
// settled on keeps its place), and that node's address.
func (n *Node) noteHandshake(id pki.Identity, addr netip.AddrPort, now time.Time) (netip.AddrPort, bool) {
	if !addr.IsValid() {
		return netip.AddrPort{}, false
	}
	n.histMu.Lock()
	defer n.histMu.Unlock()
	h := n.hist[id]
	if h != nil && now.Sub(h.at) < sameIdentityWindow && addr == h.prev && addr != h.last {
		h.at = now // it keeps trying: keep refusing it
		return h.last, true
	}
	if h == nil {
		if n.hist == nil {
			n.hist = make(map[pki.Identity]*addrHistory)
		}
		if len(n.hist) >= maxAddrHistory {
			for k, v := range n.hist {
				if now.Sub(v.at) >= sameIdentityWindow {
					delete(n.hist, k)
				}
			}
			if len(n.hist) >= maxAddrHistory {
				return netip.AddrPort{}, false
			}
		}
		h = &addrHistory{}
		n.hist[id] = h
	}
	if addr != h.last {
		h.prev, h.last = h.last, addr
	}
	h.at = now
	return netip.AddrPort{}, false
}
