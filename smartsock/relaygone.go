package smartsock

import (
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
)

// RelayGone tells the socket that the node's connection to relayID ended:
// every relay path through it counts as dead at once (as after MaxMissed
// missed probes), so traffic moves to another proven path now instead of
// after the probes time out. The paths stay: a probe they answer revives
// them, as any path's. It returns how many paths it marked.
func (c *Conn) RelayGone(relayID pki.Identity) int {
	marked := 0
	c.call(func() {
		now := time.Now()
		c.virt.all(func(_ netip.AddrPort, p *peer) {
			hit := false
			for _, pa := range p.paths {
				if pa.relay && pa.relayID == relayID && pa.missed < MaxMissed {
					pa.missed = MaxMissed
					hit = true
					marked++
				}
			}
			if hit {
				c.touch(p)
				c.selectPath(p, now)
			}
		})
	})
	return marked
}
