package firewall

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
)

// key names one flow from the peer's side: the peer's SmartAddr, the
// protocol, our port (local) and the peer's (remote). For ICMPv6 echo both
// ports are the echo identifier.
type key struct {
	peer          [16]byte
	proto         uint8
	local, remote uint16
}

func makeKey(peer []byte, proto uint8, local, remote uint16) key {
	return key{peer: [16]byte(peer), proto: proto, local: local, remote: remote}
}

// origin says who started a tracked flow.
type origin uint8

const (
	none   origin = iota // not tracked (or expired)
	byUs                 // this node sent first: replies pass
	byPeer               // a rule admitted it: rechecked on every packet
)

type entry struct {
	k       key
	owner   *Peer // nil for flows we started
	seen    int64 // unix ns of the last packet; 0: free
	expires int64 // unix ns after which it is forgotten (its protocol's timeout)
}

const ways = 8 // entries per bucket

// bucket is one set of the table. mu guards e.
type bucket struct {
	mu sync.Mutex
	e  [ways]entry
}

// table is a fixed-size set-associative flow table: no allocation after
// init, a lock per bucket, least recently seen eviction within a bucket.
// The hash is seeded at random so a peer cannot aim its flows at one
// bucket.
type table struct {
	b    []bucket
	mask uint64
	seed uint64
}

func (t *table) init(maxFlows int) {
	n := 1
	for n*ways < maxFlows {
		n <<= 1
	}
	t.b = make([]bucket, n)
	t.mask = uint64(n - 1)
	var s [8]byte
	rand.Read(s[:])
	t.seed = binary.LittleEndian.Uint64(s[:]) | 1
}

func (t *table) capacity() int { return len(t.b) * ways }

func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func (t *table) bucket(k *key) *bucket {
	a := binary.LittleEndian.Uint64(k.peer[:8])
	b := binary.LittleEndian.Uint64(k.peer[8:])
	c := uint64(k.proto)<<32 | uint64(k.local)<<16 | uint64(k.remote)
	h := mix(a^t.seed) ^ mix(b+t.seed) ^ mix(c^(t.seed<<1))
	return &t.b[mix(h)&t.mask]
}

func live(e *entry, now int64) bool { return e.seen != 0 && now < e.expires }

// lookup returns who started flow k and marks it seen at now.
func (t *table) lookup(k *key, now, timeout int64) origin {
	b := t.bucket(k)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.e {
		e := &b.e[i]
		if e.k == *k && live(e, now) {
			e.seen, e.expires = now, now+timeout
			if e.owner == nil {
				return byUs
			}
			return byPeer
		}
	}
	return none
}

// insert tracks k as started by owner (nil: by us). It reports whether a
// live flow had to be evicted for it.
func (t *table) insert(k *key, owner *Peer, now, timeout int64) bool {
	b := t.bucket(k)
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.put(k, owner, now, timeout, false)
}

// touchOrInsert marks k seen, or tracks it as started by us. It reports
// whether a live flow had to be evicted for it.
func (t *table) touchOrInsert(k *key, now, timeout int64) bool {
	b := t.bucket(k)
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.put(k, nil, now, timeout, true)
}

// put stores k in b (b.mu held). With keep, an entry already tracking k
// keeps its origin and is only marked seen.
func (b *bucket) put(k *key, owner *Peer, now, timeout int64, keep bool) (evicted bool) {
	match, free := -1, -1
	for i := range b.e {
		e := &b.e[i]
		if e.seen != 0 && e.k == *k {
			match = i
			break
		}
		if free < 0 && !live(e, now) {
			free = i
		}
	}
	slot := match
	switch {
	case match >= 0 && keep && live(&b.e[match], now):
		e := &b.e[match]
		e.seen, e.expires = now, now+timeout
		return false
	case match >= 0:
	case free >= 0:
		slot = free
	default:
		slot = 0
		for i := 1; i < ways; i++ {
			if b.e[i].seen < b.e[slot].seen {
				slot = i
			}
		}
		evicted = true
	}
	e := &b.e[slot]
	if e.owner != nil {
		e.owner.inbound.Add(-1)
	}
	if owner != nil {
		owner.inbound.Add(1)
	}
	*e = entry{k: *k, owner: owner, seen: now, expires: now + timeout}
	return evicted
}

func (t *table) remove(k *key) {
	b := t.bucket(k)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.e {
		e := &b.e[i]
		if e.k == *k && e.seen != 0 {
			if e.owner != nil {
				e.owner.inbound.Add(-1)
			}
			*e = entry{}
		}
	}
}

// removeIf forgets every live flow a peer started for which drop is true
// (called with the flow's bucket locked) and returns how many it forgot.
func (t *table) removeIf(now int64, drop func(*entry) bool) int {
	n := 0
	for i := range t.b {
		b := &t.b[i]
		b.mu.Lock()
		for j := range b.e {
			e := &b.e[j]
			if e.owner != nil && live(e, now) && drop(e) {
				e.owner.inbound.Add(-1)
				*e = entry{}
				n++
			}
		}
		b.mu.Unlock()
	}
	return n
}

// count returns the entries in use (for Stats; walks the table).
func (t *table) count() int {
	n := 0
	for i := range t.b {
		b := &t.b[i]
		b.mu.Lock()
		for j := range b.e {
			if b.e[j].seen != 0 {
				n++
			}
		}
		b.mu.Unlock()
	}
	return n
}
