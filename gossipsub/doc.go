// Package gossipsub owns topic-based publish/subscribe for the overlay:
// GossipSub v1.1 (mesh, gossip, fanout, prune backoff, flood publishing,
// opportunistic grafting, peer scoring P1-P7) with the v1.2 IDONTWANT
// extension, Ed25519-signed messages with a bounded replay cache, and relay
// signaling (opaque signed payloads carried to a target identity through
// mesh peers, used by SmartSock to coordinate hole punching).
//
// The router talks to peers only through the Sender interface it is given
// and the HandleRPC / AddPeer / RemovePeer calls the host makes, so the same
// code runs over QUIC in the node and over an in-memory network in the
// simulations of this package. One goroutine owns all router state; API
// calls and incoming RPCs are posted to it.
//
// It imports pki, lukechampine.com/blake3 and the standard library only:
// never quic-go, smartsock or overlay.
package gossipsub
