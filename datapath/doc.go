// Package datapath carries IPv6 packets between the node's device (a
// kernel TUN or the in-process netstack) and its peers' QUIC connections,
// in the spirit of yggdrasil's ipv6rwc: it routes each packet the device
// gives it to the peer that owns its destination, holds one packet per
// overlay address nobody is connected to yet while the owner is resolved,
// answers oversized packets with ICMPv6 Packet Too Big and dead
// destinations with Destination Unreachable, and checks every datagram a
// peer sends (its inner source is the peer's own address, its destination
// ours) before writing it to the device.
//
// The packet path, one goroutine per stage, none waiting on another
// peer's:
//
//	device read loop (one): route by the peers' snapshot, copy into the
//	    peer's send queue (bounded, counted), wake its sender; a full
//	    queue makes it wait for room a little (backpressure.go: per peer,
//	    bounded by a stall mark and a wait budget), then drop its oldest;
//	    it never blocks on a peer. A packet for a peer with nothing
//	    queued and an idle sender goes straight to its connection
//	    (TrySendDatagram, which never waits): one hand-off less
//	sender (one per peer with traffic): drains its queue into
//	    SendDatagram, which blocks once quic-go's 32-entry queue is full:
//	    only that peer's sender waits, and a burst of packets in its
//	    queue keeps quic-go's packets (and GSO batches) full
//	receiver (one per peer): ReceiveDatagrams straight into device
//	    buffers, checks each in place, queues it for the writer; a lone
//	    datagram while the writer has nothing to write it writes to the
//	    device itself (one hand-off less; wireguard-go writes from one
//	    goroutine per peer too)
//	device write loop (one): writes batches; for a kernel TUN it copies
//	    each packet into a 64 KiB buffer so the kernel can coalesce TCP
//	    segments in place (CoalesceCopy), the netstack needs no copy
//	housekeeping (one): expires held packets and failed resolutions
//	resolutions (at most 64 at once): ask Config.Resolve for an owner
//
// State and its owners: the send queues and the peer-to-queue map belong
// to the read loop (a queue's packets are shared with its sender under the
// queue's own mutex, held only to move pointers); held packets and
// resolutions are behind one mutex (pending.mu); everything else is
// counters and the peers' snapshot, read without a lock. No lock is held
// across a call into another package, and no two are ever held at once
// (there is no lock order to keep): the read loop takes a buffer from
// another queue (when every queue together is full, the longest gives way)
// before it locks the queue the packet goes to.
//
// Every goroutine is stopped by Close, which closes the device and waits
// for them all. A sender blocked in SendDatagram returns only when its
// connection closes: close the connections first (the node does).
//
// The stateful packet filter (firewall/, Config.Firewall) sits in
// firewall.go: each receiver checks its peer's datagrams after accept, and
// the read loop tells it the flows it sends.
//
// datapath imports peers (their snapshot and connections), smartaddr,
// quic-go, internal/ip6 and internal/group; never nat, the DHT, gossipsub
// or the overlay.
package datapath
