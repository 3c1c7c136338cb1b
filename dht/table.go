package dht

import (
	"net/netip"
	"slices"
	"time"
)

// The routing table. Not safe for concurrent use: the DHT's mutex guards it
// and every method below is called with that mutex held. The table never
// does I/O; when it wants the oldest contact of a full bucket pinged it says
// so and the DHT's verify worker does it.

type entry struct {
	c        Contact
	id       NodeID
	div      netip.Prefix // diversity prefix of c.addr()
	added    time.Time
	lastSeen time.Time
	fails    int
}

type bucket struct {
	entries      []*entry // least recently seen first
	replacements []*entry // newest last, at most MaxK
	pinging      bool     // the oldest entry is being pinged
	lastLookup   time.Time
}

type table struct {
	self         NodeID
	k            int
	maxPerPrefix int
	maxFailures  int
	buckets      [NumBuckets]bucket
	size         int
	limiter      *insertLimiter
	removed      int // contacts removed as dead since the last adaptation
}

func newTable(self NodeID, cfg *Config) *table {
	return &table{
		self:         self,
		k:            cfg.K,
		maxPerPrefix: cfg.MaxPerPrefixPerBucket,
		maxFailures:  cfg.MaxFailures,
		limiter:      newInsertLimiter(cfg.InsertBurst, cfg.InsertRefill),
	}
}

func (t *table) bucketIndex(id NodeID) int {
	return min(CommonPrefixLen(t.self, id), NumBuckets-1)
}

func (t *table) find(id NodeID) (*bucket, int) {
	b := &t.buckets[t.bucketIndex(id)]
	for i, e := range b.entries {
		if e.id == id {
			return b, i
		}
	}
	return b, -1
}

// wants reports whether a new contact with this ID, heard at a, could
// enter the table now: it is absent, its bucket has room, and a's prefix
// is below the bucket's diversity cap (so a crowd from one prefix does not
// even cost us a check ping each; capped reports that case).
func (t *table) wants(id NodeID, a netip.AddrPort) (ok, capped bool) {
	b, i := t.find(id)
	if i >= 0 || len(b.entries) >= t.k || id == t.self {
		return false, false
	}
	div, _ := diversityPrefix(a.Addr())
	if t.prefixFull(b, div) {
		return false, true
	}
	return true, false
}

// prefixFull reports whether b holds maxPerPrefix entries of div.
func (t *table) prefixFull(b *bucket, div netip.Prefix) bool {
	if !div.IsValid() || t.maxPerPrefix <= 0 {
		return false
	}
	n := 0
	for _, e := range b.entries {
		if e.div == div {
			n++
		}
	}
	return n >= t.maxPerPrefix
}

// touch records that id answered at an address we do not keep (see
// DHT.request): a present entry counts as seen, its address unchanged.
func (t *table) touch(id NodeID, now time.Time) {
	if b, i := t.find(id); i >= 0 {
		b.entries[i].lastSeen, b.entries[i].fails = now, 0
	}
}

func (t *table) contains(id NodeID) bool {
	_, i := t.find(id)
	return i >= 0
}

// insertResult says what seen did with a contact.
type insertResult int

const (
	insUpdated     insertResult = iota // already present, refreshed
	insAdded                           // new entry
	insReplacement                     // bucket full, kept as a replacement
	insSelf                            // our own ID
	insPrefixCap                       // too many of its /24 or /48 in the bucket
	insRateLimited                     // too many insertions from its prefix
)

// seen records that c answered us at now, at c.Addrs[0] (the address the
// transport verified, which the diversity cap and the insertion limit are
// keyed by and which we serve to others). The caller has checked its proof
// of work. If the bucket is full and nobody is pinging its oldest entry,
// ping is that entry's contact and the caller must ping it and report the
// outcome with pingResult.
func (t *table) seen(c Contact, id NodeID, now time.Time) (res insertResult, ping *Contact) {
	if id == t.self {
		return insSelf, nil
	}
	b, i := t.find(id)
	if i >= 0 {
		e := b.entries[i]
		e.c, e.lastSeen, e.fails = c, now, 0
		e.div, _ = diversityPrefix(c.addr().Addr()) // its verified path may have moved
		copy(b.entries[i:], b.entries[i+1:])
		b.entries[len(b.entries)-1] = e
		return insUpdated, nil
	}
	div, _ := diversityPrefix(c.addr().Addr())
	if t.prefixFull(b, div) {
		return insPrefixCap, nil
	}
	for j, r := range b.replacements {
		if r.id == id {
			r.c, r.lastSeen = c, now
			b.replacements = append(slices.Delete(b.replacements, j, j+1), r)
			return insReplacement, t.maybePing(b, now)
		}
	}
	if !t.limiter.allow(div, now) {
		return insRateLimited, nil
	}
	e := &entry{c: c, id: id, div: div, added: now, lastSeen: now}
	if len(b.entries) < t.k {
		b.entries = append(b.entries, e)
		t.size++
		return insAdded, nil
	}
	if len(b.replacements) >= MaxK {
		b.replacements = slices.Delete(b.replacements, 0, 1)
	}
	b.replacements = append(b.replacements, e)
	return insReplacement, t.maybePing(b, now)
}

