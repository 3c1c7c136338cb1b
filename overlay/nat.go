package overlay

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/smartsock"
)

// NAT traversal lives in nat/ (configure_nat, SmartConnect, punching, the
// relay protocol's node side) and relay/server (the sessions we relay);
// this is the node's API over them.

// NATStatus is what configure_nat found.
type NATStatus struct {
	Public   bool     `json:"public"`
	Observed string   `json:"observed,omitempty"` // our address as a helper saw it
	Relays   []string `json:"relays"`             // relay identities we publish
	Checked  bool     `json:"checked"`
}

// NAT returns what configure_nat found.
func (n *Node) NAT() NATStatus {
	st := n.nat.Status()
	s := NATStatus{Public: st.Public, Checked: st.Checked, Relays: []string{}}
	if len(st.Observed) > 0 {
		s.Observed = st.Observed[0].String()
	}
	for _, r := range st.Relays {
		s.Relays = append(s.Relays, r.String())
	}
	return s
}

// RelayStats returns the relay server's counters (nil when relaying is off).
func (n *Node) RelayStats() *server.Stats {
	if n.relaySrv == nil {
		return nil
	}
	s := n.relaySrv.Stats()
	return &s
}

// AddPeer keeps a connection to c: it is dialed now and redialed with
// backoff whenever it drops.
func (n *Node) AddPeer(c Contact) { n.peers.Keep(c) }

// Connect dials c once and returns when the connection is up (or an
// existing one is), or the dial failed. If c names relays, sessions through
// them race the direct address (see SmartConnect).
func (n *Node) Connect(ctx context.Context, c Contact) error {
	var addrs []netip.AddrPort
	if c.Addr.IsValid() {
		addrs = append(addrs, c.Addr)
	}
	return n.SmartConnect(ctx, c.Identity, addrs, c.Relays)
}

// SmartConnect connects to id: its direct addresses and, if it publishes
// relays, relay sessions through them, raced in one handshake. Once
// connected over a relay, the two ends try to punch a direct path. The
// caller chose addrs: loopback is allowed, addresses nobody can be reached
// at (unspecified, multicast, broadcast, link-local) are skipped.
func (n *Node) SmartConnect(ctx context.Context, id pki.Identity, addrs []netip.AddrPort, relays []pki.Identity) error {
	return n.nat.Connect(ctx, id, addrs, relays, true)
}

// Ping probes id's current path and reports which path it is and its RTT.
func (n *Node) Ping(ctx context.Context, id pki.Identity) (smartsock.PingResult, error) {
	if n.peer(id) == nil {
		return smartsock.PingResult{}, errors.New("overlay: not connected to that peer")
	}
	return n.sock.Ping(ctx, id)
}

// OwnerOf returns the identity that owns an overlay address: a connected
// peer, else the DHT's answer (checked against the address).
func (n *Node) OwnerOf(ctx context.Context, addr netip.Addr) (pki.Identity, error) {
	if p := n.peers.Snapshot().ByAddr(addr); p != nil {
		return p.ID, nil
	}
	rec, err := n.ResolveAddr(ctx, addr)
	if err != nil {
		return pki.Identity{}, err
	}
	return rec.Identity, nil
}

// ConnectIdentity connects to id (SmartConnect from its contact record)
// unless a connection exists.
func (n *Node) ConnectIdentity(ctx context.Context, id pki.Identity) error {
	if n.peer(id) != nil {
		return nil
	}
	rec, err := n.Resolve(ctx, id)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, id.Short(), err)
	}
	return n.nat.Connect(ctx, id, rec.Addrs, rec.Relays, false)
}
