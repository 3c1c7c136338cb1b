package nat

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
	"github.com/korium/korium-tun/relay/client"
)

// configureNAT is one round of the reference's configure_nat: ask helpers
// (our bootstrap peers) where they see us and whether they can reach us
// unsolicited; if not, choose relays among them. It reports to the loop;
// a changed verdict reaches the host (OnChange) first.
func (t *Traversal) configureNAT() {
	v, ok := t.check(t.ctx)
	if ok {
		v.Checked = true
		if old := t.status.Load(); !sameVerdict(old, &v) {
			t.cfg.Logger.Info("NAT checked", "public", v.Public, "observed", v.Observed, "relays", len(v.Relays))
			t.cfg.OnChange(v)
		}
	}
	select {
	case t.checked <- v:
	case <-t.ctx.Done():
	}
}

// check asks up to maxHelpers connected bootstrap peers at once.
func (t *Traversal) check(ctx context.Context) (Status, bool) {
	snap := t.cfg.Peers.Snapshot()
	var helpers []answer
	for p := range snap.All() {
		if snap.Kept(p.ID) && len(helpers) < maxHelpers {
			helpers = append(helpers, answer{id: p.ID})
		}
	}
	if len(helpers) == 0 {
		return Status{}, false
	}
	var wg sync.WaitGroup
	for i := range helpers {
		wg.Add(1)
		go func() { defer wg.Done(); t.ask(ctx, &helpers[i]) }()
	}
	wg.Wait()
	v, ok := decide(helpers)
	return Status{Public: v.public, Observed: v.observed, Relays: v.relays, Relayers: relayersOf(helpers)}, ok
}

// ask puts configure_nat's question to one helper and waits (bounded) for
// its dial-back.
func (t *Traversal) ask(ctx context.Context, a *answer) {
	var nb [8]byte
	rand.Read(nb[:])
	nonce := binary.BigEndian.Uint64(nb[:])
	ch, err := t.cfg.Sock.ExpectDialBack(nonce)
	if err != nil {
		return
	}
	defer t.cfg.Sock.CancelDialBack(nonce)
	cctx, cancel := context.WithTimeout(ctx, relayCallTime)
	defer cancel()
	or, err := client.Observe(cctx, caller{t}, a.id, nonce)
	if err != nil {
		return
	}
	a.observed, a.relays = or.Addr, observeRelays(or.Flags)
	if a.busy = or.Flags&relay.FlagNoDialBack != 0; a.busy {
		return // no dial-back is coming
	}
	select {
	case <-ch:
		a.dialBack = !t.cfg.IgnoreDialBacks
	case <-time.After(dialBackWait):
	case <-ctx.Done():
	}
}

// caller sends relay requests on the node's connections (client.Caller).
type caller struct{ t *Traversal }

func (c caller) CallRelay(ctx context.Context, to pki.Identity, req []byte) ([]byte, error) {
	return c.t.cfg.Call(ctx, to, req)
}
