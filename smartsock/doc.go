// Package smartsock is the socket layer under quic-go. quic-go sees one
// stable virtual address per peer (its SmartAddr, port 1); smartsock owns the
// table that maps each virtual address to the real path packets take now,
// and demultiplexes the UDP socket it shares between QUIC, path probes (SMPR)
// and relay frames (CRLY). The formats of those are in package wire.
//
// Conn implements quic-go's OOBCapablePacketConn and its batch-read interface
// over a UDP (an interface: NewUDP wraps a *net.UDPConn, smartsock/simnet is
// an in-memory network), so over an OS socket quic-go keeps its fast paths
// (GSO, batched reads with recvmmsg, ECN, path-MTU discovery) while every
// address it reads or writes passes through the path table.
//
// A peer has several paths: direct addresses and relay sessions (CRLY
// frames through a relay, set up by the node over an authenticated
// connection). A real address becomes a path of a peer only on that peer's
// word signed with its key (a hello probe), an authenticated probe, or
// because this node chose it (a dial, a contact record, a punch); a QUIC
// packet from any other address never reaches quic-go. Only one path owns
// an address: another peer naming it gets a candidate there, and takes the
// address only with stronger evidence than its owner holds it by, never
// from a peer that proved itself there and still answers (owner.go). A
// send error of a network that is away for a moment (a link flap) is a lost
// packet, not a failed connection (transient.go). A path carries data
// once the peer proved itself on it: a handshake with its certificate
// completed over it (Confirm), or it answered a probe MACed with a key from
// the QUIC session (SetPathKey). Paths are probed (an idle peer's current
// path only when QUIC's keep-alives stop proving it, QUICProof) and Select
// picks the one traffic takes (paths.go, select.go), so traffic moves between
// relay and direct paths without a new QUIC connection.
//
// # Who owns what
//
// One goroutine, the path loop (loop.go), owns the path table: peers,
// paths, the address and session indexes, ping and dial-back waiters, the
// shared probe and hello budgets. Probe ticks, hellos and probes, and every
// call from the node (AddPeer, Confirm, Punch, Ping, ...) run on it; the
// calls post a closure and wait for it. The loop publishes what the other
// goroutines need as immutable snapshots: the indexes by virtual address,
// real address and relay session (index.go), and per peer a route (where
// data goes, where a handshake goes; route.go). quic-go's read goroutine
// (ReadBatch, demux.go) and its send goroutines (WriteMsgUDP, write.go) read
// only those and atomics, never a lock of the table: what they must tell
// the loop (a hello, a probe, a handshake packet on a path) goes through a
// bounded queue, dropped and counted when full. The read side owns the
// per-source budgets and the stateless reset (serialized by readMu, which
// guards nothing else). Close stops the loop and waits for it.
//
// It imports pki, smartaddr, wire, internal/ratelimit, internal/udpbatch
// and quic-go (for its connection ID generator) only.
package smartsock