// pingAfter is how long an entry must have been silent before a newcomer
// makes us ping it: recently seen entries are kept without asking, which
// also favours long-lived contacts as Kademlia intends.
const pingAfter = time.Minute

func (t *table) maybePing(b *bucket, now time.Time) *Contact {
	if b.pinging || len(b.entries) == 0 || now.Sub(b.entries[0].lastSeen) < pingAfter {
		return nil
	}
	b.pinging = true
	c := b.entries[0].c
	return &c
}

// pingResult reports the outcome of the ping seen asked for.
func (t *table) pingResult(id NodeID, ok bool, now time.Time) {
	b, i := t.find(id)
	b.pinging = false
	if i < 0 {
		return
	}
	if ok {
		e := b.entries[i]
		e.lastSeen, e.fails = now, 0
		copy(b.entries[i:], b.entries[i+1:])
		b.entries[len(b.entries)-1] = e
		return
	}
	t.removeAt(b, i)
}

// failed records a request to id that got no answer; it returns true if the
// contact was removed.
func (t *table) failed(id NodeID) bool {
	b, i := t.find(id)
	if i < 0 {
		return false
	}
	b.entries[i].fails++
	if b.entries[i].fails < t.maxFailures {
		return false
	}
	t.removeAt(b, i)
	return true
}

// removeAt drops a dead entry and promotes the newest replacement.
func (t *table) removeAt(b *bucket, i int) {
	b.entries = slices.Delete(b.entries, i, i+1)
	t.size--
	t.removed++
	if n := len(b.replacements); n > 0 && len(b.entries) < t.k {
		b.entries = append(b.entries, b.replacements[n-1])
		b.replacements = b.replacements[:n-1]
		t.size++
	}
}

// closest returns up to n contacts closest to target, nearest first. It
// walks buckets in distance order instead of sorting the whole table: with
// i = CommonPrefixLen(self, target), entries of bucket i are nearest, then
// those of every bucket deeper than i (they all differ from target first at
// bit i), then buckets i-1, i-2, ..., 0, each farther than the one before.
func (t *table) closest(target NodeID, n int, exclude NodeID) []*entry {
	out := make([]*entry, 0, n+MaxK)
	// appendSorted appends the entries of buckets lo..hi, sorted among
	// themselves; each call's entries are all farther than the previous'.
	appendSorted := func(lo, hi int) {
		from := len(out)
		for j := lo; j <= hi; j++ {
			for _, e := range t.buckets[j].entries {
				if e.id != exclude {
					out = append(out, e)
				}
			}
		}
		slices.SortFunc(out[from:], func(a, b *entry) int { return CompareDistance(target, a.id, b.id) })
	}
	i := t.bucketIndex(target)
	appendSorted(i, i)
	if len(out) < n {
		appendSorted(i+1, NumBuckets-1)
	}
	for j := i - 1; j >= 0 && len(out) < n; j-- {
		appendSorted(j, j)
	}
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// insertLimiter is a token bucket per diversity prefix, bounded in size.
type insertLimiter struct {
	burst  float64
	refill time.Duration
	m      map[netip.Prefix]*tokens
}

type tokens struct {
	n    float64
	last time.Time
}

const maxLimiterPrefixes = 4096

func newInsertLimiter(burst int, refill time.Duration) *insertLimiter {
	return &insertLimiter{burst: float64(burst), refill: refill, m: make(map[netip.Prefix]*tokens)}
}

func (l *insertLimiter) allow(p netip.Prefix, now time.Time) bool {
	if l.burst <= 0 {
		return true
	}
	tk, ok := l.m[p]
	if !ok {
		if len(l.m) >= maxLimiterPrefixes {
			l.prune(now)
		}
		tk = &tokens{n: l.burst, last: now}
		l.m[p] = tk
	}
	if l.refill > 0 {
		tk.n = min(l.burst, tk.n+float64(now.Sub(tk.last))/float64(l.refill))
	}
	tk.last = now
	if tk.n < 1 {
		return false
	}
	tk.n--
	return true
}

// prune forgets prefixes whose bucket has refilled (they behave like new
// ones); if none has, it forgets an arbitrary half, so the map stays bounded.
func (l *insertLimiter) prune(now time.Time) {
	for p, tk := range l.m {
		if l.refill > 0 && tk.n+float64(now.Sub(tk.last))/float64(l.refill) >= l.burst {
			delete(l.m, p)
		}
	}
	for p := range l.m {
		if len(l.m) < maxLimiterPrefixes/2 {
			break
		}
		delete(l.m, p)
	}
}
