// Package rpc is request/response over the QUIC connections the overlay
// already holds: one bidirectional stream per request, a one-byte protocol
// ID naming the user (DHT, gossip, relay, application, threshold CA),
// length-prefixed payloads capped per protocol (Config.MaxSize, at most
// 1 MiB) and checked before anything is allocated, budgets for the request
// bytes buffered while they arrive, and deadlines on both ends so that
// neither a slow handler nor a stalled peer holds a stream forever.
//
// Wire format (all lengths are uvarints):
//
//	request:  proto(1) len payload          then the caller closes its side
//	response: status(1) len payload         payload is error text (<= 256 B) unless status is OK
//
// A server refuses an unknown protocol ID as soon as it reads the first
// byte, and a length above the protocol's cap as soon as it reads the
// prefix: it answers with a status, stops reading (STOP_SENDING) and never
// runs a handler. A request that does not arrive completely within
// Config.StreamTimeout is reset.
//
// Memory: a request's buffer is made when its first payload byte arrives
// and doubles as more arrive, each growth reserved first from the peer's
// Config.PeerBudget (4 MiB) and the node's Config.NodeBudget (32 MiB), so a
// length prefix costs nothing until the bytes behind it come. A stream
// whose growth is refused gets STOP_SENDING and StatusRefused, counted by
// budget. When the node's budget is full, a peer holding less may take the
// largest stream of the peer holding the most (see budget), so peers that
// fill it cannot starve another. Half-sent requests from 4 peers x 64
// streams at 1 MiB thus cost about 4 x 4 MiB, not 256 MiB, whatever
// StreamTimeout is; a shorter one would only make attackers reopen sooner.
// The budget covers requests while they arrive; once read, a request
// belongs to its handler, bounded by MaxConcurrent and HandlerTimeout.
//
// Concurrency: quic-go's Config.MaxIncomingStreams (64 on overlay
// connections, the reference's MAX_CONCURRENT_STREAMS) stops a peer from
// opening more streams than that; Serve additionally runs at most
// Config.MaxConcurrent handlers per connection and accepts no further
// stream while that many run, so a 65th request waits in the caller's
// OpenStreamSync until a slot frees or its deadline passes.
//
// Connection pool: there is none in this package, on purpose. The
// overlay node already keeps exactly one authenticated connection per peer
// (its peer table, capped by overlay Config.MaxPeers = 1,000, the
// reference's connection cache size). A second table here would duplicate
// that state and could disagree with it on which connection is current,
// and on which of two simultaneous dials survived. Call therefore takes the
// *quic.Conn the node hands it, and the node answers ErrUnreachable when it
// has none. The reference's LRU eviction and idle eviction belong to that
// peer table too; today it refuses new peers at the cap instead of evicting
// the least recently used, and QUIC keep-alives hold idle connections open,
// so both are still to be done there, not here.
//
// The package imports pki, quic-go and the standard library only; it does
// not know the overlay.
package rpc
