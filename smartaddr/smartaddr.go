// Package smartaddr maps identities to SmartAddrs, the overlay's IPv6
// addresses: fd00:c0f1 followed by the first 96 bits of blake3(identity).
// It also names the virtual UDP addresses quic-go sees for each peer, which
// stay stable while smartsock moves the peer between real paths. Pure
// functions only; it imports pki and nothing else of this project.
package smartaddr

import (
	"net"
	"net/netip"

	"github.com/korium/korium-tun/pki"
)

// Prefix is the overlay's /32: every SmartAddr is inside it, and the TUN
// device owns a route for all of it.
var Prefix = netip.MustParsePrefix("fd00:c0f1::/32")

// HashBits is how many bits of blake3(identity) follow the prefix.
const HashBits = 96

// VirtualPort is the UDP port of every virtual address quic-go sees.
const VirtualPort = 1

// FromIdentity returns the SmartAddr of id.
func FromIdentity(id pki.Identity) netip.Addr {
	h := id.Hash()
	return fromHash(&h)
}

// FromHash returns the SmartAddr for a node ID (blake3 of an identity).
func FromHash(h [32]byte) netip.Addr { return fromHash(&h) }

func fromHash(h *[32]byte) netip.Addr {
	a := Prefix.Addr().As16()
	copy(a[4:], h[:HashBits/8])
	return netip.AddrFrom16(a)
}

// IsOverlay reports whether a is inside fd00:c0f1::/32 (a zone, which
// Prefix.Contains would refuse, is ignored: callers that care check it).
func IsOverlay(a netip.Addr) bool { return Prefix.Contains(a.WithZone("")) }

// Owns reports whether a is id's SmartAddr.
func Owns(id pki.Identity, a netip.Addr) bool { return FromIdentity(id) == a }

// HashPrefix returns the 96 hash bits a SmartAddr carries (12 bytes), which
// are the first 96 bits of the owner's node ID. ok is false for an address
// outside the overlay.
func HashPrefix(a netip.Addr) (p [HashBits / 8]byte, ok bool) {
	if !IsOverlay(a) {
		return p, false
	}
	b := a.As16()
	copy(p[:], b[4:])
	return p, true
}

// MatchesHash reports whether node ID h starts with a's 96 hash bits.
func MatchesHash(a netip.Addr, h [32]byte) bool {
	p, ok := HashPrefix(a)
	if !ok {
		return false
	}
	return [HashBits / 8]byte(h[:HashBits/8]) == p
}

// Virtual returns the virtual UDP address quic-go uses for id.
func Virtual(id pki.Identity) netip.AddrPort {
	return netip.AddrPortFrom(FromIdentity(id), VirtualPort)
}

// VirtualUDP is Virtual as a *net.UDPAddr (quic-go's dial API wants one).
func VirtualUDP(id pki.Identity) *net.UDPAddr {
	return net.UDPAddrFromAddrPort(Virtual(id))
}

// IsVirtual reports whether ap is a virtual peer address.
func IsVirtual(ap netip.AddrPort) bool { return ap.Port() == VirtualPort && IsOverlay(ap.Addr()) }
