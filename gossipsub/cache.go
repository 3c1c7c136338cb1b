package gossipsub

import (
	"container/list"
	"time"

	"github.com/korium/korium-tun/pki"
)

// replayWindowBits is how far behind a source's highest seqno a message may
// arrive and still be accepted once.
const replayWindowBits = 1024

type srcWindow struct {
	src     pki.Identity
	highest uint64
	newest  uint64                        // latest publish time accepted from src (Unix ms)
	bits    [replayWindowBits / 64]uint64 // bit (highest-s) set: seqno s seen
}

// seenCache is the replay and duplicate filter: a sliding window of seqnos
// per source, for at most max sources, least recently used evicted. A
// message is new if its seqno is above its source's window, or inside it
// and unset.
//
// Eviction must never re-admit a message: fresh keys cost nothing, so
// anyone can push a source out with max messages from new ones. The cache
// therefore keeps a floor, the latest publish time of any source it
// evicted, and refuses a message of a source it does not hold unless it was
// published after the floor. Every message the evicted source sent is at or
// below the floor, so none comes back. The floor stays far behind the
// present (below the router's age window) unless max sources are replaced
// within that window; then it refuses only late first messages of new
// sources, counted as replays, which is the price of a bounded filter.
type seenCache struct {
	max   int
	m     map[pki.Identity]*list.Element
	lru   list.List
	floor uint64 // latest publish time of an evicted source (Unix ms)
}

func newSeenCache(max int) *seenCache {
	return &seenCache{max: max, m: make(map[pki.Identity]*list.Element)}
}

// seenState classifies a message ID.
type seenState int

const (
	seenNew seenState = iota
	seenDup
	seenTooOld // behind its source's window, or its source was evicted after it
)

// check classifies a message with publish time ts (Unix ms).
func (c *seenCache) check(id MsgID, ts uint64) seenState {
	if _, ok := c.m[id.From()]; !ok && ts <= c.floor {
		return seenTooOld
	}
	return c.state(id)
}

// state classifies a message ID whose publish time is not known (IHAVE):
// by its source's window only.
func (c *seenCache) state(id MsgID) seenState {
	e, ok := c.m[id.From()]
	if !ok {
		return seenNew
	}
	w := e.Value.(*srcWindow)
	s := id.Seqno()
	if s > w.highest {
		return seenNew
	}
	d := w.highest - s
	if d >= replayWindowBits {
		return seenTooOld
	}
	if w.bits[d/64]&(1<<(d%64)) != 0 {
		return seenDup
	}
	return seenNew
}

// add records id, published at ts, and reports whether a source was
// evicted for it; the caller checked check(id, ts) == seenNew.
func (c *seenCache) add(id MsgID, ts uint64) (evicted bool) {
	src := id.From()
	s := id.Seqno()
	e, ok := c.m[src]
	if !ok {
		if len(c.m) >= c.max {
			old := c.lru.Back()
			c.lru.Remove(old)
			w := old.Value.(*srcWindow)
			delete(c.m, w.src)
			c.floor = max(c.floor, w.newest)
			evicted = true
		}
		e = c.lru.PushFront(&srcWindow{src: src, highest: s, newest: ts, bits: [replayWindowBits / 64]uint64{1}})
		c.m[src] = e
		return evicted
	}
	c.lru.MoveToFront(e)
	w := e.Value.(*srcWindow)
	w.newest = max(w.newest, ts)
	if s > w.highest {
		shift := s - w.highest
		w.highest = s
		if shift >= replayWindowBits {
			w.bits = [replayWindowBits / 64]uint64{}
		} else {
			shiftBits(&w.bits, uint(shift))
		}
		w.bits[0] |= 1
		return false
	}
	d := w.highest - s
	if d < replayWindowBits {
		w.bits[d/64] |= 1 << (d % 64)
	}
	return false
}

