package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoMaxSize is the largest super-packet TCP may hand us: the IPv6 payload
// length field's limit. gVisor's TCP keeps its payload below this minus the
// largest TCP header.
const gsoMaxSize = 1<<16 - 1

// linkEndpoint is gVisor's channel endpoint with a larger GSO limit than
// its fixed 32 KiB, so that one super-packet fills half a batch.
type linkEndpoint struct {
	*channel.Endpoint
	gsoMax uint32
}

// GSOMaxSize implements stack.GSOEndpoint.
func (e linkEndpoint) GSOMaxSize() uint32 { return e.gsoMax }

// gvisorTCPHeaderSlack is what gVisor's TCP subtracts from GSOMaxSize for
// the payload of a super-packet: the largest TCP header and one byte
// (sender.sendData).
const gvisorTCPHeaderSlack = 60 + 1

// tcpTimestampLen is the TCP timestamp option as every segment carries it
// once negotiated (gVisor and Linux both do).
const tcpTimestampLen = 12

// gsoMaxSizeFor returns the GSO limit at which gVisor's super-packets carry
// a whole number of full segments for an MTU, so that splitting one leaves
// no short segment behind: each short one costs a datagram, a QUIC packet
// and a receive-side GRO run of its own, for a few hundred bytes.
func gsoMaxSizeFor(mtu int) uint32 {
	mss := mtu - ipv6HeaderLen - tcpMinHeaderLen - tcpTimestampLen
	n := (gsoMaxSize - gvisorTCPHeaderSlack) / mss
	return uint32(n*mss + gvisorTCPHeaderSlack)
}

// newLinkEndpoint returns gVisor's channel endpoint set up for our device.
func newLinkEndpoint(queueLen, mtu int) linkEndpoint {
	e := channel.New(queueLen, uint32(mtu), "")
	// Host GSO: TCP hands us super-packets with a partial checksum, which
	// Stack.Read segments and checksums (see splitTCP6).
	e.SupportedGSOKind = stack.HostGSOSupported
	// Write verifies transport checksums itself (verifyTransportChecksum)
	// before coalescing segments, whose merged packet keeps a stale
	// checksum; the NIC marks every packet as validated or none.
	e.LinkEPCapabilities = stack.CapabilityRXChecksumOffload
	return linkEndpoint{Endpoint: e, gsoMax: gsoMaxSizeFor(mtu)}
}
