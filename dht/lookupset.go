package dht

import (
	"iter"
	"slices"

	"github.com/korium/korium-tun/pki"
)

// lookupSet is the state of one iterative lookup as pure data (cf.
// go-libp2p-kad-dht's qpeerset): every peer heard of, ordered by distance to
// the target, with what we know about it. The lookup driver is the only user;
// it does the I/O and feeds results back.

type peerState uint8

const (
	psHeard       peerState = iota // learned, not yet asked
	psWaiting                      // request in flight
	psQueried                      // answered
	psUnreachable                  // failed or answered garbage
)

type lookupPeer struct {
	c     Contact
	id    NodeID
	state peerState
	hops  int // 1 for contacts from our own table
	tier  int
	cpl   int // common prefix length with the target
}

type lookupSet struct {
	target NodeID
	peers  []*lookupPeer // nearest first
	index  map[pki.Identity]*lookupPeer
	// tiering: pick faster tiers among candidates at most slack bits of
	// common prefix behind the best candidate.
	tiering bool
	slack   int
}

func newLookupSet(target NodeID, tiering bool, slack int) *lookupSet {
	return &lookupSet{target: target, index: make(map[pki.Identity]*lookupPeer), tiering: tiering, slack: slack}
}

func (s *lookupSet) has(id pki.Identity) bool {
	_, ok := s.index[id]
	return ok
}

// add inserts a peer if new; it returns false for duplicates.
func (s *lookupSet) add(c Contact, id NodeID, hops, tier int) bool {
	if _, ok := s.index[c.Identity]; ok {
		return false
	}
	p := &lookupPeer{c: c, id: id, hops: hops, tier: tier, cpl: CommonPrefixLen(id, s.target)}
	i, _ := slices.BinarySearchFunc(s.peers, p, func(a, b *lookupPeer) int {
		return CompareDistance(s.target, a.id, b.id)
	})
	s.peers = slices.Insert(s.peers, i, p)
	s.index[c.Identity] = p
	return true
}

// window yields the k nearest peers that are not unreachable, nearest
// first, without building a slice (next and done run once per reply).
func (s *lookupSet) window(k int) iter.Seq[*lookupPeer] {
	return func(yield func(*lookupPeer) bool) {
		n := 0
		for _, p := range s.peers {
			if n == k {
				return
			}
			if p.state == psUnreachable {
				continue
			}
			n++
			if !yield(p) {
				return
			}
		}
	}
}

// next picks the next peer to query among the k-nearest window, or nil.
// Without tiering it is the nearest unasked peer. With tiering, every
// unasked peer whose common prefix with the target is within slack bits of
// the best unasked one counts as equally useful, and the fastest tier wins
// among them (nearest breaks ties).
func (s *lookupSet) next(k int) *lookupPeer {
	var best *lookupPeer
	bestCPL := -1
	for p := range s.window(k) {
		if p.state == psHeard && p.cpl > bestCPL {
			bestCPL = p.cpl
			if best == nil {
				best = p
			}
		}
	}
	if best == nil || !s.tiering {
		return best
	}
	for p := range s.window(k) {
		if p.state != psHeard || p.cpl < bestCPL-s.slack {
			continue
		}
		if p.tier < best.tier {
			best = p
		}
	}
	return best
}

// done reports whether every peer of the k-nearest window has answered.
func (s *lookupSet) done(k int) bool {
	for p := range s.window(k) {
		if p.state != psQueried {
			return false
		}
	}
	return true
}

// closest returns up to k nearest peers that answered.
func (s *lookupSet) closest(k int) []*lookupPeer {
	var out []*lookupPeer
	for _, p := range s.peers {
		if p.state == psQueried {
			out = append(out, p)
			if len(out) == k {
				break
			}
		}
	}
	return out
}
