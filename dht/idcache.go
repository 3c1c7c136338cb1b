package dht

import (
	"sync"

	"github.com/korium/korium-tun/pki"
)

// IdentityCache remembers identities that passed pki.Identity.Check, so
// that the decoder does not pay a point decompression (about 8 µs) for
// every contact of every reply: a lookup reply names up to k contacts, most
// of them nodes we have seen before. Only valid identities are kept, so a
// hit is exactly as good as a check; a peer that sends many fresh identities
// only makes us check each, as without a cache. It is bounded (arbitrary
// eviction when full) and safe for concurrent use.
type IdentityCache struct {
	mu  sync.Mutex // guards m
	m   map[pki.Identity]struct{}
	max int
}

// DefaultIdentityCacheSize is the size of a DHT's own IdentityCache: a
// full routing table's worth of contacts (NumBuckets is never reached in
// practice; the reference's ~5,120 routing contacts are) at about 50 bytes
// each.
const DefaultIdentityCacheSize = 4096

// NewIdentityCache returns a cache of at most max identities (at least 1).
func NewIdentityCache(n int) *IdentityCache {
	return &IdentityCache{m: make(map[pki.Identity]struct{}), max: max(n, 1)}
}

// parse is pki.IdentityFromBytes through the cache. A nil cache checks
// every time.
func (c *IdentityCache) parse(b []byte) (pki.Identity, error) {
	if c == nil || len(b) != pki.IdentitySize {
		return pki.IdentityFromBytes(b)
	}
	id := pki.Identity(b)
	c.mu.Lock()
	_, ok := c.m[id]
	c.mu.Unlock()
	if ok {
		return id, nil
	}
	id, err := pki.IdentityFromBytes(b)
	if err != nil {
		return id, err
	}
	c.mu.Lock()
	if len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[id] = struct{}{}
	c.mu.Unlock()
	return id, nil
}

// Len returns how many identities the cache holds.
func (c *IdentityCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
