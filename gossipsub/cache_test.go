package gossipsub

import (
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

func TestSeenCacheWindow(t *testing.T) {
	c := newSeenCache(2)
	a := pki.Identity{1}
	for _, s := range []uint64{10, 12, 11, 5000, 4100} {
		if st := c.state(MakeMsgID(a, s)); st != seenNew {
			t.Fatalf("seqno %d: state %v, want new", s, st)
		}
		c.add(MakeMsgID(a, s), 100)
		if st := c.state(MakeMsgID(a, s)); st != seenDup {
			t.Fatalf("seqno %d: state %v after add, want dup", s, st)
		}
	}
	if st := c.state(MakeMsgID(a, 12)); st != seenTooOld {
		t.Fatalf("seqno 12 behind a 1024 window of 5000: %v", st)
	}
	if st := c.state(MakeMsgID(a, 4001)); st != seenNew {
		t.Fatalf("4001: %v", st)
	}
	// Shifts by less than a word and across words keep old bits.
	c.add(MakeMsgID(a, 5003), 100)
	c.add(MakeMsgID(a, 5100), 100)
	for _, s := range []uint64{5000, 5003, 5100, 4100} {
		if st := c.state(MakeMsgID(a, s)); st != seenDup {
			t.Fatalf("seqno %d lost after shift: %v", s, st)
		}
	}
	// Bounded sources, least recently used evicted.
	c.add(MakeMsgID(pki.Identity{2}, 1), 300)
	c.add(MakeMsgID(pki.Identity{3}, 1), 200)
	if len(c.m) != 2 || c.state(MakeMsgID(a, 5000)) != seenNew {
		t.Fatalf("source window not evicted: %d sources", len(c.m))
	}
}

// TestSeenCacheEvictionNeverReadmits: once a source is evicted, none of its
// messages is new again, however many fresh sources pushed it out; a new
// message of it, published later, is.
func TestSeenCacheEvictionNeverReadmits(t *testing.T) {
	c := newSeenCache(3)
	a := pki.Identity{1}
	for s := uint64(1); s <= 5; s++ {
		c.add(MakeMsgID(a, s), 1000+s) // newest publish time of a: 1005
	}
	// Fresh sources with older and newer publish times push a out.
	for i, ts := range []uint64{990, 1010, 1003} {
		id := MakeMsgID(pki.Identity{byte(10 + i)}, 1)
		if st := c.check(id, ts); st != seenNew {
			t.Fatalf("fresh source %d at %d: %v", i, ts, st)
		}
		c.add(id, ts)
	}
	if _, held := c.m[a]; held {
		t.Fatal("source not evicted")
	}
	if c.floor != 1005 {
		t.Fatalf("floor %d, want 1005 (the evicted source's newest message)", c.floor)
	}
	for s := uint64(1); s <= 5; s++ {
		if st := c.check(MakeMsgID(a, s), 1000+s); st != seenTooOld {
			t.Fatalf("replay of evicted source's seqno %d: %v, want refused", s, st)
		}
	}
	if st := c.check(MakeMsgID(a, 6), 1006); st != seenNew {
		t.Fatalf("a later message of the evicted source: %v, want new", st)
	}
	// A source still held is judged by its window, not by the floor.
	if st := c.check(MakeMsgID(pki.Identity{12}, 2), 900); st != seenNew {
		t.Fatalf("held source below the floor: %v, want new", st)
	}
}

func TestTimeVerdict(t *testing.T) {
	now := time.UnixMilli(1_000_000_000_000)
	ms := unixMilli(now)
	for _, c := range []struct {
		ts   uint64
		want int
	}{
		{ms, timeOK},
		{ms - 120_000, timeOK},
		{ms - 120_001, tooOld},
		{0, tooOld},
		{ms + 5_000, timeOK},
		{ms + 5_001, inFuture},
		{^uint64(0), inFuture},
	} {
		if got := timeVerdict(c.ts, now, 2*time.Minute, 5*time.Second); got != c.want {
			t.Errorf("publish time now%+d ms: verdict %d, want %d", int64(c.ts-ms), got, c.want)
		}
	}
}

func TestMsgCacheShift(t *testing.T) {
	c := newMsgCache(3, 2)
	put := func(s uint64) { c.put(&cacheEntry{msg: WireMessage{Topic: "t", Seqno: s}}) }
	put(1)
	c.shift()
	put(2)
	c.shift()
	put(3)
	if got := c.gossipIDs("t", 10); len(got) != 2 || got[0].Seqno() != 3 || got[1].Seqno() != 2 {
		t.Fatalf("gossip ids %v", got)
	}
	if c.get(MakeMsgID(pki.Identity{}, 1)) == nil {
		t.Fatal("message 1 gone before history ends")
	}
	c.shift()
	if c.get(MakeMsgID(pki.Identity{}, 1)) != nil {
		t.Fatal("message 1 kept past history")
	}
}

func TestFIFOSet(t *testing.T) {
	s := newFIFOSet[int](3)
	for i := 0; i < 5; i++ {
		v, evicted := s.add(i, uint64(10+i))
		if evicted != (i >= 3) || (evicted && v != uint64(10+i-3)) {
			t.Fatalf("add %d: evicted %v value %d", i, evicted, v)
		}
	}
	if s.len() != 3 || s.has(1) || !s.has(4) {
		t.Fatalf("bounded set: %v", s.m)
	}
	s.expire(14)
	if s.len() != 1 || !s.has(4) {
		t.Fatalf("expire: %v", s.m)
	}
}

func TestQueuesDropOldest(t *testing.T) {
	q := newSendQueue(2, 1<<20)
	for i := 0; i < 3; i++ {
		// Only the first push starts a writer: it runs until pop ends it.
		if dropped, start := q.push(outItem{b: []byte{byte(i)}}, false); dropped != (i == 2) || start != (i == 0) {
			t.Fatalf("push %d dropped=%v start=%v", i, dropped, start)
		}
	}
	q.push(outItem{b: []byte{9}}, true)
	for _, want := range []byte{9, 1, 2} {
		if it, ok := q.pop(); !ok || it.b[0] != want {
			t.Fatalf("pop %v, want %d (urgent first, oldest dropped)", it.b, want)
		}
	}
	if it, ok := q.pop(); ok || it.b != nil {
		t.Fatal("empty queue returned an item, or kept its writer")
	}
	if _, start := q.push(outItem{b: []byte{3}}, false); !start {
		t.Fatal("a push after the writer ended does not start one")
	}
	if _, start := q.push(outItem{b: []byte{4}}, false); start {
		t.Fatal("a second writer started")
	}
	q.close()
	if _, ok := q.pop(); ok {
		t.Fatal("closed queue still open")
	}
	if _, start := q.push(outItem{b: []byte{5}}, false); start {
		t.Fatal("a closed queue starts a writer")
	}

	ib := newInbox(2, 1<<20, 2)
	a, b, c := pki.Identity{1}, pki.Identity{2}, pki.Identity{3}
	ib.put(a, []byte{1})
	ib.put(a, []byte{2})
	if ib.put(a, []byte{3}) != inboxDroppedOldest {
		t.Fatal("full per-peer queue did not drop")
	}
	ib.put(b, []byte{7})
	if ib.put(c, []byte{0}) != inboxRejected {
		t.Fatal("queue for a third peer accepted beyond maxPeers")
	}
	// Round robin: a, b, a.
	var got []byte
	for {
		_, v, ok, _ := ib.take()
		if !ok {
			break
		}
		got = append(got, v[0])
	}
	if string(got) != string([]byte{2, 7, 3}) {
		t.Fatalf("inbox order %v, want [2 7 3]", got)
	}
}

func TestQueuesByteBound(t *testing.T) {
	q := newSendQueue(100, 10)
	q.push(outItem{b: make([]byte, 6)}, false)
	if dropped, _ := q.push(outItem{b: make([]byte, 6)}, false); !dropped {
		t.Fatal("send queue over its byte bound did not drop")
	}
	ib := newInbox(100, 10, 1)
	ib.put(pki.Identity{1}, make([]byte, 6))
	if ib.put(pki.Identity{1}, make([]byte, 6)) != inboxDroppedOldest {
		t.Fatal("inbox over its byte bound did not drop")
	}
	// An item larger than the bound alone is still queued (it fits nothing
	// else), so a legal maximum-size RPC always gets through.
	if q.push(outItem{b: make([]byte, 20)}, false); q.bytes != 20 {
		t.Fatalf("queued bytes %d", q.bytes)
	}
}

func TestSendDropOldest(t *testing.T) {
	ch := make(chan int, 2)
	for i, want := range []struct {
		sent    bool
		dropped int
	}{{true, 0}, {true, 0}, {true, 1}, {true, 1}} {
		sent, dropped := sendDropOldest(ch, i)
		if sent != want.sent || dropped != want.dropped {
			t.Fatalf("send %d: sent %v dropped %d, want %v %d", i, sent, dropped, want.sent, want.dropped)
		}
	}
	if a, b := <-ch, <-ch; a != 2 || b != 3 {
		t.Fatalf("kept %d %d, want the newest 2 3", a, b)
	}
}

// A peer's send queue keeps its array across drains (a heartbeat's RPCs
// to a peer allocate nothing once it has held them), stays within its
// bound when it never quite drains, and gives a burst's array back once
// empty.
func TestSendQueueKeepsItsArray(t *testing.T) {
	q := newSendQueue(256, 1<<20)
	item := outItem{b: []byte{1}}
	cycle := func() {
		q.push(item, false)
		q.push(item, false)
		q.push(item, true)
		for {
			if _, ok := q.pop(); !ok {
				break
			}
		}
	}
	cycle()
	if a := testing.AllocsPerRun(100, cycle); a != 0 {
		t.Errorf("a fill and drain of 3 RPCs allocates %.1f times, want 0", a)
	}

	// Never quite drained: one in, one out, with 10 left behind. The
	// array slides down instead of growing.
	for range 10 {
		q.push(item, false)
	}
	for i := range 10000 {
		q.push(outItem{b: []byte{byte(i)}}, false)
		if it, ok := q.pop(); !ok || it.b == nil {
			t.Fatalf("pop %d: %v %v", i, it.b, ok)
		}
	}
	if n, c := q.normal.len(), cap(q.normal.items); n != 10 || c > 64 {
		t.Errorf("10 queued in an array of %d (len %d) after 10,000 pushes and pops, want at most 64", c, n)
	}
	for {
		if _, ok := q.pop(); !ok {
			break
		}
	}

	// A burst of 200 and a drain: the array goes.
	for range 200 {
		q.push(item, false)
	}
	for {
		if _, ok := q.pop(); !ok {
			break
		}
	}
	if c := cap(q.normal.items); c > keepItems {
		t.Errorf("an emptied queue holds an array of %d items after a burst, want at most %d", c, keepItems)
	}
}
