package dht

import (
	"encoding/hex"
	"fmt"
	"math/bits"

	"github.com/korium/korium-tun/pki"
)

// NodeID is a position in the 256-bit key space: blake3 of an identity for
// nodes, any 32 bytes for lookup targets.
type NodeID [32]byte

// IDOf returns the node ID of id.
func IDOf(id pki.Identity) NodeID { return NodeID(id.Hash()) }

// String returns the 64-character hex form.
func (n NodeID) String() string { return hex.EncodeToString(n[:]) }

// MarshalText writes the hex form (JSON shows it as a string).
func (n NodeID) MarshalText() ([]byte, error) { return []byte(n.String()), nil }

// UnmarshalText reads the hex form.
func (n *NodeID) UnmarshalText(b []byte) error {
	if len(b) != 2*len(n) {
		return fmt.Errorf("dht: node ID %q: want %d hex characters", b, 2*len(n))
	}
	_, err := hex.Decode(n[:], b)
	return err
}

// Short returns 8 hex characters for logs.
func (n NodeID) Short() string { return hex.EncodeToString(n[:4]) }

// CommonPrefixLen returns the number of leading bits a and b share (256 if
// they are equal). Kademlia's bucket of b in a's table is 255-CommonPrefixLen
// counted from the far end; we index buckets by common prefix length.
func CommonPrefixLen(a, b NodeID) int {
	for i := range a {
		if x := a[i] ^ b[i]; x != 0 {
			return i*8 + bits.LeadingZeros8(x)
		}
	}
	return 256
}

// Closer reports whether a is strictly closer to target than b in XOR
// distance.
func Closer(target, a, b NodeID) bool { return CompareDistance(target, a, b) < 0 }

// CompareDistance returns -1, 0 or 1 as a is closer to, as close as, or
// farther from target than b.
func CompareDistance(target, a, b NodeID) int {
	for i := range target {
		da, db := a[i]^target[i], b[i]^target[i]
		if da != db {
			if da < db {
				return -1
			}
			return 1
		}
	}
	return 0
}

// HasPrefix reports whether the first nbits bits of id equal those of p.
func HasPrefix(id, p NodeID, nbits int) bool {
	if nbits > 256 {
		nbits = 256
	}
	return CommonPrefixLen(id, p) >= nbits
}

// randomIDInBucket returns an ID sharing exactly cpl leading bits with self,
// with the remaining bits taken from r.
func randomIDInBucket(self NodeID, cpl int, r [32]byte) NodeID {
	if cpl >= 256 {
		return self
	}
	out := NodeID(r)
	// Copy the first cpl bits from self.
	full := cpl / 8
	copy(out[:full], self[:full])
	if rem := cpl % 8; rem != 0 {
		mask := byte(0xff) << (8 - rem)
		out[full] = self[full]&mask | out[full]&^mask
	}
	// Bit cpl must differ from self.
	byteIdx, bit := cpl/8, byte(0x80)>>(cpl%8)
	out[byteIdx] = out[byteIdx]&^bit | (self[byteIdx]&bit ^ bit)
	return out
}
