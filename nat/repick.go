package nat

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay/client"
)

// When a relay we publish leaves (its connection closed), a node behind
// NAT would be cut off from new peers until the next configure_nat round
// (natRecheck). Instead it picks other public peers at once: those it is
// connected to that relay, else public peers the host knows (Spares), asks
// them whether they relay, and republishes its record (OnChange).

const (
	repickEvery   = 2 * time.Second // at most one repick round this often
	repickReach   = 2 * time.Second // connecting to one spare
	maxRepickDial = 3               // spares dialed in one round
)

// relayLost reports whether we are behind NAT and a relay we publish is no
// longer connected (or we publish none).
func (t *Traversal) relayLost() bool {
	st := t.status.Load()
	if !st.Checked || st.Public || t.cfg.Seed {
		return false
	}
	if len(st.Relays) == 0 {
		return true
	}
	for _, r := range st.Relays {
		if t.cfg.Peers.Peer(r) == nil {
			return true
		}
	}
	return false
}

// repick is one round of choosing relays again; it reports to the loop
// like configureNAT.
func (t *Traversal) repick() {
	old := t.status.Load()
	v := *old
	var keep, lost []pki.Identity
	for _, r := range old.Relays {
		if t.cfg.Peers.Peer(r) != nil {
			keep = append(keep, r)
		} else {
			lost = append(lost, r)
		}
	}
	found := t.findRelays(t.ctx, old.Relays)
	v.Relays = mergeRelays(keep, found)
	if !slices.Equal(v.Relays, old.Relays) {
		t.Mesh.Repicks.Add(1)
		v.Relayers = mergeRelaysAll(v.Relays, old.Relayers)
		t.cfg.Logger.Info("relay left: chose again", "lost", len(lost), "relays", len(v.Relays))
		t.cfg.OnChange(v)
	}
	select {
	case t.checked <- v:
	case <-t.ctx.Done():
	}
}

// mergeRelaysAll is a ∪ b, a first.
func mergeRelaysAll(a, b []pki.Identity) []pki.Identity {
	out := slices.Clone(a)
	for _, id := range b {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// findRelays asks public peers (connected ones first, then spares it
// connects to) whether they relay, and returns those that do, at most
// maxRelaysChosen. skip are relays it must not pick.
func (t *Traversal) findRelays(ctx context.Context, skip []pki.Identity) []pki.Identity {
	var cands []pki.Identity
	seen := map[pki.Identity]bool{t.cfg.Self: true}
	for _, id := range skip {
		seen[id] = true
	}
	consider := func(id pki.Identity) {
		if !seen[id] && len(cands) < maxHelpers {
			seen[id] = true
			cands = append(cands, id)
		}
	}
	var spares []peers.Contact
	if t.cfg.Spares != nil {
		spares = t.cfg.Spares()
	}
	for _, id := range t.relayers() {
		if _, ok := t.directAddr(id); ok {
			consider(id)
		}
	}
	for _, c := range spares {
		if _, ok := t.directAddr(c.Identity); ok {
			consider(c.Identity)
		}
	}
	for _, c := range spares {
		if len(cands) >= maxHelpers || len(cands) >= maxRepickDial {
			break
		}
		if seen[c.Identity] || t.cfg.Peers.Peer(c.Identity) != nil {
			continue
		}
		var addrs []netip.AddrPort
		if c.Addr.IsValid() {
			addrs = append(addrs, c.Addr)
		}
		cctx, cancel := context.WithTimeout(ctx, repickReach)
		err := t.Connect(cctx, c.Identity, addrs, nil, false)
		cancel()
		if err == nil {
			consider(c.Identity)
		}
	}
	ok := make([]bool, len(cands))
	var wg sync.WaitGroup
	for i, id := range cands {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var nb [8]byte
			rand.Read(nb[:])
			cctx, cancel := context.WithTimeout(ctx, relayCallTime)
			defer cancel()
			// No dial-back is waited for: we know we are behind NAT.
			or, err := client.Observe(cctx, caller{t}, id, binary.BigEndian.Uint64(nb[:]))
			ok[i] = err == nil && observeRelays(or.Flags)
		}()
	}
	wg.Wait()
	var out []pki.Identity
	for i, id := range cands {
		if ok[i] && len(out) < maxRelaysChosen {
			out = append(out, id)
		}
	}
	return out
}
