package peers

import (
	"bytes"
	"time"

	"github.com/korium/korium-tun/pki"
)

// The set's decisions, as pure functions of what they look at.

// connInfo is what the duplicate rule looks at.
type connInfo struct {
	outbound    bool   // we dialed it
	incarnation string // the peer's certificate serial
}

// preferNew decides, identically on both ends, which of two connections
// between self and peer survives:
//   - a connection from a new incarnation of the peer (it restarted) wins;
//   - of two dialed by the same side, the newer wins (a redial);
//   - of two dialed by opposite sides at once, the one dialed by the smaller
//     identity wins, which both ends compute the same way.
func preferNew(self, peer pki.Identity, old, new connInfo) bool {
	if old.incarnation != new.incarnation {
		return true
	}
	if old.outbound == new.outbound {
		return true
	}
	dialer := func(c connInfo) pki.Identity {
		if c.outbound {
			return self
		}
		return peer
	}
	nd, od := dialer(new), dialer(old)
	return bytes.Compare(nd[:], od[:]) < 0
}

// leastRecentlyUsed returns the least recently used peer that is not a
// kept contact, or nil: the reference's connection cache evicts it to make
// room.
func leastRecentlyUsed(peers map[pki.Identity]*Peer, kept func(pki.Identity) bool) *Peer {
	var lru *Peer
	for id, p := range peers {
		if kept(id) {
			continue
		}
		if lru == nil || p.lastUsed.Load() < lru.lastUsed.Load() {
			lru = p
		}
	}
	return lru
}

// idlePeers returns the peers unused since cutoff (unix ns) that are
// neither kept contacts nor spared by the host.
func idlePeers(s *Snapshot, cutoff int64, spare map[pki.Identity]bool) []*Peer {
	var out []*Peer
	for id, p := range s.byID {
		if !s.desired[id] && !spare[id] && p.lastUsed.Load() < cutoff {
			out = append(out, p)
		}
	}
	return out
}

// Redial backoff of a kept contact: doubling from minBackoff to maxBackoff
// after each failed dial, reset by a connection.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 15 * time.Second
)

func nextBackoff(b time.Duration) time.Duration { return min(max(2*b, minBackoff), maxBackoff) }
