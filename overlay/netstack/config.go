package netstack

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/korium/korium-tun/smartaddr"
)

// Defaults for the zero values of Config.
const (
	// DefaultMTU is the IPv6 minimum link MTU, which every overlay path
	// must carry.
	DefaultMTU = 1280
	// DefaultTCPBufferSize is the initial TCP send and receive buffer of a
	// connection. Auto-tuning grows it up to MaxTCPBufferSize.
	DefaultTCPBufferSize = 1 << 20
	// DefaultMaxTCPBufferSize bounds TCP buffers: a connection can keep at
	// most this much in flight, which must cover bandwidth x RTT.
	DefaultMaxTCPBufferSize = 8 << 20
	// DefaultQueueLen is how many packets (GSO super-packets count as one)
	// wait for Read before the stack drops outbound packets.
	DefaultQueueLen = 1024
)

// minMTU and maxMTU bound Config.MTU: IPv6 needs 1280 and the packet length
// field limits packets to 64 KiB.
const (
	minMTU = 1280
	maxMTU = 65535
)

// Config configures a Stack. The zero value of every field but Addr means
// its default.
type Config struct {
	// Addr is the node's SmartAddr; it must be inside fd00:c0f1::/32.
	Addr netip.Addr
	// MTU of the device. Default DefaultMTU.
	MTU int
	// TCPBufferSize is the initial TCP send and receive buffer per
	// connection. Default DefaultTCPBufferSize.
	TCPBufferSize int
	// MaxTCPBufferSize is the largest TCP buffer auto-tuning may reach.
	// Default DefaultMaxTCPBufferSize.
	MaxTCPBufferSize int
	// QueueLen is the outbound packet queue length. Default DefaultQueueLen.
	QueueLen int
	// Logger receives rare events (never one line per packet). Nil
	// discards.
	Logger *slog.Logger
}

// withDefaults returns c with zero fields replaced by their defaults.
func (c Config) withDefaults() Config {
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.TCPBufferSize == 0 {
		c.TCPBufferSize = DefaultTCPBufferSize
	}
	if c.MaxTCPBufferSize == 0 {
		c.MaxTCPBufferSize = max(DefaultMaxTCPBufferSize, c.TCPBufferSize)
	}
	if c.QueueLen == 0 {
		c.QueueLen = DefaultQueueLen
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first field of c (after defaults) that is invalid.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case !smartaddr.IsOverlay(c.Addr):
		return fmt.Errorf("netstack: Config.Addr %v is not inside %v", c.Addr, smartaddr.Prefix)
	case c.MTU < minMTU || c.MTU > maxMTU:
		return fmt.Errorf("netstack: Config.MTU %d is outside [%d, %d]", c.MTU, minMTU, maxMTU)
	case c.TCPBufferSize < 4096:
		return fmt.Errorf("netstack: Config.TCPBufferSize %d is below 4096", c.TCPBufferSize)
	case c.MaxTCPBufferSize < c.TCPBufferSize:
		return fmt.Errorf("netstack: Config.MaxTCPBufferSize %d is below TCPBufferSize %d", c.MaxTCPBufferSize, c.TCPBufferSize)
	case c.QueueLen < 1:
		return fmt.Errorf("netstack: Config.QueueLen %d is below 1", c.QueueLen)
	}
	return nil
}
