package overlay

import "github.com/korium/korium-tun/datapath"

// Tunnel MTUs (the datapath's; see there for how they are derived).
const (
	// MinMTU is the IPv6 minimum link MTU: the overlay always carries it.
	MinMTU = datapath.MinMTU
	// DefaultMTU fills a 1500-byte underlay with room for a relay header
	// (1392).
	DefaultMTU = datapath.DefaultMTU
	// MaxMTU is the largest tunnel MTU quic-go can carry (1412).
	MaxMTU = datapath.MaxMTU
)
