// Package gossipsub owns topic-based publish/subscribe for the overlay:
// GossipSub v1.1 (mesh, gossip, fanout, prune backoff, flood publishing,
// opportunistic grafting, peer scoring P1-P7) with the v1.2 IDONTWANT
// extension, Ed25519-signed messages with a bounded replay cache, and relay
// signaling (opaque signed payloads carried to a target identity through
// mesh peers). Nothing uses the signals yet: hole punching is coordinated
// over the peers' own connections (nat/); they are meant for relaying
// through the mesh to a peer we have no connection to.
//
// Every message and relay signal carries its signed publish time. A message
// older than Config.MaxMessageAge (2 minutes) or a signal older than
// Config.RelayMaxAge (30 s), or either more than Config.MaxClockSkew (5 s)
// ahead, is refused. Inside that window the replay filters are bounded
// (10,000 publishers, 10,000 signals) and never re-admit what they evicted:
// see seenCache.
//
// The router talks to peers only through the Sender interface it is given
// and the HandleRPC / AddPeer / RemovePeer calls the host makes, so the same
// code runs over QUIC in the node and over an in-memory network in the
// simulations of this package. One goroutine owns all router state; API
// calls and incoming RPCs are posted to it.
//
// # What the host (the node) does
//
//   - New(cfg, keypair, sender, logger) with a Sender whose Send writes one
//     RPC to the peer (for instance on a QUIC stream of the "gossipsub"
//     protocol). Send may block; each peer has its own writer goroutine.
//   - AddPeer(id, ip, outbound) when an authenticated connection to a peer
//     comes up (peers the DHT knows), RemovePeer(id) when it goes down.
//   - HandleRPC(id, bytes) for every RPC read from that peer. The identity
//     must be the one the connection authenticated.
//   - Subscribe / Unsubscribe / Publish / TopicPeers for the application,
//     Signals and SendSignal for mesh-mediated relaying (not used yet),
//     Stats for metrics, Close at the end.
//
// # Deviations from go-libp2p-pubsub
//
// Message IDs are the publisher's identity and its seqno (40 bytes). P6
// groups public addresses by /16 and /32 (the reference), does not count
// loopback, counts private and link-local addresses per host, and is
// capped above the graylist (ScoreParams).
// Own messages are not delivered to own subscriptions. Peer exchange on
// PRUNE and direct peers are not implemented: the DHT supplies peers. P3/P3b
// (mesh delivery rate and failures) are computed but weigh zero by default,
// as they punish honest peers in quiet topics. Beyond the spec, IHAVE above
// MaxIHaveMessages per heartbeat, IWANT for messages we never had or asked
// for too often, malformed RPCs and forged relay signals each add a
// behaviour penalty (P7), and IDONTWANT is also sent, not just honoured.
//
// It imports pki, lukechampine.com/blake3 and the standard library only:
// never quic-go, smartsock or overlay.
package gossipsub
