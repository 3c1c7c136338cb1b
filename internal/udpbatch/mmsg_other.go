//go:build !(linux && (amd64 || arm64))

package udpbatch

import "net"

// newMmsgReader has no recvmmsg of ours here: New falls back to x/net.
func newMmsgReader(*net.UDPConn) (Reader, error) { return nil, nil }
