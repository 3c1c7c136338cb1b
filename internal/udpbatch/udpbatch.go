// Package udpbatch reads batches of datagrams from a *net.UDPConn without
// allocating per datagram. It has the ReadBatch method of x/net's
// ipv4.PacketConn, which quic-go (third_party/quic-go) and smartsock read
// with; x/net's allocates a *net.UDPAddr (and its IP) for every datagram.
// On Linux (amd64, arm64) it calls recvmmsg itself and hands out one
// *net.UDPAddr per distinct source from a small cache; elsewhere it is
// x/net's reader.
//
// The addresses it returns are shared between datagrams from the same
// source: callers must not modify them.
package udpbatch

import (
	"net"

	"golang.org/x/net/ipv4"
)

// A Reader reads a batch of datagrams, like ipv4.PacketConn.ReadBatch: it
// fills ms[i].Buffers, N, OOB, NN, Flags and Addr for each datagram read
// and returns how many. flags are passed to recvmmsg. It is not safe for
// concurrent use.
type Reader interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
}

// New returns a Reader for c.
func New(c *net.UDPConn) (Reader, error) {
	if r, err := newMmsgReader(c); r != nil || err != nil {
		return r, err
	}
	return ipv4.NewPacketConn(c), nil
}
