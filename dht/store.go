package dht

import (
	"time"

	"github.com/korium/korium-tun/pki"
)

// The record store with the reference's quotas: per storing peer at most
// PerPeerEntryLimit records and PerPeerStorageQuota bytes, at most
// MaxValueSize per record, at most MaxRecords in all. Guarded by the DHT's
// mutex.

type storedRecord struct {
	rec   *Record
	owner pki.Identity // the peer whose STORE is charged for it
	size  int
}

type usage struct{ entries, bytes int }

type recordStore struct {
	max      int
	byID     map[NodeID]*storedRecord
	byPrefix map[[12]byte][]NodeID // SmartAddr prefix index, at most maxPerPrefix IDs each
	perPeer  map[pki.Identity]*usage
}

const maxIDsPerPrefix = 4

func newRecordStore(max int) *recordStore {
	return &recordStore{
		max:      max,
		byID:     make(map[NodeID]*storedRecord),
		byPrefix: make(map[[12]byte][]NodeID),
		perPeer:  make(map[pki.Identity]*usage),
	}
}

// put stores a verified record charged to from and returns a status code.
func (s *recordStore) put(from pki.Identity, rec *Record, now time.Time) uint8 {
	size := rec.encodedSize()
	if size > MaxValueSize {
		return codeInvalid
	}
	id := rec.ID()
	old := s.byID[id]
	if old != nil {
		if rec.Seq < old.rec.Seq || rec.Seq == old.rec.Seq && !rec.Expires.After(old.rec.Expires) {
			return codeStale
		}
	}
	u := s.perPeer[from]
	if u == nil {
		u = &usage{}
	}
	entries, bytes := u.entries+1, u.bytes+size
	if old != nil && old.owner == from {
		entries--
		bytes -= old.size
	}
	if entries > PerPeerEntryLimit || bytes > PerPeerStorageQuota {
		return codeQuota
	}
	if old == nil && len(s.byID) >= s.max {
		s.expire(now)
		if len(s.byID) >= s.max {
			return codeQuota
		}
	}
	if old != nil {
		s.remove(id)
	}
	u.entries++
	u.bytes += size
	s.perPeer[from] = u
	s.byID[id] = &storedRecord{rec: rec, owner: from, size: size}
	p := [12]byte(id[:12])
	if ids := s.byPrefix[p]; len(ids) < maxIDsPerPrefix {
		s.byPrefix[p] = append(ids, id)
	}
	return codeOK
}

func (s *recordStore) remove(id NodeID) {
	sr := s.byID[id]
	if sr == nil {
		return
	}
	delete(s.byID, id)
	if u := s.perPeer[sr.owner]; u != nil {
		u.entries--
		u.bytes -= sr.size
		if u.entries <= 0 {
			delete(s.perPeer, sr.owner)
		}
	}
	p := [12]byte(id[:12])
	ids := s.byPrefix[p]
	for i, x := range ids {
		if x == id {
			ids = append(ids[:i:i], ids[i+1:]...)
			break
		}
	}
	if len(ids) == 0 {
		delete(s.byPrefix, p)
	} else {
		s.byPrefix[p] = ids
	}
}

// get returns unexpired records matching key: the exact node ID when
// prefixBits is 0, else every record whose node ID starts with the first
// prefixBits (at most 96) bits of key.
func (s *recordStore) get(key NodeID, prefixBits int, now time.Time) []Record {
	var out []Record
	add := func(id NodeID) {
		if sr := s.byID[id]; sr != nil && sr.rec.Expires.After(now) && len(out) < MaxRecordsPerMessage {
			out = append(out, *sr.rec)
		}
	}
	if prefixBits == 0 {
		add(key)
		return out
	}
	for _, id := range s.byPrefix[[12]byte(key[:12])] {
		if HasPrefix(id, key, prefixBits) {
			add(id)
		}
	}
	return out
}

// expire drops every expired record.
func (s *recordStore) expire(now time.Time) int {
	n := 0
	for id, sr := range s.byID {
		if !sr.rec.Expires.After(now) {
			s.remove(id)
			n++
		}
	}
	return n
}

// bytes returns the total size of stored records.
func (s *recordStore) bytes() int {
	n := 0
	for _, u := range s.perPeer {
		n += u.bytes
	}
	return n
}
