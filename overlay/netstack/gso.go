package netstack

import (
	"encoding/binary"
	"errors"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// Offsets into an IPv6 header followed directly by a TCP header.
const (
	ipv6HeaderLen   = 40
	ipv6PayloadLen  = 4 // uint16 payload length
	ipv6NextHeader  = 6
	ipv6SrcAddr     = 8 // src and dst, 32 bytes
	tcpProto        = 6
	tcpMinHeaderLen = 20
	tcpSeq          = 4
	tcpDataOff      = 12
	tcpFlags        = 13
	tcpChecksum     = 16

	tcpFlagFin = 0x01
	tcpFlagPsh = 0x08
	tcpFlagCwr = 0x80
)

var (
	errNotTCP6      = errors.New("netstack: GSO packet is not IPv6+TCP without extension headers")
	errShortBuffer  = errors.New("netstack: read buffer too small for a packet")
	errBadGSOLength = errors.New("netstack: GSO packet length disagrees with its header")
)

// tcp6HeaderLen returns the length of the IPv6 and TCP headers of pkt, which
// must be IPv6 with TCP directly after the fixed header (what gVisor's TCP
// emits).
func tcp6HeaderLen(pkt []byte) (int, error) { return tcp6HeaderLenOf(pkt, len(pkt)) }

// tcp6HeaderLenOf is tcp6HeaderLen for a packet of total length n whose
// first bytes (at least its headers) are hdr.
func tcp6HeaderLenOf(hdr []byte, n int) (int, error) {
	if len(hdr) < ipv6HeaderLen+tcpMinHeaderLen || hdr[0]>>4 != 6 || hdr[ipv6NextHeader] != tcpProto {
		return 0, errNotTCP6
	}
	if int(binary.BigEndian.Uint16(hdr[ipv6PayloadLen:]))+ipv6HeaderLen != n {
		return 0, errBadGSOLength
	}
	thl := int(hdr[ipv6HeaderLen+tcpDataOff]>>4) * 4
	if thl < tcpMinHeaderLen || ipv6HeaderLen+thl > len(hdr) {
		return 0, errNotTCP6
	}
	return ipv6HeaderLen + thl, nil
}

// tcp6Segments returns how many segments of at most mss payload bytes the
// packet with headers of length hl and total length n splits into.
func tcp6Segments(n, hl, mss int) int {
	payload := n - hl
	if payload <= mss {
		return 1
	}
	return (payload + mss - 1) / mss
}

// setTCP6Checksum computes the TCP checksum of seg (IPv6 header, TCP header,
// payload) from scratch, ignoring whatever the checksum field held (gVisor
// leaves the pseudo-header sum there when it expects offload).
func setTCP6Checksum(seg []byte) {
	tcp := seg[ipv6HeaderLen:]
	tcp[tcpChecksum], tcp[tcpChecksum+1] = 0, 0
	sum := checksum.Checksum(seg[ipv6SrcAddr:ipv6HeaderLen], 0)
	sum = checksum.Combine(sum, uint16(len(tcp)))
	sum = checksum.Combine(sum, tcpProto)
	sum = checksum.Checksum(tcp, sum)
	binary.BigEndian.PutUint16(tcp[tcpChecksum:], ^sum)
}

// splitTCP6 writes the TCPv6 super-packet pkt as segments of at most mss
// payload bytes into bufs[i][offset:]; see splitTCP6Pieces.
func splitTCP6(pkt []byte, hl, mss int, bufs [][]byte, sizes []int, offset int) (int, error) {
	payload := [1][]byte{pkt[hl:]}
	return splitTCP6Pieces(pkt[:hl], payload[:], len(pkt)-hl, mss, bufs, sizes, offset)
}

// splitTCP6Pieces writes the TCPv6 super-packet with headers hdr and plen
// payload bytes held in the pieces of payload (gVisor's views, read in
// place) as segments of at most mss payload bytes into bufs[i][offset:],
// setting sizes[i], the way a kernel TUN with offload splits a GSO packet:
// each segment gets its own payload length, sequence number and checksum;
// FIN and PSH stay on the last segment only, CWR on the first only. The
// caller checked that len(bufs) is at least tcp6Segments. It returns the
// number of segments written.
func splitTCP6Pieces(hdr []byte, payload [][]byte, plen, mss int, bufs [][]byte, sizes []int, offset int) (int, error) {
	hl := len(hdr)
	seq := binary.BigEndian.Uint32(hdr[ipv6HeaderLen+tcpSeq:])
	flags := hdr[ipv6HeaderLen+tcpFlags]
	var piece []byte // the rest of the current piece
	n := 0
	for first := true; first || plen > 0; first = false {
		chunk := min(mss, plen)
		dst := bufs[n][offset:]
		if len(dst) < hl+chunk {
			return n, errShortBuffer
		}
		seg := dst[:hl+chunk]
		copy(seg, hdr)
		for w := seg[hl:]; len(w) > 0; {
			for len(piece) == 0 {
				if len(payload) == 0 {
					return n, errBadGSOLength
				}
				piece, payload = payload[0], payload[1:]
			}
			c := copy(w, piece)
			w, piece = w[c:], piece[c:]
		}
		plen -= chunk
		binary.BigEndian.PutUint16(seg[ipv6PayloadLen:], uint16(len(seg)-ipv6HeaderLen))
		binary.BigEndian.PutUint32(seg[ipv6HeaderLen+tcpSeq:], seq)
		seq += uint32(chunk)
		f := flags
		if !first {
			f &^= tcpFlagCwr
		}
		if plen > 0 {
			f &^= tcpFlagFin | tcpFlagPsh
		}
		seg[ipv6HeaderLen+tcpFlags] = f
		setTCP6Checksum(seg)
		sizes[n] = len(seg)
		n++
	}
	return n, nil
}

// Next-header values whose checksums Write verifies.
const (
	udpProto    = 17
	icmpv6Proto = 58
)

// verifyTransportChecksum checks the TCP, UDP or ICMPv6 checksum of the
// IPv6 packet p when the transport header directly follows the fixed
// header. checked is false for anything else (extension headers,
// fragments), which the stack then takes without a transport checksum
// check. Every IPv6 transport checksum covers the same pseudo-header.
func verifyTransportChecksum(p []byte) (ok, checked bool) {
	next := p[ipv6NextHeader]
	if next != tcpProto && next != udpProto && next != icmpv6Proto {
		return false, false
	}
	if int(binary.BigEndian.Uint16(p[ipv6PayloadLen:]))+ipv6HeaderLen != len(p) {
		return false, true
	}
	l4 := p[ipv6HeaderLen:]
	if next == udpProto && len(l4) >= 8 && l4[6] == 0 && l4[7] == 0 {
		return false, true // a zero UDP checksum is not allowed over IPv6
	}
	sum := checksum.Checksum(p[ipv6SrcAddr:ipv6HeaderLen], 0)
	sum = checksum.Combine(sum, uint16(len(l4)))
	sum = checksum.Combine(sum, uint16(next))
	sum = checksum.Checksum(l4, sum)
	return sum == 0xffff, true
}
