// Package peercache is a node's memory of peers it reached: at most Max
// (100, the reference's passive view) signed contact records, most recently
// reached first, persisted beside the key file so that a restarted node
// whose bootstrap peers are all gone can rejoin through peers it knew.
//
// Every record is verified (signature and proof of work) when it enters
// and again when the file is read: the file is as untrusted as the
// network. Expired records are kept: they are dialling hints, and the
// handshake pins the identity, so a stale address only costs a failed
// dial. It imports dht, pki and internal/atomicfile.
package peercache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/internal/atomicfile"
	"github.com/korium/korium-tun/pki"
)

// DefaultMax is the reference's passive view: 100 recovery candidates.
const DefaultMax = 100

// MaxMax bounds Max, and with it what Load reads.
const MaxMax = 10000

// Peer is one cached peer: its newest signed record and when we last
// reached it.
type Peer struct {
	Record  *dht.Record
	Reached time.Time
}

// Cache is a bounded set of peers. Its methods are safe for concurrent use.
type Cache struct {
	max     int
	powBits int

	mu    sync.Mutex // guards peers
	peers map[pki.Identity]*Peer
}

// New returns an empty cache of at most max peers (0: DefaultMax) whose
// records must carry powBits of proof of work.
func New(max, powBits int) *Cache {
	if max <= 0 {
		max = DefaultMax
	}
	max = min(max, MaxMax)
	return &Cache{max: max, powBits: powBits, peers: make(map[pki.Identity]*Peer)}
}

// ErrRejected wraps the reason a record was not cached.
var ErrRejected = errors.New("peer cache: record refused")

// verify checks what a cached record must satisfy: its signature and proof
// of work (not its expiry or the clock: see the package comment).
func (c *Cache) verify(r *dht.Record) error {
	if err := r.Identity.Check(); err != nil {
		return fmt.Errorf("%w: %v", ErrRejected, err)
	}
	if err := r.VerifySigned(c.powBits); err != nil {
		return fmt.Errorf("%w: %v", ErrRejected, err)
	}
	return nil
}

// Add records that we reached r's owner at reached. A record older (lower
// Seq) than the cached one only refreshes the time. When the cache is full
// the peer reached longest ago leaves.
func (c *Cache) Add(r *dht.Record, reached time.Time) error {
	if err := c.verify(r); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addLocked(r, reached)
	return nil
}

func (c *Cache) addLocked(r *dht.Record, reached time.Time) {
	if p := c.peers[r.Identity]; p != nil {
		if r.Seq > p.Record.Seq {
			p.Record = r
		}
		if reached.After(p.Reached) {
			p.Reached = reached
		}
		return
	}
	if len(c.peers) >= c.max {
		var oldest *Peer
		for _, p := range c.peers {
			if oldest == nil || p.Reached.Before(oldest.Reached) {
				oldest = p
			}
		}
		if !reached.After(oldest.Reached) {
			return // older than everything we keep
		}
		delete(c.peers, oldest.Record.Identity)
	}
	c.peers[r.Identity] = &Peer{Record: r, Reached: reached}
}

// Remove forgets id.
func (c *Cache) Remove(id pki.Identity) {
	c.mu.Lock()
	delete(c.peers, id)
	c.mu.Unlock()
}

// Max returns how many peers the cache keeps at most.
func (c *Cache) Max() int { return c.max }

// Len returns how many peers are cached.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.peers)
}

// Peers returns the cached peers, most recently reached first.
func (c *Cache) Peers() []Peer {
	c.mu.Lock()
	out := make([]Peer, 0, len(c.peers))
	for _, p := range c.peers {
		out = append(out, *p)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Reached.Equal(out[j].Reached) {
			return out[i].Reached.After(out[j].Reached)
		}
		return bytes.Compare(out[i].Record.Identity[:], out[j].Record.Identity[:]) < 0
	})
	return out
}

// File format: a header line, then per peer the reach time (Unix seconds,
// 8 bytes big endian), the record's length (2 bytes) and the record's wire
// encoding.
const fileHeader = "korium-tun-peers v1\n"

// maxFileSize bounds what Load reads.
func (c *Cache) maxFileSize() int {
	return len(fileHeader) + c.max*(8+2+dht.MaxRecordSize)
}

// Marshal returns the cache's file contents.
func (c *Cache) Marshal() []byte {
	peers := c.Peers()
	b := []byte(fileHeader)
	for _, p := range peers {
		rec := p.Record.AppendBinary(nil)
		b = binary.BigEndian.AppendUint64(b, uint64(p.Reached.Unix()))
		b = binary.BigEndian.AppendUint16(b, uint16(len(rec)))
		b = append(b, rec...)
	}
	return b
}

// Save writes the cache to path atomically, mode 0600.
func (c *Cache) Save(path string) error {
	if err := atomicfile.Write(path, c.Marshal(), 0o600); err != nil {
		return fmt.Errorf("peer cache %s: %w", path, err)
	}
	return nil
}

// LoadStats says what Load kept and what it refused.
type LoadStats struct {
	Loaded, Refused int
}

// Unmarshal adds the peers in data, verifying each record; records that
// fail are skipped and counted. A malformed file is an error (nothing of it
// is kept).
func (c *Cache) Unmarshal(data []byte) (LoadStats, error) {
	var st LoadStats
	if len(data) > c.maxFileSize() {
		return st, fmt.Errorf("peer cache: %d bytes, at most %d for %d peers", len(data), c.maxFileSize(), c.max)
	}
	rest, ok := bytes.CutPrefix(data, []byte(fileHeader))
	if !ok {
		return st, errors.New("peer cache: not a peer cache file (bad header)")
	}
	type entry struct {
		r       *dht.Record
		reached time.Time
	}
	var entries []entry
	for len(rest) > 0 {
		if len(rest) < 10 {
			return st, errors.New("peer cache: truncated entry")
		}
		reached := time.Unix(int64(binary.BigEndian.Uint64(rest)), 0)
		n := int(binary.BigEndian.Uint16(rest[8:]))
		rest = rest[10:]
		if n > dht.MaxRecordSize || n > len(rest) {
			return st, fmt.Errorf("peer cache: entry of %d bytes (at most %d, %d left)", n, dht.MaxRecordSize, len(rest))
		}
		r, err := dht.DecodeRecord(rest[:n])
		rest = rest[n:]
		if err != nil || c.verify(r) != nil {
			st.Refused++
			continue
		}
		if len(entries) == c.max {
			return st, fmt.Errorf("peer cache: more than %d entries", c.max)
		}
		entries = append(entries, entry{r, reached})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range entries {
		c.addLocked(e.r, e.reached)
		st.Loaded++
	}
	return st, nil
}

// Load adds the peers of the file at path. A missing file is not an error
// (a first start). It refuses a path that is not a regular file, and does
// not follow a symlink.
func (c *Cache) Load(path string) (LoadStats, error) {
	lfi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return LoadStats{}, nil
	}
	if err != nil {
		return LoadStats{}, fmt.Errorf("peer cache %s: %w", path, err)
	}
	if !lfi.Mode().IsRegular() {
		return LoadStats{}, fmt.Errorf("peer cache %s: not a regular file (%v); remove it", path, lfi.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return LoadStats{}, fmt.Errorf("peer cache %s: %w", path, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !os.SameFile(fi, lfi) {
		return LoadStats{}, fmt.Errorf("peer cache %s: replaced while opening it", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(c.maxFileSize())+1))
	if err != nil {
		return LoadStats{}, fmt.Errorf("peer cache %s: %w", path, err)
	}
	st, err := c.Unmarshal(data)
	if err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}
