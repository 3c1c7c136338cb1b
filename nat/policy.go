package nat

import (
	"net/netip"
	"slices"

	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
	"github.com/korium/korium-tun/smartsock"
)

// The decisions of NAT traversal, as pure functions of what they look at;
// the Traversal's loop and handlers act on them.

// Limits of NAT traversal.
const (
	// MaxDialAddrs bounds how many of a contact's addresses one dial races.
	MaxDialAddrs = 4
	// maxRelaysChosen bounds the relays we publish and the sessions one
	// dial sets up.
	maxRelaysChosen = 2
	// maxHelpers bounds the helpers configure_nat asks at once.
	maxHelpers = 3
)

// answer is one helper's reply to configure_nat's question.
type answer struct {
	id       pki.Identity
	observed netip.AddrPort // where it sees us (invalid: no answer)
	relays   bool           // it relays for others
	dialBack bool           // its packet from a socket we never sent to reached us
	busy     bool           // it sent no dial-back (relay.FlagNoDialBack)
}

// verdict is what configure_nat concludes.
type verdict struct {
	public   bool
	observed []netip.AddrPort
	relays   []pki.Identity // empty when public
}

// decide turns the helpers' answers into a verdict; ok is false when no
// helper answered, or every one that did sent no dial-back (nothing is
// learned of our reachability: a busy helper must not make a public node
// think itself NATed). One dial-back that arrived makes us public;
// otherwise the helpers that relay become our relays.
func decide(answers []answer) (v verdict, ok bool) {
	for _, a := range answers {
		if !a.observed.IsValid() {
			continue
		}
		ok = ok || !a.busy
		v.public = v.public || a.dialBack
		if !slices.Contains(v.observed, a.observed) {
			v.observed = append(v.observed, a.observed)
		}
		if a.relays && len(v.relays) < maxRelaysChosen {
			v.relays = append(v.relays, a.id)
		}
	}
	if v.public {
		v.relays = nil
	}
	return v, ok
}

// punchable keeps the candidates a peer sent that we may probe: only
// addresses addrpolicy allows (a peer must not make us send packets to
// services on our own host or link, or to broadcast and multicast groups),
// loopback only when we ourselves listen on loopback, as tests on one host
// do. It filters in place and returns how many it refused.
func punchable(addrs []netip.AddrPort, loopback bool) ([]netip.AddrPort, int) {
	out := addrs[:0]
	refused := 0
	for _, a := range addrs {
		if !addrpolicy.Dialable(a, loopback) {
			refused++
			continue
		}
		out = append(out, a)
	}
	return out, refused
}

// candidates are the addresses a peer may punch toward: what helpers
// observed (our NAT's mapping), then our own advertised addresses, without
// repeats, at most relay.MaxCandidates.
func candidates(observed, advertised []netip.AddrPort) []netip.AddrPort {
	out := slices.Clone(observed)
	for _, a := range advertised {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out[:min(len(out), relay.MaxCandidates)]
}

// dialAddrs keeps the first MaxDialAddrs of addrs and of those the ones
// addrpolicy allows (loopback: the user chose them, or we listen on
// loopback ourselves); it returns how many it refused and why the last one
// was refused.
func dialAddrs(addrs []netip.AddrPort, loopback bool) (ok []netip.AddrPort, refused int, why error) {
	for _, a := range addrs[:min(len(addrs), MaxDialAddrs)] {
		if err := addrpolicy.Check(a, loopback); err != nil {
			refused++
			why = err
			continue
		}
		ok = append(ok, a)
	}
	return ok, refused, why
}

// relaysToAsk is which of target's published relays a dial asks for
// sessions: neither us nor the target itself, at most maxRelaysChosen.
func relaysToAsk(relays []pki.Identity, self, target pki.Identity) []pki.Identity {
	var out []pki.Identity
	for _, r := range relays[:min(len(relays), maxRelaysChosen)] {
		if r != self && r != target {
			out = append(out, r)
		}
	}
	return out
}

// observeFlags is what we tell a helper's question about ourselves: we
// relay for others only when we have a relay server and found ourselves
// public.
func observeFlags(relaying, public bool) byte {
	if relaying && public {
		return relay.FlagRelays
	}
	return 0
}

// observeRelays reads observeFlags' answer: the helper relays for others.
func observeRelays(flags byte) bool { return flags&relay.FlagRelays != 0 }

// relayersOf are the helpers that answered and said they relay.
func relayersOf(answers []answer) []pki.Identity {
	var out []pki.Identity
	for _, a := range answers {
		if a.observed.IsValid() && a.relays {
			out = append(out, a.id)
		}
	}
	return out
}

// deadRelays looks at a relayed peer's paths: dead are the relays of relay
// paths whose relay is gone (connected reports false) or that missed
// probes after they had been proven; alive is whether another path may
// still carry the traffic (a proven path that answers probes, or a relay
// path still on probation).
func deadRelays(paths []smartsock.PathStatus, connected func(pki.Identity) bool) (dead []pki.Identity, alive bool) {
	for _, p := range paths {
		if p.Kind != "relay" {
			alive = alive || p.Alive
			continue
		}
		id, err := pki.ParseIdentity(p.Relay)
		if err != nil {
			continue
		}
		switch {
		case !connected(id) || (p.Validated && p.Missed >= deadAfterMissed):
			dead = append(dead, id)
		case p.Alive || !p.Validated:
			alive = true
		}
	}
	return dead, alive
}

// deadAfterMissed: a proven relay path that missed this many probes in a
// row is dead for repairing (smartsock gives up on it at MaxMissed).
const deadAfterMissed = 2

// mergeRelays keeps the relays still connected (keep, in order) and adds
// the new ones that relay, up to maxRelaysChosen.
func mergeRelays(keep, found []pki.Identity) []pki.Identity {
	out := slices.Clone(keep[:min(len(keep), maxRelaysChosen)])
	for _, id := range found {
		if len(out) == maxRelaysChosen {
			break
		}
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}
