package overlay

import (
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/pki"
)

// GossipStats returns the GossipSub router's counters (for metrics); false
// when Config.DisablePubSub is set.
func (n *Node) GossipStats() (gossipsub.Stats, bool) {
	if n.gossip == nil {
		return gossipsub.Stats{}, false
	}
	return n.gossip.Stats(), true
}

// ForgetPeer undoes AddPeer: id is no longer redialed when its connection
// drops, and the connection, if any, becomes subject to idle eviction like
// any other. (A config reload removes a bootstrap peer with it.)
func (n *Node) ForgetPeer(id pki.Identity) { n.peers.Forget(id) }

// KeptPeers lists the contacts AddPeer keeps connected.
func (n *Node) KeptPeers() []Contact { return n.peers.Kept() }
