package smartsock

import (
	"encoding/binary"
	"maps"
	"math/bits"
	"net/netip"
	"sync/atomic"
)

// index is a map that one goroutine writes (the path loop) and any
// goroutine reads without a lock: the read path looks up the peer of every
// packet's source, the write path the peer of every packet's destination.
//
// It is split into indexShards copy-on-write shards: a write copies the one
// shard it touches and publishes the copy with an atomic store, so a reader
// sees either the old shard or the new one, never a map being written, and
// a write costs a copy of 1/64 of the table. With 10,000 peers (a few
// paths each) a shard holds a few hundred entries: tens of microseconds
// per change, and changes come at handshake and path-change rates, far
// below packet rates. A read is one hash, one atomic load and one map
// lookup, and allocates nothing.
type index[K comparable, V any] struct {
	hash   func(K) uint64
	shards [indexShards]atomic.Pointer[map[K]V]
	n      int // entries; the writer's only
}

const indexShards = 64

func newIndex[K comparable, V any](hash func(K) uint64) *index[K, V] {
	x := &index[K, V]{hash: hash}
	for i := range x.shards {
		m := map[K]V{}
		x.shards[i].Store(&m)
	}
	return x
}

func (x *index[K, V]) shard(k K) *atomic.Pointer[map[K]V] {
	return &x.shards[x.hash(k)%indexShards]
}

// load returns k's value; any goroutine may call it.
func (x *index[K, V]) load(k K) V { return (*x.shard(k).Load())[k] }

// set stores k's value. Only the writer calls it.
func (x *index[K, V]) set(k K, v V) {
	s := x.shard(k)
	old := *s.Load()
	m := make(map[K]V, len(old)+1)
	maps.Copy(m, old)
	if _, ok := m[k]; !ok {
		x.n++
	}
	m[k] = v
	s.Store(&m)
}

// del removes k. Only the writer calls it.
func (x *index[K, V]) del(k K) {
	s := x.shard(k)
	old := *s.Load()
	if _, ok := old[k]; !ok {
		return
	}
	m := maps.Clone(old)
	delete(m, k)
	x.n--
	s.Store(&m)
}

// len is the number of entries. Only the writer calls it.
func (x *index[K, V]) len() int { return x.n }

// all calls f for every entry of a snapshot of each shard, so f may change
// the index. Only the writer calls it.
func (x *index[K, V]) all(f func(K, V)) {
	for i := range x.shards {
		for k, v := range *x.shards[i].Load() {
			f(k, v)
		}
	}
}

// hashAddrPort spreads addresses over the shards. Shards bound the cost of
// a copy, not a lookup (each shard is a Go map with its own seeded hash),
// so a sender choosing addresses that land in one shard gains nothing it
// could not get by sending more.
func hashAddrPort(a netip.AddrPort) uint64 {
	b := a.Addr().As16()
	x := binary.LittleEndian.Uint64(b[:8]) ^ bits.RotateLeft64(binary.LittleEndian.Uint64(b[8:]), 23) ^ uint64(a.Port())<<40
	return (x * 0x9e3779b97f4a7c15) >> 32
}

// hashSession: relays choose session IDs at random.
func hashSession(s [16]byte) uint64 { return binary.LittleEndian.Uint64(s[:8]) >> 7 }
