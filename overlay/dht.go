package overlay

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/rpc"
	"github.com/korium/korium-tun/smartaddr"
)

// The node's DHT talks to peers through RPC on their QUIC connections
// (dialing a contact's addresses when there is none), answers their
// requests, joins and publishes our record once any peer is connected, and
// is the default Resolver of unknown overlay addresses. Both directions tell
// the DHT where the peer really is: the direct path smartsock authenticated
// for it (directAddr), not an address the peer declared. No address from a
// record, contact or hint is dialed unless addrpolicy allows it.

type dhtTransport struct{ n *Node }

// Call implements dht.Transport: the answer's address is the direct path
// the connection to.Identity uses (none when it is relayed).
func (t dhtTransport) Call(ctx context.Context, to dht.Contact, req []byte) ([]byte, netip.AddrPort, error) {
	conn, err := t.n.connFor(ctx, to.Identity, to.Addrs)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	resp, err := t.n.rpc.Call(ctx, conn, rpc.ProtoDHT, req)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	at, _ := t.n.nat.DirectAddr(to.Identity)
	return resp, at, nil
}

// loopbackOK reports whether the node listens on loopback: only then may a
// peer's word make it send to a loopback address (addrpolicy).
func (n *Node) loopbackOK() bool { return n.LocalAddr().Addr().Unmap().IsLoopback() }

// hostAddrAdvertisable reports whether an address of one of the host's
// interfaces may go into our record when we listen on all of them: one
// addrpolicy lets others send to, never loopback (the DHT would refuse the
// whole address list, and the node would not start, over one odd
// interface address).
func hostAddrAdvertisable(ip netip.Addr) bool {
	return addrpolicy.Dialable(netip.AddrPortFrom(ip, 1), false)
}

// dialable returns the addresses a peer's word (a record, a DHT contact)
// may make us dial, in order.
func (n *Node) dialable(addrs []netip.AddrPort) []netip.AddrPort {
	loop := n.loopbackOK()
	var out []netip.AddrPort
	for _, a := range addrs {
		if addrpolicy.Dialable(a, loop) {
			out = append(out, a)
		}
	}
	return out
}

// connFor returns the connection to id, dialing those of addrs addrpolicy
// allows, in order, if there is none. The handshake pins id, so a wrong
// address only costs a failed dial.
func (n *Node) connFor(ctx context.Context, id pki.Identity, addrs []netip.AddrPort) (*quic.Conn, error) {
	if p := n.peer(id); p != nil {
		p.Touch()
		return p.Conn, nil
	}
	if id == n.id {
		return nil, fmt.Errorf("%w: that is us", ErrUnreachable)
	}
	addrs = n.dialable(addrs)
	if n.recentlyUnreachable(id) {
		// A peer behind NAT cannot be dialed directly; its DHT contact
		// would otherwise cost every lookup a full query timeout.
		return nil, fmt.Errorf("%w: %s: a direct dial failed moments ago", ErrUnreachable, id.Short())
	}
	if err := n.nat.Connect(ctx, id, addrs, nil, false); err != nil {
		if ctx.Err() != nil || errors.Is(err, ErrUnreachable) {
			n.markUnreachable(id)
		}
		return nil, err
	}
	if p := n.peer(id); p != nil {
		return p.Conn, nil
	}
	return nil, fmt.Errorf("%w: %s: connection closed", ErrUnreachable, id.Short())
}

// Direct dials that failed are remembered briefly (bounded).
const (
	unreachableTTL = 10 * time.Second
	maxUnreachable = 4096
)

func (n *Node) recentlyUnreachable(id pki.Identity) bool {
	n.unreachMu.Lock()
	defer n.unreachMu.Unlock()
	until, ok := n.unreachable[id]
	if ok && time.Now().After(until) {
		delete(n.unreachable, id)
		return false
	}
	return ok
}

func (n *Node) markUnreachable(id pki.Identity) {
	now := time.Now()
	n.unreachMu.Lock()
	defer n.unreachMu.Unlock()
	if n.unreachable == nil {
		n.unreachable = make(map[pki.Identity]time.Time)
	}
	if len(n.unreachable) >= maxUnreachable {
		for k, t := range n.unreachable {
			if now.After(t) {
				delete(n.unreachable, k)
			}
		}
		if len(n.unreachable) >= maxUnreachable {
			return
		}
	}
	n.unreachable[id] = now.Add(unreachableTTL)
}

// handleDHT answers a peer's DHT request, telling the DHT the direct path
// the peer's connection uses (none when relayed: then it never enters our
// routing table).
func (n *Node) handleDHT(_ context.Context, from pki.Identity, req []byte) ([]byte, error) {
	n.touch(from)
	at, _ := n.nat.DirectAddr(from)
	return n.dht.HandleRequest(from, at, req)
}

// dhtSeeds returns the connected peers as DHT contacts.
func (n *Node) dhtSeeds() []dht.Contact {
	var out []dht.Contact
	for p := range n.peers.Snapshot().All() {
		if enrollee(p) {
			continue // the DHT stays among members
		}
		c := dht.Contact{Identity: p.ID, Nonce: p.Nonce}
		if pi, ok := n.sock.Path(p.ID); ok && pi.Direct.IsValid() {
			c.Addrs = []netip.AddrPort{pi.Direct}
		}
		out = append(out, c)
	}
	return out
}

