package smartsock

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/korium/korium-tun/internal/udpbatch"
)

// UDP is the datagram socket a Conn runs on: an OS socket (NewUDP wraps a
// *net.UDPConn) or an in-memory one (smartsock/simnet), so path, relay and
// punching logic can be tested on a network the test controls.
type UDP interface {
	// ReadBatch reads at least one datagram into ms like x/net's
	// ipv4.PacketConn.ReadBatch (Buffers[0], N, OOB, NN, Flags, and Addr
	// as a *net.UDPAddr the caller must not modify), blocking until one
	// arrives, the read deadline passes or the socket is closed (then
	// net.ErrClosed). A Conn never calls it concurrently.
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	// WriteTo sends b to dst as one datagram, or as several segments when
	// oob carries a UDP_SEGMENT control message (only an OS socket is
	// given one: quic-go adds GSO and ECN control messages only where it
	// found them supported, through SyscallConn). Safe for concurrent use.
	WriteTo(b, oob []byte, dst netip.AddrPort) error
	LocalAddr() net.Addr
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
	SetReadBuffer(bytes int) error
	SetWriteBuffer(bytes int) error
	Close() error
}

// SysUDP is a UDP over an OS socket. quic-go reaches its file descriptor
// through SyscallConn to set DF, detect GSO and enable ECN; it reads only
// through the Conn.
type SysUDP interface {
	UDP
	SyscallConn() (syscall.RawConn, error)
}

// errNoFD is what SyscallConn returns over a UDP that has no file
// descriptor: quic-go must be given Conn.PacketConn() instead.
var errNoFD = errors.New("smartsock: this Conn runs on a UDP without a file descriptor; give quic-go Conn.PacketConn()")

// osUDP is a *net.UDPConn with batched reads that allocate nothing
// (internal/udpbatch: recvmmsg on Linux).
type osUDP struct {
	conn *net.UDPConn
	r    udpbatch.Reader // not safe for concurrent use: the Conn serializes reads
}

// NewUDP wraps c; the result owns c and closes it on Close.
func NewUDP(c *net.UDPConn) (SysUDP, error) {
	r, err := udpbatch.New(c)
	if err != nil {
		return nil, err
	}
	return &osUDP{conn: c, r: r}, nil
}

func (u *osUDP) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	return u.r.ReadBatch(ms, flags)
}

func (u *osUDP) WriteTo(b, oob []byte, dst netip.AddrPort) error {
	var err error
	if len(oob) == 0 {
		_, err = u.conn.WriteToUDPAddrPort(b, dst)
	} else {
		_, _, err = u.conn.WriteMsgUDPAddrPort(b, oob, dst)
	}
	return err
}

func (u *osUDP) LocalAddr() net.Addr                   { return u.conn.LocalAddr() }
func (u *osUDP) SetReadDeadline(t time.Time) error     { return u.conn.SetReadDeadline(t) }
func (u *osUDP) SetWriteDeadline(t time.Time) error    { return u.conn.SetWriteDeadline(t) }
func (u *osUDP) SetReadBuffer(n int) error             { return u.conn.SetReadBuffer(n) }
func (u *osUDP) SetWriteBuffer(n int) error            { return u.conn.SetWriteBuffer(n) }
func (u *osUDP) Close() error                          { return u.conn.Close() }
func (u *osUDP) SyscallConn() (syscall.RawConn, error) { return u.conn.SyscallConn() }
