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
// compared as text in scripts and must have one spelling.
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
	return id, nil
}

// IdentityFromPublicKey converts an Ed25519 public key.
func IdentityFromPublicKey(pub ed25519.PublicKey) (Identity, error) {
	var id Identity
	if len(pub) != IdentitySize {
		return id, fmt.Errorf("%w: public key has %d bytes, want %d", ErrBadIdentity, len(pub), IdentitySize)
	}
	copy(id[:], pub)
	return id, nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
