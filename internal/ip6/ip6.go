// Package ip6 holds the IPv6 and ICMPv6 facts the datapath needs: the two
// addresses of a packet read from fixed offsets after its length is
// checked (no parsing beyond the fixed header), and the ICMPv6 errors the
// node makes up (RFC 4443). Pure functions; no allocation beyond what an
// append does.
package ip6

import (
	"encoding/binary"
	"net/netip"
)

// HeaderLen is the fixed IPv6 header's length.
const HeaderLen = 40

// MinMTU is the IPv6 minimum link MTU.
const MinMTU = 1280

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

// Addrs returns the source and destination of an IPv6 packet, and
// whether b is a well-formed IPv6 packet whose length field matches len(b).
func Addrs(b []byte) (src, dst netip.Addr, ok bool) {
	if len(b) < HeaderLen || b[0]>>4 != 6 {
		return src, dst, false
	}
	if int(be16(b[4:6]))+HeaderLen != len(b) {
		return src, dst, false
	}
	return netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40])), true
}

// Dst returns the destination of an IPv6 packet read from a device.
func Dst(b []byte) (netip.Addr, bool) {
	if len(b) < HeaderLen || b[0]>>4 != 6 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom16([16]byte(b[24:40])), true
}

// ICMPv6 message types and codes the node generates (RFC 4443).
const (
	TypeDstUnreachable = 1
	TypePacketTooBig   = 2
	// CodeNoRoute is Destination Unreachable code 0, "no route to
	// destination".
	CodeNoRoute = 0
	// CodeAddrUnreachable is Destination Unreachable code 3, "address
	// unreachable": the overlay route exists, but nobody owns the address.
	CodeAddrUnreachable = 3
)

// AppendPacketTooBig appends an ICMPv6 Packet Too Big message (RFC 4443
// 3.2) answering orig, as if sent by orig's destination, to b.
func AppendPacketTooBig(b []byte, orig []byte, mtu int) []byte {
	return appendICMPv6Error(b, orig, TypePacketTooBig, 0, uint32(mtu))
}

// AppendDstUnreachable appends an ICMPv6 Destination Unreachable message
// (RFC 4443 3.1) with code answering orig, as if sent by orig's
// destination, to b.
func AppendDstUnreachable(b []byte, orig []byte, code byte) []byte {
	return appendICMPv6Error(b, orig, TypeDstUnreachable, code, 0)
}

// appendICMPv6Error appends an ICMPv6 error message answering orig (at least
// an IPv6 header) to b. Its source is orig's destination (the overlay has no
// router address of its own, and a stack drops errors that claim to come
// from its own address), its destination orig's source. It quotes as much
// of orig as fits in the minimum MTU.
func appendICMPv6Error(b []byte, orig []byte, typ, code byte, param uint32) []byte {
	quote := orig
	if max := MinMTU - HeaderLen - 8; len(quote) > max {
		quote = quote[:max]
	}
	plen := 8 + len(quote)
	start := len(b)
	b = append(b, 0x60, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(plen))
	b = append(b, 58, 64)         // next header ICMPv6, hop limit
	b = append(b, orig[24:40]...) // source: the unreachable destination
	b = append(b, orig[8:24]...)  // destination: the original sender
	icmp := len(b)
	b = append(b, typ, code, 0, 0) // type, code, checksum
	b = binary.BigEndian.AppendUint32(b, param)
	b = append(b, quote...)
	sum := Checksum(b[start+8:start+24], b[start+24:start+40], b[icmp:])
	binary.BigEndian.PutUint16(b[icmp+2:], sum)
	return b
}

// MayAnswerWithError reports whether an ICMPv6 error may answer pkt (RFC
// 4443 2.4 (e)): never an ICMPv6 error itself, never a packet whose source
// is not a unicast address that could receive the answer.
func MayAnswerWithError(pkt []byte) bool {
	if len(pkt) < HeaderLen || pkt[0]>>4 != 6 {
		return false
	}
	if pkt[6] == 58 && (len(pkt) == HeaderLen || pkt[HeaderLen] < 128) {
		return false // an ICMPv6 error (types 0..127), or a truncated ICMPv6 header
	}
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	return !src.IsUnspecified() && !src.IsMulticast() && !src.IsLoopback()
}

// Checksum is the ICMPv6 checksum of msg from src to dst (zero over a
// message whose checksum field is right).
func Checksum(src, dst, msg []byte) uint16 {
	var s uint32
	add := func(p []byte) {
		for len(p) >= 2 {
			s += uint32(be16(p))
			p = p[2:]
		}
		if len(p) == 1 {
			s += uint32(p[0]) << 8
		}
	}
	add(src)
	add(dst)
	s += uint32(len(msg))
	s += 58
	add(msg)
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
