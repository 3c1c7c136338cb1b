package datapath

import (
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/firewall"
	"github.com/korium/korium-tun/peers"
)

// The firewall hook: Config.Firewall judges every datagram a peer sends,
// after accept's address checks and before the device write, and learns
// every packet the read loop sends (or holds for an unresolved address),
// so that the answers to our own flows pass whatever the rules say. Both
// devices (kernel TUN and netstack) go through it alike.
//
// Each peer's receiver owns that peer's firewall handle (made when the
// receiver starts, so once per connection): the per-packet path is a nil
// check, then the firewall's own allocation-free Inbound or Outbound.
// Verdicts and the last dropped flows are counted by the firewall itself
// (Firewall.Stats), not here.

// fwHook is the engine's firewall state.
type fwHook struct {
	// clock is the time (unix ns) the firewall's flow timeouts run on,
	// refreshed by the housekeeping loop every 250 ms: the timeouts are
	// minutes long, and a coarse clock costs one atomic load per packet
	// instead of a clock read.
	clock atomic.Int64
}

// startFirewall sets the firewall's clock before the first packet.
func (e *Engine) startFirewall() { e.fw.clock.Store(time.Now().UnixNano()) }

// firewallPeer returns p's firewall handle (nil without a firewall), with
// the SPIFFE ID Config.FirewallSPIFFE vouches for.
func (e *Engine) firewallPeer(p *peers.Peer) *firewall.Peer {
	fw := e.cfg.Firewall
	if fw == nil {
		return nil
	}
	if e.cfg.FirewallSPIFFE != nil {
		if sid, expiry := e.cfg.FirewallSPIFFE(p); sid != nil {
			return fw.NewPeerVouched(p.ID, sid, expiry)
		}
	}
	return fw.NewPeer(p.ID, "")
}

// filterIn reports whether the firewall lets d, a datagram accept passed,
// through to the device. It allocates nothing.
func (e *Engine) filterIn(fp *firewall.Peer, d []byte) bool {
	if fp == nil {
		return true
	}
	return e.cfg.Firewall.Inbound(fp, d, e.fw.clock.Load()).Pass()
}

// trackOut tells the firewall about pkt, a packet the read loop sends or
// holds, so its answers pass. It allocates nothing.
func (e *Engine) trackOut(pkt []byte) {
	if fw := e.cfg.Firewall; fw != nil {
		fw.Outbound(pkt, e.fw.clock.Load())
	}
}
