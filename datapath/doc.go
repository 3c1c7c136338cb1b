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
//	    peer's send queue (bounded, drop-oldest, counted), wake its sender;
//	    never blocks on a peer
//	sender (one per peer with traffic): drains its queue into
//	    SendDatagram, which blocks once quic-go's 32-entry queue is full:
//	    only that peer's sender waits, and a burst of packets in its
//	    queue keeps quic-go's packets (and GSO batches) full
//	receiver (one per peer): ReceiveDatagrams straight into device
//	    buffers, checks each in place, queues it for the writer
//	device write loop (one): writes batches; for a kernel TUN it copies
//	    each packet into a 64 KiB buffer so the kernel can coalesce TCP
//	    segments in place (CoalesceCopy), the netstack needs no copy
//	housekeeping (one): expires held packets and failed resolutions
//	resolutions (at most 64 at once): ask Config.Resolve for an owner
//
// State and its owners: the send queues and the peer-to-queue map belong
// to the read loop (a queue's ring is shared with its sender under the
// queue's own mutex, held only to move pointers); held packets and
// resolutions are behind one mutex (pending.mu); everything else is
// counters and the peers' snapshot, read without a lock. No lock is held
// across a call into another package.
//
// Every goroutine is stopped by Close, which closes the device and waits
// for them all. A sender blocked in SendDatagram returns only when its
// connection closes: close the connections first (the node does).
//
// The stateful packet filter (firewall/) is to be wired in here by a later
// change: its inbound check goes in accept, after the source and
// destination checks, and its outbound tracking call in the read loop's
// send, before a packet is queued.
//
// datapath imports peers (their snapshot and connections), smartaddr and
// quic-go; never nat, the DHT, gossipsub or the overlay.
package datapath
