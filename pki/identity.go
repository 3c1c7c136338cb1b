// Package pki owns node identities: the Ed25519 keypair, its S/Kademlia-style
// proof of work, the key file on disk, and the self-signed certificates and
// TLS configurations that make "certificate key = expected identity" the only
// trust rule of the overlay. It imports no other package of this project.
package pki

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"

	"filippo.io/edwards25519"
	"lukechampine.com/blake3"
)

// IdentitySize is the length of an identity: an Ed25519 public key.
const IdentitySize = ed25519.PublicKeySize

// Identity is a node's Ed25519 public key. It is self-certifying: whoever
// proves possession of the matching private key is that node.
type Identity [IdentitySize]byte

// String returns the 64-character lowercase hex form.
func (id Identity) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex characters, for logs.
func (id Identity) Short() string { return hex.EncodeToString(id[:4]) }

// IsZero reports whether id is the zero value (no identity).
func (id Identity) IsZero() bool { return id == Identity{} }

// PublicKey returns id as an ed25519.PublicKey (a copy).
func (id Identity) PublicKey() ed25519.PublicKey {
	k := make(ed25519.PublicKey, IdentitySize)
	copy(k, id[:])
	return k
}

// Hash returns blake3(identity): the 256-bit node ID of the DHT and the
// source of the SmartAddr bits.
func (id Identity) Hash() [32]byte { return blake3.Sum256(id[:]) }

// Verify reports whether sig is id's Ed25519 signature of msg.
func (id Identity) Verify(msg, sig []byte) bool {
	if len(sig) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(id[:], msg, sig)
}

// MarshalText implements encoding.TextMarshaler (64 lowercase hex).
func (id Identity) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseIdentity's rules.
func (id *Identity) UnmarshalText(b []byte) error {
	p, err := ParseIdentity(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}

// ErrBadIdentity is wrapped by every ParseIdentity error.
var ErrBadIdentity = errors.New("malformed identity")

// ParseIdentity parses exactly 64 lowercase hex characters. Anything else
// (upper case, prefixes, spaces, other lengths) is rejected: identities are
// compared as text in scripts and must have one spelling. The key must also
// pass Check.
func ParseIdentity(s string) (Identity, error) {
	var id Identity
	if len(s) != 2*IdentitySize {
		return id, fmt.Errorf("%w %q: want 64 lowercase hex characters, got %d characters", ErrBadIdentity, clip(s), len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return id, fmt.Errorf("%w %q: character %d is not lowercase hex", ErrBadIdentity, clip(s), i+1)
		}
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("%w %q: %v", ErrBadIdentity, clip(s), err)
	}
	if err := id.Check(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// IdentityFromPublicKey converts an Ed25519 public key; it must pass Check.
func IdentityFromPublicKey(pub ed25519.PublicKey) (Identity, error) {
	return IdentityFromBytes(pub)
}

// IdentityFromBytes converts the 32 bytes of an identity read off the wire
// (a record, a message, a certificate); it must pass Check. Every decoder of
// an identity goes through here or ParseIdentity.
func IdentityFromBytes(b []byte) (Identity, error) {
	var id Identity
	if len(b) != IdentitySize {
		return id, fmt.Errorf("%w: public key has %d bytes, want %d", ErrBadIdentity, len(b), IdentitySize)
	}
	copy(id[:], b)
	if err := id.Check(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// Check reports whether id can be anyone's key: the canonical encoding of a
// point on the curve that is not of small order. Refused: the all-zero and
// all-FF keys, off-curve and non-canonical encodings, and the eight
// small-order points (a signature by such a key proves nothing, and several
// encodings of one point would give one peer several identities). Costs a
// point decompression, a few microseconds: call it where an identity enters,
// not per packet.
func (id Identity) Check() error {
	p, err := new(edwards25519.Point).SetBytes(id[:])
	if err != nil {
		return fmt.Errorf("%w %s: not a point on Ed25519's curve", ErrBadIdentity, id.Short())
	}
	if [IdentitySize]byte(p.Bytes()) != id {
		return fmt.Errorf("%w %s: not the canonical encoding of its point", ErrBadIdentity, id.Short())
	}
	if p.MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return fmt.Errorf("%w %s: a small-order point, not a usable public key", ErrBadIdentity, id.Short())
	}
	return nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
