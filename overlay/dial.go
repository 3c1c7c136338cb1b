package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrNoNetstack is returned by Dial and Listen on a node whose device is a
// kernel TUN: programs there use the operating system's sockets.
var ErrNoNetstack = errors.New("overlay: this node runs on a kernel TUN device; use ordinary sockets")

// DialContext connects to a peer's SmartAddr through the in-process
// network stack, e.g. DialContext(ctx, "tcp", "[fd00:c0f1:...]:80").
// Networks: tcp, tcp6, udp, udp6.
func (n *Node) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if n.stack == nil {
		return nil, ErrNoNetstack
	}
	c, err := n.stack.DialContext(ctx, network, address)
	if err != nil {
		if ap, perr := netip.ParseAddrPort(address); perr == nil && n.dp.NoOwner(ap.Addr()) {
			// The stack only saw Destination Unreachable; say why.
			return nil, fmt.Errorf("overlay: dial %s %s: no node owns %s, or its owner cannot be reached: %w", network, address, ap.Addr(), err)
		}
	}
	return c, err
}

// Listen accepts TCP connections on the node's SmartAddr, e.g. Listen("tcp", ":80").
func (n *Node) Listen(network, address string) (net.Listener, error) {
	if n.stack == nil {
		return nil, ErrNoNetstack
	}
	return n.stack.Listen(network, address)
}

// ListenPacket receives UDP on the node's SmartAddr, e.g. ListenPacket("udp", ":53").
func (n *Node) ListenPacket(network, address string) (net.PacketConn, error) {
	if n.stack == nil {
		return nil, ErrNoNetstack
	}
	return n.stack.ListenPacket(network, address)
}
