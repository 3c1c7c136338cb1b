package smartsock

import (
	"encoding/binary"
	"maps"
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
//
// The shard of a key is its caller's hash (h), so the hash is a direct,
// inlined call: addrIndex and sessIndex wrap the two kinds of key.
type index[K comparable, V any] struct {
	shards [indexShards]atomic.Pointer[map[K]V]
	n      int // entries; the writer's only
}

const indexShards = 64

func (x *index[K, V]) init() {
	for i := range x.shards {
		m := map[K]V{}
		x.shards[i].Store(&m)
	}
}

func (x *index[K, V]) shard(h uint64) *atomic.Pointer[map[K]V] { return &x.shards[h%indexShards] }

// get returns k's value; any goroutine may call it.
func (x *index[K, V]) get(k K, h uint64) V { return (*x.shard(h).Load())[k] }

// put stores k's value. Only the writer calls it.
func (x *index[K, V]) put(k K, h uint64, v V) {
	s := x.shard(h)
	old := *s.Load()
	m := make(map[K]V, len(old)+1)
	maps.Copy(m, old)
	if _, ok := m[k]; !ok {
		x.n++
	}
	m[k] = v
	s.Store(&m)
}

// remove removes k. Only the writer calls it.
func (x *index[K, V]) remove(k K, h uint64) {
	s := x.shard(h)
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

// addrIndex is an index by address (real or virtual).
type addrIndex[V any] struct{ index[netip.AddrPort, V] }

func newAddrIndex[V any]() *addrIndex[V] { x := &addrIndex[V]{}; x.init(); return x }

func (x *addrIndex[V]) load(k netip.AddrPort) V   { return x.get(k, hashAddrPort(k)) }
func (x *addrIndex[V]) set(k netip.AddrPort, v V) { x.put(k, hashAddrPort(k), v) }
func (x *addrIndex[V]) del(k netip.AddrPort)      { x.remove(k, hashAddrPort(k)) }

// sessIndex is an index by relay session.
type sessIndex[V any] struct{ index[[16]byte, V] }

func newSessIndex[V any]() *sessIndex[V] { x := &sessIndex[V]{}; x.init(); return x }

func (x *sessIndex[V]) load(k [16]byte) V   { return x.get(k, hashSession(k)) }
func (x *sessIndex[V]) set(k [16]byte, v V) { x.put(k, hashSession(k), v) }
func (x *sessIndex[V]) del(k [16]byte)      { x.remove(k, hashSession(k)) }

// hashAddrPort spreads addresses over the shards: the low half of the
// address (where IPv4 addresses and virtual addresses differ) and the
// port. Shards bound the cost of a copy, not a lookup (each shard is a Go
// map with its own seeded hash), so a sender choosing addresses that land
// in one shard gains nothing it could not get by sending more.
func hashAddrPort(a netip.AddrPort) uint64 {
	b := a.Addr().As16()
	return (binary.LittleEndian.Uint64(b[8:]) ^ uint64(a.Port())) * 0x9e3779b97f4a7c15 >> 58
}

// hashSession: relays choose session IDs at random.
func hashSession(s [16]byte) uint64 { return uint64(s[0]) }