// shiftBits moves every bit n positions towards higher indexes (older).
func shiftBits(b *[replayWindowBits / 64]uint64, n uint) {
	words, bits := int(n/64), n%64
	for i := len(b) - 1; i >= 0; i-- {
		var v uint64
		if j := i - words; j >= 0 {
			v = b[j] << bits
			if bits > 0 && j-1 >= 0 {
				v |= b[j-1] >> (64 - bits)
			}
		}
		b[i] = v
	}
}

// cacheEntry is a message kept for IWANT answers and delivery scoring.
type cacheEntry struct {
	msg       WireMessage
	encoded   []byte    // RPC carrying just this message, shared by all sends
	firstSeen time.Time // for P3 mesh delivery window
	firstFrom pki.Identity
	iwant     map[pki.Identity]int // times sent to a peer on IWANT
}

// msgCache is the GossipSub message cache: HistoryLength windows, the first
// HistoryGossip of which are advertised in IHAVE.
type msgCache struct {
	msgs    map[MsgID]*cacheEntry
	windows [][]MsgID // windows[0] is the newest
	gossip  int
}

func newMsgCache(history, gossip int) *msgCache {
	return &msgCache{msgs: make(map[MsgID]*cacheEntry), windows: make([][]MsgID, history), gossip: gossip}
}

func (c *msgCache) put(e *cacheEntry) {
	id := e.msg.ID()
	if _, ok := c.msgs[id]; ok {
		return
	}
	c.msgs[id] = e
	c.windows[0] = append(c.windows[0], id)
}

func (c *msgCache) get(id MsgID) *cacheEntry { return c.msgs[id] }

// gossipIDs returns the IDs of topic in the gossip windows, newest first.
func (c *msgCache) gossipIDs(topic string, max int) []MsgID {
	var out []MsgID
	for w := 0; w < c.gossip && w < len(c.windows); w++ {
		for _, id := range c.windows[w] {
			if e := c.msgs[id]; e != nil && e.msg.Topic == topic {
				out = append(out, id)
				if len(out) >= max {
					return out
				}
			}
		}
	}
	return out
}

// shift drops the oldest window and opens a new one.
func (c *msgCache) shift() {
	last := c.windows[len(c.windows)-1]
	for _, id := range last {
		delete(c.msgs, id)
	}
	copy(c.windows[1:], c.windows[:len(c.windows)-1])
	c.windows[0] = nil
}

// fifoSet is a set bounded by insertion order: adding beyond max evicts the
// oldest member. It remembers a value per entry (the tick it was added, or
// a time) for expiry.
type fifoSet[K comparable] struct {
	max   int
	m     map[K]uint64
	order []K
	head  int
}

func newFIFOSet[K comparable](max int) *fifoSet[K] {
	return &fifoSet[K]{max: max, m: make(map[K]uint64)}
}

func (s *fifoSet[K]) has(k K) bool { _, ok := s.m[k]; return ok }

// add inserts k with value v and reports whether an older entry was
// evicted, and its value.
func (s *fifoSet[K]) add(k K, v uint64) (evictedValue uint64, evicted bool) {
	if _, ok := s.m[k]; ok {
		return 0, false
	}
	if len(s.m) >= s.max {
		evictedValue, evicted = s.popFront()
	}
	s.m[k] = v
	s.order = append(s.order, k)
	return evictedValue, evicted
}

func (s *fifoSet[K]) popFront() (v uint64, ok bool) {
	for s.head < len(s.order) {
		k := s.order[s.head]
		var zero K
		s.order[s.head] = zero
		s.head++
		if v, ok = s.m[k]; ok {
			delete(s.m, k)
			break
		}
	}
	if s.head > 1024 && s.head*2 > len(s.order) {
		s.order = append(s.order[:0:0], s.order[s.head:]...)
		s.head = 0
	}
	return v, ok
}

// expire removes entries, oldest first, while their value is below min.
func (s *fifoSet[K]) expire(min uint64) {
	for s.head < len(s.order) {
		if v, ok := s.m[s.order[s.head]]; ok && v >= min {
			return
		}
		s.popFront()
	}
}

func (s *fifoSet[K]) len() int { return len(s.m) }
