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
	bits    [replayWindowBits / 64]uint64 // bit (highest-s) set: seqno s seen
}

// seenCache is the replay and duplicate filter: a sliding window of seqnos
// per source, for at most max sources, least recently used evicted.
// A message is new if its seqno is above the window or inside it and unset.
type seenCache struct {
	max  int
	m    map[pki.Identity]*list.Element
	lru  list.List
	evic uint64
}

func newSeenCache(max int) *seenCache {
	return &seenCache{max: max, m: make(map[pki.Identity]*list.Element)}
}

// seenState classifies a message ID.
type seenState int

const (
	seenNew seenState = iota
	seenDup
	seenTooOld
)

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

// add records id; the caller checked state(id) == seenNew.
func (c *seenCache) add(id MsgID) {
	src := id.From()
	s := id.Seqno()
	e, ok := c.m[src]
	if !ok {
		if len(c.m) >= c.max {
			old := c.lru.Back()
			c.lru.Remove(old)
			delete(c.m, old.Value.(*srcWindow).src)
			c.evic++
		}
		e = c.lru.PushFront(&srcWindow{src: src, highest: s, bits: [replayWindowBits / 64]uint64{1}})
		c.m[src] = e
		return
	}
	c.lru.MoveToFront(e)
	w := e.Value.(*srcWindow)
	if s > w.highest {
		shift := s - w.highest
		w.highest = s
		if shift >= replayWindowBits {
			w.bits = [replayWindowBits / 64]uint64{}
		} else {
			shiftBits(&w.bits, uint(shift))
		}
		w.bits[0] |= 1
		return
	}
	d := w.highest - s
	if d < replayWindowBits {
		w.bits[d/64] |= 1 << (d % 64)
	}
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
// oldest member. It remembers the tick an entry was added for expiry.
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

// add inserts k and reports whether an older entry was evicted.
func (s *fifoSet[K]) add(k K, tick uint64) (evicted bool) {
	if _, ok := s.m[k]; ok {
		return false
	}
	if len(s.m) >= s.max {
		s.popFront()
		evicted = true
	}
	s.m[k] = tick
	s.order = append(s.order, k)
	return evicted
}

func (s *fifoSet[K]) popFront() {
	for s.head < len(s.order) {
		k := s.order[s.head]
		var zero K
		s.order[s.head] = zero
		s.head++
		if _, ok := s.m[k]; ok {
			delete(s.m, k)
			break
		}
	}
	if s.head > 1024 && s.head*2 > len(s.order) {
		s.order = append(s.order[:0:0], s.order[s.head:]...)
		s.head = 0
	}
}

// expire removes entries added before tick minTick.
func (s *fifoSet[K]) expire(minTick uint64) {
	for s.head < len(s.order) {
		if t, ok := s.m[s.order[s.head]]; ok && t >= minTick {
			return
		}
		s.popFront()
	}
}

func (s *fifoSet[K]) len() int { return len(s.m) }
