package netstack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"

	"github.com/korium/korium-tun/smartaddr"
)

// DialContext connects to address ("[fd00:c0f1::…]:port") on the overlay.
// network is "tcp", "tcp6", "udp" or "udp6". There is no name resolution:
// the host must be an overlay IPv6 address. A TCP dial to an address nobody
// answers for waits for ctx.
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := s.parseRemote(network, address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	fa := fullAddr(ap)
	switch network {
	case "tcp", "tcp6":
		return gonet.DialContextTCP(ctx, s.stack, fa, ipv6.ProtocolNumber)
	default:
		return gonet.DialUDP(s.stack, nil, &fa, ipv6.ProtocolNumber)
	}
}

// Listen listens for TCP connections on address (":port" or
// "[addr]:port", where addr is the stack's own address or unspecified).
// network is "tcp" or "tcp6".
func (s *Stack) Listen(network, address string) (net.Listener, error) {
	if network != "tcp" && network != "tcp6" {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	fa, err := s.parseLocal(address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	return gonet.ListenTCP(s.stack, fa, ipv6.ProtocolNumber)
}

// ListenPacket opens a UDP socket on address (":port" or "[addr]:port" as
// for Listen). network is "udp" or "udp6".
func (s *Stack) ListenPacket(network, address string) (net.PacketConn, error) {
	if network != "udp" && network != "udp6" {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	fa, err := s.parseLocal(address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	return gonet.DialUDP(s.stack, &fa, nil, ipv6.ProtocolNumber)
}

func (s *Stack) parseRemote(network, address string) (netip.AddrPort, error) {
	switch network {
	case "tcp", "tcp6", "udp", "udp6":
	default:
		return netip.AddrPort{}, net.UnknownNetworkError(network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if a := ap.Addr(); !smartaddr.IsOverlay(a) || a.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%v is not an overlay address (%v)", a, smartaddr.Prefix)
	}
	return ap, nil
}

// parseLocal parses ":port" or "[addr]:port" for a socket bound on this
// stack; addr must be ours or unspecified.
func (s *Stack) parseLocal(address string) (tcpip.FullAddress, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return tcpip.FullAddress{}, err
	}
	a := netip.IPv6Unspecified()
	if host != "" {
		if a, err = netip.ParseAddr(host); err != nil {
			return tcpip.FullAddress{}, err
		}
	}
	if !a.IsUnspecified() && a != s.addr {
		return tcpip.FullAddress{}, fmt.Errorf("%v is not this stack's address %v", a, s.addr)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return tcpip.FullAddress{}, fmt.Errorf("bad port %q", port)
	}
	fa := tcpip.FullAddress{NIC: nicID, Port: uint16(p)}
	if !a.IsUnspecified() {
		fa.Addr = tcpip.AddrFrom16(a.As16())
	}
	return fa, nil
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom16(ap.Addr().As16()), Port: ap.Port()}
}
