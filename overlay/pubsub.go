package overlay

import (
	"context"
	"errors"
	"net/netip"

	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/rpc"
)

// The node's GossipSub router sends its RPCs over rpc.ProtoGossip on the
// peer connections, and every connected peer is a gossip peer (the DHT
// keeps the node connected to its neighbourhood).

// ErrNoPubSub is returned by the pubsub API when Config.DisablePubSub is set.
var ErrNoPubSub = errors.New("overlay: pubsub is disabled")

type gossipSender struct{ n *Node }

// Send implements gossipsub.Sender. When both sides dial at once, one of
// the two connections is closed as a duplicate, failing the calls on it;
// an RPC lost that way (a message pushed to a mesh peer, a GRAFT) is sent
// once more on the connection that replaced it. The router drops a
// duplicate message, so a copy that did arrive costs nothing.
func (s gossipSender) Send(ctx context.Context, to pki.Identity, data []byte) error {
	before := s.n.peer(to)
	_, err := s.n.callConnected(ctx, to, rpc.ProtoGossip, data)
	if err != nil && ctx.Err() == nil {
		if now := s.n.peer(to); now != nil && now != before {
			_, err = s.n.callConnected(ctx, to, rpc.ProtoGossip, data)
		}
	}
	return err
}

// handleGossip hands a peer's gossip RPC to the router (which never blocks).
func (n *Node) handleGossip(_ context.Context, from pki.Identity, req []byte) ([]byte, error) {
	n.touch(from)
	n.gossip.HandleRPC(from, req)
	return nil, nil
}

// peerIP is the IP a peer's current path uses (for GossipSub's IP
// colocation score).
func (n *Node) peerIP(id pki.Identity) netip.Addr {
	if pi, ok := n.sock.Path(id); ok {
		return pi.Direct.Addr()
	}
	return netip.Addr{}
}

// Subscribe joins topic; messages arrive on the subscription's channel with
// their publisher's verified identity.
func (n *Node) Subscribe(topic string) (*gossipsub.Subscription, error) {
	if n.gossip == nil {
		return nil, ErrNoPubSub
	}
	return n.gossip.Subscribe(topic)
}

// Unsubscribe leaves topic.
func (n *Node) Unsubscribe(topic string) error {
	if n.gossip == nil {
		return ErrNoPubSub
	}
	return n.gossip.Unsubscribe(topic)
}

// Publish signs data with the node's identity and publishes it on topic.
func (n *Node) Publish(topic string, data []byte) error {
	if n.gossip == nil {
		return ErrNoPubSub
	}
	return n.gossip.Publish(topic, data)
}

// TopicPeers lists the peers known to be subscribed to topic.
func (n *Node) TopicPeers(topic string) []gossipsub.PeerInfo {
	if n.gossip == nil {
		return nil
	}
	return n.gossip.TopicPeers(topic)
}

// SendSignal sends a signed relay signal to target through the gossip mesh
// (for hole-punch and relay coordination when there is no direct path).
func (n *Node) SendSignal(target pki.Identity, payload []byte) error {
	if n.gossip == nil {
		return ErrNoPubSub
	}
	return n.gossip.SendSignal(target, payload)
}

// Signals delivers relay signals addressed to this node, with their verified
// originator, but for the node's own mesh relay signals (nat.IsSignal),
// which NAT traversal consumes. It holds 256 (the oldest dropped) and is
// nil when pubsub is disabled.
func (n *Node) Signals() <-chan gossipsub.Signal {
	if n.gossip == nil {
		return nil
	}
	return n.appSignals
}

// PubSubStats returns the GossipSub router's counters; ok is false when
// pubsub is disabled.
func (n *Node) PubSubStats() (s gossipsub.Stats, ok bool) {
	if n.gossip == nil {
		return s, false
	}
	return n.gossip.Stats(), true
}