// dhtJoin waits until some peer is connected, then bootstraps the DHT from
// the connected peers and publishes our record, retrying with backoff. The
// DHT republishes by itself afterwards.
func (n *Node) dhtJoin() {
	backoff := 500 * time.Millisecond
	joinBy := time.Now().Add(natWaitForJoin)
	for {
		// Join after configure_nat (milliseconds when public, about
		// dialBackWait behind NAT), so a node behind NAT joins as a client
		// and never enters others' tables as a contact they cannot dial.
		if seeds := n.dhtSeeds(); len(seeds) > 0 && (n.NAT().Checked || time.Now().After(joinBy)) {
			ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
			err := n.dht.Bootstrap(ctx, seeds)
			if err == nil {
				err = n.dht.Publish(ctx)
			}
			cancel()
			if err == nil {
				n.cfg.Logger.Info("joined the DHT", "seeds", len(seeds), "table", n.dht.Stats().TableSize)
				n.republishWhileGrowing()
				return
			}
			n.cfg.Logger.Debug("DHT join failed", "err", err, "retry_in", backoff)
		}
		wait := backoff
		if !n.NAT().Checked && time.Now().Before(joinBy) {
			wait = 100 * time.Millisecond
		} else {
			backoff = min(2*backoff, 15*time.Second)
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// natWaitForJoin bounds how long the DHT join waits for configure_nat.
const natWaitForJoin = 3 * time.Second

// republishWhileGrowing stores our record again whenever the routing table
// has grown by a quarter since the last publish (checked every 5 s): a node
// that joined early stored its record only at the few nodes it knew, which
// may not stay. The DHT's own periodic republish takes over when the table
// stops growing.
func (n *Node) republishWhileGrowing() {
	last := n.dht.Stats().TableSize
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		size := n.dht.Stats().TableSize
		if size*4 < last*5 {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
		if err := n.dht.Publish(ctx); err == nil {
			last = size
		}
		cancel()
	}
}

// resolveViaDHT is the default Resolver. A lookup made before the node has
// joined (the routing table is still empty, a bootstrap peer is being
// dialed) waits for the join instead of failing: the first packet a program
// sends right after New must not be answered with Destination Unreachable.
func (n *Node) resolveViaDHT(ctx context.Context, addr netip.Addr) ([]Contact, error) {
	rec, err := n.dht.ResolveAddr(ctx, addr)
	if errors.Is(err, dht.ErrNoPeers) && n.awaitJoin(ctx) {
		rec, err = n.dht.ResolveAddr(ctx, addr)
	}
	if err != nil {
		return nil, err
	}
	return n.recordContacts(rec), nil
}

// joinPoll is how often awaitJoin looks at the routing table.
const joinPoll = 20 * time.Millisecond

// awaitJoin waits until the DHT's routing table has a contact, or ctx ends.
// It does not wait for dhtJoin (which first waits for configure_nat): once
// a peer is connected it pings it, and the answer puts it in the table
// (our ping says we are a client, so it does not put us in its table). A
// node without bootstrap peers (a seed) has nobody to wait for: it returns
// false at once.
func (n *Node) awaitJoin(ctx context.Context) bool {
	if len(n.cfg.Bootstrap) == 0 {
		return false
	}
	t := time.NewTicker(joinPoll)
	defer t.Stop()
	pinged := false
	for n.dht.Stats().TableSize == 0 {
		if seeds := n.dhtSeeds(); len(seeds) > 0 && !pinged {
			pinged = true
			for _, s := range seeds {
				n.dht.Ping(ctx, s)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// recordContacts turns a record into contacts to dial: one per address
// addrpolicy allows (the DHT already refused records with others), or one
// with only the relays when none is left.
func (n *Node) recordContacts(rec *dht.Record) []Contact {
	addrs := n.dialable(rec.Addrs)
	out := make([]Contact, 0, len(addrs)+1)
	if len(addrs) == 0 && len(rec.Relays) > 0 {
		out = append(out, Contact{Identity: rec.Identity, Relays: rec.Relays})
	}
	for _, a := range addrs {
		out = append(out, Contact{Identity: rec.Identity, Addr: a, Relays: rec.Relays})
	}
	return out
}

// Resolve looks up a peer's signed contact record by identity.
func (n *Node) Resolve(ctx context.Context, id pki.Identity) (*dht.Record, error) {
	if n.dht == nil {
		return nil, errors.New("overlay: the DHT is disabled")
	}
	return n.dht.Resolve(ctx, id)
}

// ResolveAddr looks up the record of the node that owns an overlay address.
func (n *Node) ResolveAddr(ctx context.Context, addr netip.Addr) (*dht.Record, error) {
	if n.dht == nil {
		return nil, errors.New("overlay: the DHT is disabled")
	}
	if !smartaddr.IsOverlay(addr) {
		return nil, fmt.Errorf("overlay: %s is not an overlay address", addr)
	}
	return n.dht.ResolveAddr(ctx, addr)
}

// FindPeers returns the contacts closest to target's node ID.
func (n *Node) FindPeers(ctx context.Context, target pki.Identity) ([]dht.Contact, error) {
	if n.dht == nil {
		return nil, errors.New("overlay: the DHT is disabled")
	}
	return n.dht.FindPeers(ctx, dht.IDOf(target))
}

// DHTSnapshot returns the routing table (buckets, tiers, contacts).
func (n *Node) DHTSnapshot() (dht.Snapshot, bool) {
	if n.dht == nil {
		return dht.Snapshot{}, false
	}
	return n.dht.Snapshot(), true
}
