package nodesim_test

import (
	"testing"

	"github.com/korium/korium-tun/internal/nodesim"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/peers"
)

// The simulation's defaults are the node's: a connection cap, idle
// eviction and QUIC idle timeout changed in the overlay change what the
// figures of SCALE.md model, so they must change here too.
func TestDefaultsAreTheNodes(t *testing.T) {
	for _, c := range []struct {
		what      string
		sim, node any
	}{
		{"connection cap", nodesim.DefaultMaxPeers, peers.DefaultMaxPeers},
		{"idle eviction", nodesim.DefaultIdleEvict, peers.DefaultIdleEvict},
		{"dead connection kept (QUIC idle timeout)", nodesim.DefaultConnTimeout, overlay.DefaultIdleTimeout},
		{"keep-alive period (the idle figures' keep-alives)", nodesim.DefaultKeepAlive, overlay.DefaultKeepAlive},
	} {
		if c.sim != c.node {
			t.Errorf("%s: the simulation models %v, the node has %v", c.what, c.sim, c.node)
		}
	}
}
