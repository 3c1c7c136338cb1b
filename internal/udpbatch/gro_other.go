//go:build !(linux && (amd64 || arm64))

package udpbatch

import "net"

// newGROReader has no UDP GRO here: NewGRO reads datagram by datagram.
func newGROReader(*net.UDPConn, *GROStats) (Reader, error) { return nil, nil }
