// Package netstack is an in-process IPv6 network stack (gVisor's tcpip) that
// serves as the overlay's device for Go programs running without root.
//
// A *Stack owns one SmartAddr, routes fd00:c0f1::/32 through its single NIC,
// and implements golang.zx2c4.com/wireguard/tun.Device, so the overlay's
// packet loop drives it exactly like the kernel TUN: Read returns batches of
// MTU-sized IPv6 packets the stack wants to send, Write injects packets that
// arrived for it. Programs use DialContext, Listen and ListenPacket to get
// net.Conn, net.Listener and net.PacketConn values on the overlay.
//
// We wrap gVisor's channel endpoint ourselves instead of using wireguard-go's
// tun/netstack so that TCP buffers can be tuned and so that the stack can
// send with segmentation offload (TCP emits up to 64 KiB super-packets that
// Read splits into MTU-sized segments across the batch) and receive with
// GRO (Write verifies each packet's checksum and coalesces consecutive TCP
// segments of a flow within the batch before the stack sees them; see
// coalesce.go). Both cut the per-packet cost of the stack, which dominates
// throughput. gVisor's own stack/gro is not used: it allocates per packet
// and, in this version, its Flush leaves all but one packet per bucket
// behind.
//
// It imports smartaddr and nothing else of this project.
package netstack
