// Package nodesim simulates whole korium-tun nodes at scale: every node runs
// the real dht.DHT and the real gossipsub.Router over one in-memory network
// (dht/simnet's model: regions, /16 prefixes, jitter, loss), with a model of
// the node's peer table between them and the network, inside a
// testing/synctest bubble so that latencies cost virtual time. It measures
// what SCALE.md publishes: heap per node and its breakdown by component,
// lookup success, hops and latency, pubsub delivery under churn, and the
// messages a node sends per second at idle.
//
// The peer table is the one overlay.Node keeps (its connection cache):
//
//   - a DHT request to a node we have no connection to first dials it (one
//     round trip of handshake), and the connection then exists at both ends;
//   - every connected peer is a gossip peer at both ends (AddPeer, outbound
//     on the side that dialed), as in the overlay;
//   - at most MaxPeers (1,000) connections per node; a new one evicts the
//     least recently used (closing it at both ends);
//   - a connection that carried nothing for IdleEvict (10 minutes) is
//     closed, unless the peer shares a pubsub topic with us (overlay's
//     evictIdle keeps those, since their mesh may be quiet);
//   - gossip RPCs are requests on the connection (rpc.ProtoGossip): the
//     sender waits for the empty answer, so one peer gets one RPC per round
//     trip, and a lost packet costs a retransmission (QUIC), not the RPC;
//   - a node that leaves does so at once; its peers notice when the QUIC
//     idle timeout (15 s) expires, and until then what they send it is lost.
//
// Differences from the node, all on the side of fewer costs: bootstrap
// contacts are not pinned against eviction, every node shares one
// dht.IdentityCache (simnet's choice; SCALE.md bounds a node's own one),
// QUIC keep-alives are not simulated (SCALE.md derives them from the
// connection count), and the QUIC connections themselves (their buffers and
// crypto state) are not modelled: that is the per-connection section of
// SCALE.md.
//
// Nothing in the node imports this package; it imports dht, dht/simnet,
// gossipsub and pki only (dep_test.go).
package nodesim
