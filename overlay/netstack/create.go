package netstack

import "golang.zx2c4.com/wireguard/tun"

// Create makes a stack and returns its two faces, as wireguard-go's
// tun/netstack CreateNetTUN does: the device a node's packet loop drives,
// and the Dial and Listen face Go programs use (one *Stack behind both).
// A node is given both (overlay.Config.Device and Net).
func Create(cfg Config) (tun.Device, *Stack, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, nil, err
	}
	return s, s, nil
}
