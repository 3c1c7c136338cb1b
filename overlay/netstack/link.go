package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// linkEndpoint is gVisor's channel endpoint plus a GRO stage for inbound
// packets. The channel endpoint keeps its dispatcher to itself, so Attach is
// wrapped to hand the same dispatcher to GRO.
type linkEndpoint struct {
	*channel.Endpoint
	// gro is used only by Stack.Write, under Stack.writeMu.
	gro gro.GRO
}

func newLinkEndpoint(queueLen, mtu int) *linkEndpoint {
	e := &linkEndpoint{Endpoint: channel.New(queueLen, uint32(mtu), "")}
	// Host GSO: TCP hands us super-packets with a partial checksum, which
	// Stack.Read segments and checksums (see splitTCP6).
	e.SupportedGSOKind = stack.HostGSOSupported
	// Write verifies transport checksums itself (verifyTransportChecksum)
	// before GRO, because GRO's merged segments keep the first segment's
	// checksum and the NIC marks every packet as validated or none.
	e.LinkEPCapabilities = stack.CapabilityRXChecksumOffload
	e.gro.Init(true)
	return e
}

// groBucketSize is gVisor's GRO packets-per-bucket limit (unexported in
// stack/gro).
const groBucketSize = 8

// flushGRO delivers every packet GRO holds. gro.GRO.Flush in our gVisor
// version resets each packet's list links while walking the bucket, so one
// call flushes only the first packet of each bucket; flows that share a
// bucket would wait for the next Write. Each call removes at least one
// packet from every non-empty bucket, so groBucketSize calls empty it, and
// a call on empty buckets costs eight nil checks.
func (e *linkEndpoint) flushGRO() {
	for range groBucketSize {
		e.gro.Flush()
	}
}

// Attach implements stack.LinkEndpoint.
func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.Endpoint.Attach(d)
	e.gro.Dispatcher = d
}
