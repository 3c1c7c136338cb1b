package smartsock

import (
	"crypto/rand"

	quic "github.com/korium/korium-tun/third_party/quic-go"
	"github.com/korium/korium-tun/wire"
)

// ConnIDLen is the length of the connection IDs this node issues.
const ConnIDLen = 8

// ConnIDGenerator issues random connection IDs that never begin with the
// bytes following the first byte of a probe or relay magic ("MPR", "RLY"),
// so a QUIC short-header packet addressed to us can never be mistaken for a
// probe or relay frame, whatever its first byte.
type ConnIDGenerator struct{}

// GenerateConnectionID implements quic.ConnectionIDGenerator.
func (ConnIDGenerator) GenerateConnectionID() (quic.ConnectionID, error) {
	var b [ConnIDLen]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return quic.ConnectionID{}, err
		}
		if !reservedCIDPrefix(b[:]) {
			return quic.ConnectionIDFromBytes(b[:]), nil
		}
	}
}

// ConnectionIDLen implements quic.ConnectionIDGenerator.
func (ConnIDGenerator) ConnectionIDLen() int { return ConnIDLen }

func reservedCIDPrefix(b []byte) bool {
	s := string(b[:3])
	return s == wire.ProbeMagic[1:] || s == wire.RelayMagic[1:]
}
