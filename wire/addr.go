package wire

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// The address encoding: family (1 byte: 4 or 6), the address (4 or 16
// bytes), the port (2 bytes, big endian). An IPv4 address is always written
// in family 4, never as IPv4-mapped IPv6, so one address has one encoding
// (signed records rely on it). Whether an address may be sent to is not the
// codec's business: callers apply internal/addrpolicy or their own rule.
const (
	MinAddrSize = 1 + 4 + 2
	MaxAddrSize = 1 + 16 + 2
)

// Errors of ParseAddr.
var (
	// ErrAddrFamily: the family byte is neither 4 nor 6.
	ErrAddrFamily = errors.New("wire: unknown address family")
	// ErrMappedAddr: an IPv4-mapped address in family 6, which has the
	// family 4 form.
	ErrMappedAddr = errors.New("wire: IPv4-mapped address in IPv6 form")
)

// AppendAddr appends ap in the address encoding. An invalid ap is written
// as the family byte 0 alone, which ParseAddr refuses: it can never be read
// back as an address.
func AppendAddr(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().Unmap()
	switch {
	case !a.IsValid():
		return append(b, 0)
	case a.Is4():
		v := a.As4()
		b = append(b, 4)
		b = append(b, v[:]...)
	default:
		v := a.As16()
		b = append(b, 6)
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// AddrSize is the length of ap's encoding.
func AddrSize(ap netip.AddrPort) int {
	a := ap.Addr().Unmap()
	switch {
	case !a.IsValid():
		return 1
	case a.Is4():
		return MinAddrSize
	}
	return MaxAddrSize
}

// ParseAddr decodes the address at the start of b and returns the rest. It
// fails with ErrTruncated, ErrAddrFamily or ErrMappedAddr. Zones are never
// encoded, so none comes back.
func ParseAddr(b []byte) (netip.AddrPort, []byte, error) {
	if len(b) < 1 {
		return netip.AddrPort{}, nil, ErrTruncated
	}
	var a netip.Addr
	switch b[0] {
	case 4:
		if len(b) < MinAddrSize {
			return netip.AddrPort{}, nil, ErrTruncated
		}
		a = netip.AddrFrom4([4]byte(b[1:5]))
		b = b[5:]
	case 6:
		if len(b) < MaxAddrSize {
			return netip.AddrPort{}, nil, ErrTruncated
		}
		a = netip.AddrFrom16([16]byte(b[1:17]))
		if a.Is4In6() {
			return netip.AddrPort{}, nil, ErrMappedAddr
		}
		b = b[17:]
	default:
		return netip.AddrPort{}, nil, ErrAddrFamily
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b)), b[2:], nil
}
