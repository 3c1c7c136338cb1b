// Package dht is korium-tun's Kademlia DHT: the routing table (256 k-buckets
// keyed by node ID = blake3(identity)), iterative lookups (FIND_NODE,
// FIND_VALUE, STORE, PING), signed contact records with a quota-bounded store,
// Coral-style latency tiers and adaptive k and alpha.
//
// It never touches the network itself. Outbound requests go through the
// Transport interface it defines; inbound requests arrive as bytes through
// DHT.HandleRequest. The package owns the wire encoding of both, so the RPC
// layer underneath only moves opaque byte slices (each at most
// MaxMessageSize) over an authenticated channel whose peer identity it has
// verified. The same code runs over QUIC in the node and over the in-memory
// network of dht/simnet in simulations.
//
// Imports: pki, smartaddr, blake3 and the standard library only. It must not
// import quic-go, smartsock, rpc or overlay (dep_test.go enforces this).
package dht
