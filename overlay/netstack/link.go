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
type linkEndpoint struct{ *channel.Endpoint }

// GSOMaxSize implements stack.GSOEndpoint.
func (linkEndpoint) GSOMaxSize() uint32 { return gsoMaxSize }

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
	return linkEndpoint{e}
}
