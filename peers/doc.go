// Package peers is the node's connection manager: the set of mutually
// authenticated QUIC connections to other nodes, one per peer.
//
// It accepts connections on the node's listener and dials them (one dial
// per peer at a time: concurrent dials to one peer wait for the first),
// checks each one (the certificate's key owns the address quic-go saw, the
// peer speaks QUIC datagrams, the host admits it), keeps exactly one
// connection per peer pair by a rule both ends compute alike (preferNew),
// bounds the set (the least recently used peer that is not a bootstrap
// contact makes room; idle connections are closed), and redials the
// bootstrap contacts it is asked to keep, with backoff.
//
// One goroutine, the set's loop, owns the peer table, the kept contacts
// and the dials in flight; every change is a function posted to it. After
// each change the loop publishes an immutable Snapshot (peers by identity
// and by overlay address) through an atomic pointer, so the packet path
// and every reader look peers up without a lock. A Peer's own fields are
// immutable once published, except its atomic counters.
//
// The host learns of peers through Config's hooks, which run outside the
// loop: Up once a peer is installed (before its connection is watched),
// Down once its connection ended, Evicted when the peer limit pushed it
// out, Replaced when a live connection was replaced from another address,
// Refused for every connection refused here. Keep names the peers that
// idle eviction must leave alone (the host's pubsub meshes and relays).
//
// Goroutines, all stopped by Close, which waits for them: the loop, the
// accept loop and one handshake check per accepted connection, one watcher
// per installed peer (it reports the end of the connection), the redials
// of kept contacts, and idle sweeps.
//
// peers imports pki, smartaddr and quic-go: never the datapath, nat,
// the DHT, gossipsub or the overlay.
//
// The signed-record cache of peers reached (peercache) is to be wired in
// here by a later change: Up is where a reached peer's record is stored,
// and the kept contacts are where cached records would be redialed from.
package peers
