// Package udpbatch reads batches of datagrams from a *net.UDPConn without
// allocating per datagram. It has the ReadBatch method of x/net's
// ipv4.PacketConn, which quic-go (third_party/quic-go) and smartsock read
// with; x/net's allocates a *net.UDPAddr (and its IP) for every datagram.
// On Linux (amd64, arm64) it calls recvmmsg itself and hands out one
// *net.UDPAddr per distinct source from a small cache; elsewhere it is
// x/net's reader. NewGRO's reader also lets the kernel coalesce a burst
// from one source into one read (UDP_GRO) and splits it again.
//
// The addresses it returns are shared between datagrams from the same
// source: callers must not modify them.
package udpbatch

import (
	"net"
	"sync/atomic"

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

// GROStats counts what a reader made by NewGRO split and dropped.
type GROStats struct {
	// Coalesced reads (more than one segment) and the packets split
	// out of them.
	Coalesced, Segments atomic.Uint64
	// Reads dropped whole: a malformed or truncated control message (the
	// segment size cannot be trusted), data cut short, no data.
	DropCmsg, DropTrunc, DropEmpty atomic.Uint64
}

// NewGRO returns a Reader for c that lets the kernel coalesce runs of
// datagrams from one source into one read (UDP_GRO) and splits them again,
// so each message the caller gets holds one datagram, in its first buffer.
// It counts in st. gro is false where the platform or kernel has no UDP
// GRO: the Reader is then New's.
func NewGRO(c *net.UDPConn, st *GROStats) (r Reader, gro bool, err error) {
	if r, err := newGROReader(c, st); r != nil || err != nil {
		return r, r != nil, err
	}
	r, err = New(c)
	return r, false, err
}
