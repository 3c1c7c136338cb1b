package datapath

import "github.com/korium/korium-tun/internal/ip6"

// Sizes of the tunnel.
const (
	// MinMTU is the IPv6 minimum link MTU: the overlay always carries it.
	MinMTU = ip6.MinMTU
	// QUICOverhead is what quic-go reserves around a datagram's payload in a
	// packet of InitialPacketSize bytes: 1 type byte + 20 (max connection ID)
	// + 16 (AEAD tag) + 3 (DATAGRAM frame type and length).
	QUICOverhead = 40
	// relayOverhead is the CRLY header a relayed path adds.
	relayOverhead = 20
	// underlayIPUDP is the IPv6 + UDP header size of the underlay.
	underlayIPUDP = 48
	// DefaultMTU fills a 1500-byte underlay with room for a relay header:
	// 1500 - 48 - 20 - 40 = 1392.
	DefaultMTU = 1500 - underlayIPUDP - relayOverhead - QUICOverhead
	// maxDatagram is the longest QUIC datagram payload quic-go delivers
	// (its packets are at most 1452 bytes).
	maxDatagram = 1452
	// MaxMTU is the largest tunnel MTU quic-go can carry.
	MaxMTU = maxDatagram - QUICOverhead
	// devOffset is the headroom in front of every device buffer:
	// wireguard's tun needs offset >= 10 for its virtio header.
	devOffset = 16
)
