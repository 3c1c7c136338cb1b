package nat

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay/client"
	"github.com/korium/korium-tun/rpc"
)

// ErrUnreachable is wrapped by every Connect error (it is rpc's, as the
// node's Send and Call report it).
var ErrUnreachable = rpc.ErrUnreachable

// Connect connects to id: its direct addresses and, if it publishes
// relays, sessions through them, raced in one handshake (peers.Set.Dial
// runs it once however many callers want id). Once connected over a relay
// the loop punches a direct path. chosen says whether addrs come from our
// user (bootstrap contacts, the Go API) rather than from the network
// (records, DHT contacts): the network's word never makes us send to
// loopback unless we listen there ourselves (addrpolicy); nothing makes
// us send to addresses nobody can be reached at.
func (t *Traversal) Connect(ctx context.Context, id pki.Identity, addrs []netip.AddrPort, relays []pki.Identity, chosen bool) error {
	if id == t.cfg.Self {
		return fmt.Errorf("%w: that is us", ErrUnreachable)
	}
	if t.cfg.Peers.Peer(id) != nil {
		return nil
	}
	if len(addrs) == 0 && len(relays) == 0 {
		return fmt.Errorf("%w: %s: no address", ErrUnreachable, id.Short())
	}
	ok, refused, addErr := dialAddrs(addrs, chosen || t.cfg.Loopback)
	t.Counters.DialAddrRefused.Add(uint64(refused))
	var first netip.AddrPort
	usable := 0
	for _, a := range ok {
		if _, err := t.cfg.Sock.AddPeer(id, a); err != nil {
			addErr = err
			continue
		}
		if usable == 0 {
			first = a
		}
		usable++
	}
	if usable == 0 && len(relays) == 0 {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, id.Short(), addErr)
	}
	if len(relays) > 0 {
		// Before joining a dial that may be in flight: its handshake
		// retransmissions go over every path, relays included. Relays
		// that do not answer quickly are not waited for: mesh relays
		// are asked instead (mesh.go).
		rctx, cancel := context.WithTimeout(ctx, relaySetupTime)
		done := make(chan int, 1)
		go func() { done <- t.SetupRelays(rctx, id, relays) }() // bounded by rctx
		select {
		case got := <-done:
			if got == 0 && t.cfg.Peers.Peer(id) == nil {
				t.MeshConnect(ctx, id, relays)
			}
		case <-time.After(meshHeadStart):
			// The published relays are slow (one may be gone, and a
			// dial to it times out): ask mesh relays meanwhile.
			t.MeshConnect(ctx, id, relays)
			<-done
		}
		cancel()
	}
	if err := t.cfg.Peers.Dial(ctx, id, first, usable+len(relays)); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, id.Short(), err)
	}
	return nil
}

// SetupRelays asks id's relays for sessions to it and adds them as paths
// in the socket. It returns how many sessions were set up.
func (t *Traversal) SetupRelays(ctx context.Context, id pki.Identity, relays []pki.Identity) int {
	ok := 0
	for _, r := range relaysToAsk(relays, t.cfg.Self, id) {
		if t.cfg.Peers.Peer(r) == nil {
			// Connect to the relay directly (relays are public).
			if t.cfg.Reach == nil || t.cfg.Reach(ctx, r) != nil || t.cfg.Peers.Peer(r) == nil {
				continue
			}
		}
		raddr, direct := t.directAddr(r)
		if !direct {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, relayCallTime)
		sid, err := client.Connect(cctx, caller{t}, r, id)
		cancel()
		if err != nil {
			t.cfg.Logger.Debug("relay refused", "relay", r.Short(), "peer", id.Short(), "err", err)
			continue
		}
		t.cfg.Sock.AddRelayPath(id, r, raddr, sid)
		ok++
	}
	return ok
}

// punchRelayed punches the relayed peers we dialed right after they
// connect, and again every punchRetry while they stay relayed. Run by the
// loop, which owns lastPunch.
func (t *Traversal) punchRelayed(now time.Time) {
	snap := t.cfg.Peers.Snapshot()
	for p := range t.lastPunch {
		if snap.Peer(p.ID) != p {
			delete(t.lastPunch, p)
		}
	}
	for _, id := range t.cfg.Sock.RelayedPeers() {
		p := snap.Peer(id)
		if p == nil || !p.Outbound || now.Sub(t.lastPunch[p]) < punchRetry {
			continue
		}
		t.lastPunch[p] = now
		t.goRun(func() { t.punch(p) })
	}
}

// punch swaps candidate addresses with a relayed peer and probes them.
func (t *Traversal) punch(p *peers.Peer) {
	ctx, cancel := context.WithTimeout(t.ctx, relayCallTime)
	defer cancel()
	theirs, err := client.Punch(ctx, caller{t}, p.ID, t.candidateAddrs())
	if err != nil {
		t.cfg.Logger.Debug("punch refused", "peer", p.ID.Short(), "err", err)
		return
	}
	t.Counters.Punches.Add(1)
	t.cfg.Sock.Punch(p.ID, t.Punchable(theirs))
}
