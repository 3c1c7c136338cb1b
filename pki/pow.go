package pki

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"

	"lukechampine.com/blake3"
)

// DefaultPoWBits is the network-wide proof-of-work difficulty (the
// reference's POW_DIFFICULTY): blake3(public key || nonce) must start with at
// least this many zero bits. Tests lower it; every node of one network must
// use the same value.
const DefaultPoWBits = 24

// MaxPoWBits bounds the difficulty a caller may ask for (generation time
// doubles per bit; 40 bits would take days).
const MaxPoWBits = 32

// PoWBits returns the number of leading zero bits of blake3(id || nonce),
// with nonce as 8 big-endian bytes. Checking a proof costs one hash.
func PoWBits(id Identity, nonce uint64) int {
	var buf [IdentitySize + 8]byte
	copy(buf[:], id[:])
	binary.BigEndian.PutUint64(buf[IdentitySize:], nonce)
	h := blake3.Sum256(buf[:])
	return leadingZeroBits(h[:])
}

func leadingZeroBits(b []byte) int {
	n := 0
	for _, x := range b {
		if x != 0 {
			return n + bits.LeadingZeros8(x)
		}
		n += 8
	}
	return n
}

// CheckPoW returns an error unless nonce proves at least need bits for id.
func CheckPoW(id Identity, nonce uint64, need int) error {
	if got := PoWBits(id, nonce); got < need {
		return fmt.Errorf("identity %s: proof of work has %d bits, the network requires %d", id.Short(), got, need)
	}
	return nil
}

// Keypair is a node's private key together with its proof-of-work nonce.
type Keypair struct {
	priv  ed25519.PrivateKey
	id    Identity
	nonce uint64
}

// NewKeypair builds a keypair from a 32-byte Ed25519 seed and a nonce. It
// does not check the proof of work; callers that accept a key for a network
// call CheckPoW.
func NewKeypair(seed []byte, nonce uint64) (*Keypair, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("private key seed has %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	var id Identity
	copy(id[:], priv[ed25519.SeedSize:])
	return &Keypair{priv: priv, id: id, nonce: nonce}, nil
}

// Identity returns the public identity.
func (k *Keypair) Identity() Identity { return k.id }

// Nonce returns the proof-of-work nonce.
func (k *Keypair) Nonce() uint64 { return k.nonce }

// PoWBits returns the strength of this keypair's proof of work.
func (k *Keypair) PoWBits() int { return PoWBits(k.id, k.nonce) }

// Seed returns a copy of the 32-byte private seed.
func (k *Keypair) Seed() []byte { return append([]byte(nil), k.priv.Seed()...) }

// Sign signs msg with the private key.
func (k *Keypair) Sign(msg []byte) []byte { return ed25519.Sign(k.priv, msg) }

// PrivateKey returns the Ed25519 private key (for TLS).
func (k *Keypair) PrivateKey() ed25519.PrivateKey { return k.priv }

// GenerateKeypair makes a fresh keypair whose proof of work has at least
// powBits bits, searching nonces on every core. It stops early when ctx ends.
func GenerateKeypair(ctx context.Context, powBits int) (*Keypair, error) {
	if powBits < 0 || powBits > MaxPoWBits {
		return nil, fmt.Errorf("proof-of-work bits %d out of range 0..%d", powBits, MaxPoWBits)
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("reading random seed: %w", err)
	}
	kp, err := NewKeypair(seed, 0)
	if err != nil {
		return nil, err
	}
	nonce, err := SolvePoW(ctx, kp.id, powBits)
	if err != nil {
		return nil, err
	}
	kp.nonce = nonce
	return kp, nil
}

// SolvePoW finds a nonce giving id at least powBits bits, using every core.
func SolvePoW(ctx context.Context, id Identity, powBits int) (uint64, error) {
	if powBits == 0 {
		return 0, nil
	}
	workers := runtime.GOMAXPROCS(0)
	var (
		found  atomic.Bool
		result atomic.Uint64
		wg     sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(start uint64) {
			defer wg.Done()
			var buf [IdentitySize + 8]byte
			copy(buf[:], id[:])
			for n, i := start, 0; ; n, i = n+uint64(workers), i+1 {
				if i&0xfff == 0 && (found.Load() || ctx.Err() != nil) {
					return
				}
				binary.BigEndian.PutUint64(buf[IdentitySize:], n)
				h := blake3.Sum256(buf[:])
				if leadingZeroBits(h[:]) >= powBits {
					if found.CompareAndSwap(false, true) {
						result.Store(n)
					}
					return
				}
			}
		}(uint64(w))
	}
	wg.Wait()
	if !found.Load() {
		return 0, ctx.Err()
	}
	return result.Load(), nil
}
