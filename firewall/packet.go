package firewall

import "encoding/binary"

// ICMPv6 message types the filter treats specially (RFC 4443).
const (
	icmpEchoRequest = 128
	icmpEchoReply   = 129
	icmpErrorMax    = 127 // types 0-127 are error messages (Packet Too Big is 2)
)

const (
	ipv6HeaderLen = 40
	maxExtHeaders = 8 // a longer chain is refused rather than walked
)

// headers is what the filter reads of one IPv6 packet.
type headers struct {
	proto   uint8
	src     uint16 // TCP/UDP source port; ICMPv6 echo identifier
	dst     uint16 // TCP/UDP destination port
	icmp    uint8  // ICMPv6 type
	ports   bool   // src/dst are meaningful (TCP, UDP, ICMPv6 echo)
	laterFr bool   // a fragment other than the first: no transport header
	l4      int    // offset of the transport header
}

// parse reads the transport header of an IPv6 packet, walking at most
// maxExtHeaders extension headers. ok is false for a packet too short for
// what it claims (the caller has already checked the IPv6 header itself).
func parse(b []byte) (h headers, ok bool) {
	if len(b) < ipv6HeaderLen || b[0]>>4 != 6 {
		return h, false
	}
	next, off := b[6], ipv6HeaderLen
	for i := 0; ; i++ {
		if i == maxExtHeaders {
			return h, false
		}
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if off+8 > len(b) {
				return h, false
			}
			next, off = b[off], off+(int(b[off+1])+1)*8
			continue
		case 51: // authentication header
			if off+8 > len(b) {
				return h, false
			}
			next, off = b[off], off+(int(b[off+1])+2)*4
			continue
		case 44: // fragment
			if off+8 > len(b) {
				return h, false
			}
			if binary.BigEndian.Uint16(b[off+2:])>>3 != 0 {
				h.proto, h.laterFr = b[off], true
				return h, true
			}
			next, off = b[off], off+8
			continue
		}
		break
	}
	h.proto, h.l4 = next, off
	switch next {
	case 6, 17: // TCP, UDP: the ports lead both headers
		if off+4 > len(b) {
			return h, false
		}
		h.src, h.dst, h.ports = binary.BigEndian.Uint16(b[off:]), binary.BigEndian.Uint16(b[off+2:]), true
	case 58:
		if off+8 > len(b) {
			return h, false
		}
		h.icmp = b[off]
		if h.icmp == icmpEchoRequest || h.icmp == icmpEchoReply {
			// The identifier plays the role of both ports, so a request and
			// its reply share one flow key.
			id := binary.BigEndian.Uint16(b[off+4:])
			h.src, h.dst, h.ports = id, id, true
		}
	}
	return h, true
}

// errorAboutUs reports whether pkt, an ICMPv6 error message at h, quotes a
// packet this node sent to the error's sender: the quoted source is the
// outer destination (us) and the quoted destination the outer source (the
// peer). Every peer is the only owner of its address and forwards for
// nobody, so an error from it can only be about a packet sent to it; one
// quoting any other flow is a peer trying to reset or shrink our
// connections with someone else (Linux matches errors to sockets by the
// quoted packet alone).
func errorAboutUs(pkt []byte, h *headers) bool {
	q := h.l4 + 8 // the quoted packet follows the 8-byte ICMPv6 header
	if q+ipv6HeaderLen > len(pkt) {
		return false
	}
	return string(pkt[q+8:q+24]) == string(pkt[24:40]) && string(pkt[q+24:q+40]) == string(pkt[8:24])
}
