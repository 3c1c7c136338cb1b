// Package addrpolicy decides which underlay addresses a node may send to on
// a peer's word: the addresses in signed contact records, DHT contacts and
// hints, punch candidates, and what a node advertises about itself. It is a
// leaf (standard library only) so every package that takes an address from
// the network applies the same rule.
package addrpolicy

import (
	"errors"
	"fmt"
	"net/netip"
)

// Errors wrapped by Check, one per refused kind, so callers can count them.
var (
	ErrInvalid     = errors.New("not a valid address")
	ErrPort        = errors.New("port 0")
	ErrUnspecified = errors.New("unspecified address")
	ErrLoopback    = errors.New("loopback address")
	ErrLinkLocal   = errors.New("link-local address")
	ErrMulticast   = errors.New("multicast address")
	ErrBroadcast   = errors.New("broadcast address")
	ErrZone        = errors.New("address with a zone")
)

var (
	thisNetwork  = netip.MustParsePrefix("0.0.0.0/8") // "this host on this network" (RFC 1122)
	broadcast4   = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	reserved4    = netip.MustParsePrefix("240.0.0.0/4") // class E, never routed
	v4Compatible = netip.MustParsePrefix("::/96")       // deprecated IPv4-compatible IPv6
)

// Check returns nil when a node may send to a: a unicast address with a
// port, not unspecified, link-local, multicast, broadcast, class E or zoned.
// Loopback is allowed only when allowLoopback (the node itself listens on
// loopback, as in tests and single-host clusters). An IPv4-mapped IPv6
// address is judged as the IPv4 address it carries.
func Check(a netip.AddrPort, allowLoopback bool) error {
	ip := a.Addr().Unmap()
	switch {
	case !ip.IsValid():
		return ErrInvalid
	case a.Port() == 0:
		return fmt.Errorf("%w: %v", ErrPort, a)
	case ip.Zone() != "":
		return fmt.Errorf("%w: %v", ErrZone, a)
	case ip.IsUnspecified() || ip.Is4() && thisNetwork.Contains(ip):
		return fmt.Errorf("%w: %v", ErrUnspecified, a)
	case ip.IsLoopback():
		if allowLoopback {
			return nil
		}
		return fmt.Errorf("%w: %v", ErrLoopback, a)
	case ip.IsLinkLocalUnicast():
		return fmt.Errorf("%w: %v", ErrLinkLocal, a)
	case ip.IsMulticast():
		return fmt.Errorf("%w: %v", ErrMulticast, a)
	case ip == broadcast4 || ip.Is4() && reserved4.Contains(ip):
		return fmt.Errorf("%w: %v", ErrBroadcast, a)
	case ip.Is6() && v4Compatible.Contains(ip):
		return fmt.Errorf("%w: %v", ErrUnspecified, a)
	}
	return nil
}

// Dialable reports whether Check(a, allowLoopback) is nil. It allocates
// nothing.
func Dialable(a netip.AddrPort, allowLoopback bool) bool {
	ip := a.Addr().Unmap()
	if !ip.IsValid() || a.Port() == 0 || ip.Zone() != "" || ip.IsUnspecified() ||
		ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip == broadcast4 {
		return false
	}
	if ip.IsLoopback() {
		return allowLoopback
	}
	return !(ip.Is4() && (thisNetwork.Contains(ip) || reserved4.Contains(ip)) || ip.Is6() && v4Compatible.Contains(ip))
}
