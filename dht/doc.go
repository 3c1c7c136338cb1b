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
// verified, and reports the underlay address that channel runs over. The same code runs over QUIC in the node and over the in-memory
// network of dht/simnet in simulations.
//
// # Wiring it into the node
//
//	d, err := dht.New(keypair, transport, ourAddrs, dht.Config{Logger: log, AllowLoopback: onLoopback})
//	rpc.Handle(protoDHT, func(peer pki.Identity, req []byte) ([]byte, error) {
//		return d.HandleRequest(peer, pathOf(peer), req) // where its packets come from
//	})
//	d.Bootstrap(ctx, seedContacts) // ping seeds, self-lookup, fill buckets
//	d.Publish(ctx)                 // our record at the k nodes nearest us; republished automatically
//	rec, err := d.ResolveAddr(ctx, smartAddr) // or d.Resolve(ctx, identity)
//	...
//	d.SetAddrs(newAddrs) // republishes with a higher sequence number
//	d.Close()
//
// transport.Call(ctx, contact, req) must dial contact.Identity (mutual TLS,
// identity pinned) using contact.Addrs as hints, send req on a stream of the
// DHT protocol, and return the response, refusing more than MaxMessageSize
// bytes, with the address the peer answered from; see Transport. A seed given only as an address needs its identity
// and proof-of-work nonce too (a Contact), because the DHT only talks to
// authenticated identities.
//
// Stats and Snapshot give the figures for `korium-tun status` and the
// routing table (buckets, tiers, contacts) for `korium-tun peers`.
//
// # Defences
//
// Contacts enter the routing table only with enough proof of work and after
// they answered one of our requests, at the address they answered from
// (never one they declare); insertions are rate-limited per IPv4 /24 or
// IPv6 /48 of that address, each bucket holds at most MaxPerPrefixPerBucket
// contacts of one such prefix, and a full bucket pings its oldest entry
// before replacing it. Every identity read off the wire must be a valid
// Ed25519 point. No address a peer names (hint, contact, record) reaches
// the transport unless internal/addrpolicy allows it (loopback only with
// Config.AllowLoopback). Records are verified (signature, proof of work,
// expiry not past and not too far ahead, signed at most MaxClockSkew in the
// future, at least one address) on STORE and on every lookup answer; the
// store enforces the reference's quotas. Every drop is counted by reason in
// Stats.
//
// Imports: pki, smartaddr, internal/addrpolicy, blake3 and the standard
// library only. It must not
// import quic-go, smartsock, rpc or overlay (dep_test.go enforces this).
package dht
