package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// newLinkEndpoint returns gVisor's channel endpoint set up for our device.
func newLinkEndpoint(queueLen, mtu int) *channel.Endpoint {
	e := channel.New(queueLen, uint32(mtu), "")
	// Host GSO: TCP hands us super-packets with a partial checksum, which
	// Stack.Read segments and checksums (see splitTCP6).
	e.SupportedGSOKind = stack.HostGSOSupported
	// Write verifies transport checksums itself (verifyTransportChecksum)
	// before coalescing segments, whose merged packet keeps a stale
	// checksum; the NIC marks every packet as validated or none.
	e.LinkEPCapabilities = stack.CapabilityRXChecksumOffload
	return e
}
