package datapath

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/korium/korium-tun/peers"
)

// A peer whose connection takes nothing: its queue keeps the newest
// SendQueue packets, in order, drops the older ones and counts them; the
// caller never waits.
func TestSendQueueDropsOldest(t *testing.T) {
	p := testPeer(1)
	e, _ := newTestEngine(t, func(c *Config) { c.SendQueue = 8 }, p)
	l := testLink(e, p)
	for i := range 20 {
		if !e.enqueue(l, udp6(e.cfg.Addr, p.Addr, []byte{byte(i)}), nil) {
			t.Fatal("refused")
		}
	}
	var batch [sendBatch]*txBuf
	k := l.take(batch[:])
	if k != 8 {
		t.Fatalf("%d queued, want 8", k)
	}
	for i, b := range batch[:k] {
		if got := b.b[b.n-1]; got != byte(12+i) {
			t.Fatalf("packet %d is #%d, want #%d: the newest stay, in order", i, got, 12+i)
		}
		e.putTx(b)
	}
	if d, pd := e.Counters.TxQueueDropped.Load(), p.TxDropped.Load(); d != 12 || pd != 12 {
		t.Fatalf("dropped %d (peer %d), want 12", d, pd)
	}
	if q := e.queued.Load(); q != 0 {
		t.Fatalf("%d buffers unaccounted for", q)
	}
	// A stopped queue refuses packets and keeps no buffer.
	e.enqueue(l, udp6(e.cfg.Addr, p.Addr, []byte("late")), nil)
	l.stop(e)
	if e.enqueue(l, udp6(e.cfg.Addr, p.Addr, []byte("after")), nil) || e.queued.Load() != 0 {
		t.Fatalf("a stopped queue took a packet (%d buffers out)", e.queued.Load())
	}
}

// Every queue together holds at most MaxQueued packets: without a reclaim
// (TestFullQueuesGiveWay has the read loop's), beyond the cap a peer's new
// packet replaces its own oldest, and a peer with nothing queued loses the
// packet (counted).
func TestQueuesTogetherBounded(t *testing.T) {
	a, b := testPeer(1), testPeer(2)
	e, _ := newTestEngine(t, func(c *Config) { c.SendQueue, c.MaxQueued = 8, 10 }, a, b)
	la, lb := testLink(e, a), testLink(e, b)
	for range 8 {
		e.enqueue(la, udp6(e.cfg.Addr, a.Addr, []byte("a")), nil)
	}
	for i := range 5 {
		e.enqueue(lb, udp6(e.cfg.Addr, b.Addr, []byte{byte(i)}), nil)
	}
	if q := e.queued.Load(); q != 10 {
		t.Fatalf("%d buffers out, want the cap 10", q)
	}
	var batch [sendBatch]*txBuf
	k := lb.take(batch[:])
	if k != 2 || batch[0].b[batch[0].n-1] != 3 || batch[1].b[batch[1].n-1] != 4 {
		t.Fatalf("b's queue holds %d packets, want its newest two (#3, #4)", k)
	}
	for _, x := range batch[:k] {
		e.putTx(x)
	}
	// b now has nothing queued, a holds 8 of 10, b gets two buffers back.
	for range 3 {
		e.enqueue(lb, udp6(e.cfg.Addr, b.Addr, []byte("b")), nil)
	}
	if full := e.Counters.TxQueueFull.Load(); full != 0 {
		t.Fatalf("queue full %d times with room left", full)
	}
	lb.take(batch[:])
	for _, x := range batch[:2] {
		e.putTx(x)
	}
	la.stop(e)
	if q := e.queued.Load(); q != 0 {
		t.Fatalf("%d buffers unaccounted for", q)
	}
	// At the cap with nothing of its own queued, a packet is dropped.
	e2, _ := newTestEngine(t, func(c *Config) { c.SendQueue, c.MaxQueued = 8, 2 }, a, b)
	la, lb = testLink(e2, a), testLink(e2, b)
	e2.enqueue(la, udp6(e2.cfg.Addr, a.Addr, []byte("a")), nil)
	e2.enqueue(la, udp6(e2.cfg.Addr, a.Addr, []byte("a")), nil)
	e2.enqueue(lb, udp6(e2.cfg.Addr, b.Addr, []byte("b")), nil)
	if e2.Counters.TxQueueFull.Load() != 1 || lb.take(batch[:]) != 0 {
		t.Fatal("a packet beyond the cap was queued")
	}
}

// The queues of dead peers (their senders take nothing) fill every buffer
// (MaxQueued); a healthy peer with nothing queued still gets its packets
// through: each takes the buffer of the oldest packet of the longest queue,
// the queues even out, every drop is counted, and no buffer goes missing.
// Before the read loop reclaimed buffers, the healthy peer's packets were
// all dropped (tx_queue_full) for as long as the dead peers' connections
// lasted.
func TestFullQueuesGiveWay(t *testing.T) {
	const dead, perDead = 8, 16
	var ps []*peers.Peer
	for i := range dead + 1 {
		ps = append(ps, testPeer(byte(i+1)))
	}
	e, _ := newTestEngine(t, func(c *Config) { c.SendQueue, c.MaxQueued = perDead, dead*perDead }, ps...)
	r := &reader{e: e, links: make(map[*peers.Peer]*link)}
	for _, p := range ps {
		r.links[p] = testLink(e, p)
	}
	for _, p := range ps[:dead] {
		for i := range perDead + 4 { // 4 more than fit: each replaces the queue's own oldest
			e.enqueue(r.links[p], udp6(e.cfg.Addr, p.Addr, []byte{byte(i)}), r.reclaim)
		}
	}
	if q := e.queued.Load(); q != dead*perDead {
		t.Fatalf("%d buffers out, want the cap %d", q, dead*perDead)
	}
	healthy := ps[dead]
	lh := r.links[healthy]
	const sent = 40
	for i := range sent {
		r.flush() // a batch of the device's packets ends: one scan per batch
		if !e.enqueue(lh, udp6(e.cfg.Addr, healthy.Addr, []byte{byte(i)}), r.reclaim) {
			t.Fatal("refused")
		}
	}
	if full := e.Counters.TxQueueFull.Load(); full != 0 {
		t.Fatalf("%d of the healthy peer's packets dropped for want of a buffer", full)
	}
	if got, fair := lh.len(), dead*perDead/(dead+1); got < fair-1 || got > fair+1 {
		t.Fatalf("the healthy peer's queue holds %d packets, want its share of the buffers (%d)", got, fair)
	}
	// The queues even out: none holds more than one packet over another.
	lo, hi := perDead, 0
	for _, l := range r.links {
		lo, hi = min(lo, l.len()), max(hi, l.len())
	}
	if hi-lo > 1 {
		t.Fatalf("queues hold %d to %d packets: they did not even out", lo, hi)
	}
	if q := e.queued.Load(); q != dead*perDead {
		t.Fatalf("%d buffers out, want %d", q, dead*perDead)
	}
	var drops uint64
	for _, p := range ps[:dead] {
		drops += p.TxDropped.Load()
	}
	// Each dead queue lost its 4 oldest, then a packet for every buffer
	// the healthy peer holds; the healthy one its own oldest beyond that.
	if want := uint64(dead*4 + lh.len()); drops != want {
		t.Fatalf("dead peers' drops %d, want %d", drops, want)
	}
	if d, hd := e.Counters.TxQueueDropped.Load(), healthy.TxDropped.Load(); d != drops+hd || hd != uint64(sent-lh.len()) {
		t.Fatalf("engine counted %d drops, the healthy peer %d: want %d and %d", d, hd, drops+uint64(sent-lh.len()), sent-lh.len())
	}
	// Oldest first: each dead queue kept its newest packets, in order.
	var batch [sendBatch]*txBuf
	for _, p := range ps[:dead] {
		l := r.links[p]
		k := l.take(batch[:])
		for i, b := range batch[:k] {
			if want := byte(perDead + 4 - k + i); b.b[b.n-1] != want {
				t.Fatalf("dead queue's packet %d is #%d, want #%d", i, b.b[b.n-1], want)
			}
			e.putTx(b)
		}
	}
	for k := lh.take(batch[:]); k > 0; k = lh.take(batch[:]) {
		for _, b := range batch[:k] {
			e.putTx(b)
		}
	}
	if q := e.queued.Load(); q != 0 {
		t.Fatalf("%d buffers unaccounted for", q)
	}
	// Reclaiming allocates nothing.
	for _, p := range ps {
		for range perDead {
			e.enqueue(r.links[p], udp6(e.cfg.Addr, p.Addr, []byte("x")), r.reclaim)
		}
	}
	pkt := udp6(e.cfg.Addr, healthy.Addr, []byte("y"))
	if allocs := testing.AllocsPerRun(100, func() {
		r.flush()
		e.enqueue(lh, pkt, r.reclaim)
		if k := lh.take(batch[:1]); k == 1 {
			e.putTx(batch[0])
		}
	}); allocs != 0 {
		t.Fatalf("reclaim allocates %.1f per packet", allocs)
	}
}

// echo is an ICMPv6 echo request from src to dst with identifier 7 and
// sequence number seq (one ping process).
func echo(src, dst netip.Addr, seq byte) []byte {
	p := udp6(src, dst, make([]byte, 16))
	p[6], p[40], p[41], p[44], p[45], p[47] = 58, 128, 0, 0, 7, seq
	return p
}

// A bulk flow that outruns its peer's connection loses its own packets:
// pings to the same peer in between all stay queued, and each is sent
// after at most one packet of every other flow, however long the bulk
// flow's backlog.
func TestFlowsKeptApart(t *testing.T) {
	p := testPeer(1)
	e, _ := newTestEngine(t, nil, p)
	l := testLink(e, p)
	bulk := udp6(e.cfg.Addr, p.Addr, make([]byte, 1200))
	var pings []byte
	for i := range 3000 {
		e.enqueue(l, bulk, nil)
		if i%300 == 150 {
			id := byte(len(pings) + 1)
			pings = append(pings, id)
			e.enqueue(l, echo(e.cfg.Addr, p.Addr, id), nil)
		}
	}
	if flowOf(bulk) == flowOf(echo(e.cfg.Addr, p.Addr, 1)) {
		t.Fatal("the hash puts the bulk flow and the pings together: pick other ports for this test")
	}
	var batch [sendBatch]*txBuf
	var got []byte
	first := -1
	taken := 0
	for k := l.take(batch[:]); k > 0; k = l.take(batch[:]) {
		for _, b := range batch[:k] {
			if b.b[6] == 58 {
				got = append(got, b.b[47])
				if first < 0 {
					first = taken
				}
			}
			taken++
			e.putTx(b)
		}
	}
	if !slices.Equal(got, pings) {
		t.Fatalf("pings sent %v, want all of %v in order", got, pings)
	}
	if first >= numFlows {
		t.Fatalf("the first ping went out after %d packets, want fewer than %d", first, numFlows)
	}
	if taken != e.cfg.SendQueue {
		t.Fatalf("%d queued, want the queue full (%d)", taken, e.cfg.SendQueue)
	}
	if d := e.Counters.TxQueueDropped.Load(); d != uint64(3000+len(pings)-e.cfg.SendQueue) {
		t.Fatalf("dropped %d", d)
	}
}

func TestFlowOf(t *testing.T) {
	a, b := netip.MustParseAddr("fd00:c0f1::1"), netip.MustParseAddr("fd00:c0f1::2")
	u := udp6(a, b, []byte("x"))
	if flowOf(u) != flowOf(udp6(a, b, []byte("a longer payload"))) {
		t.Fatal("one UDP flow in two queues")
	}
	// 1,024 source ports spread over every flow, none with more than
	// three times its share.
	per := make([]int, numFlows)
	for port := range 1024 {
		v := slices.Clone(u)
		v[40], v[41] = byte(port>>8), byte(port)
		per[flowOf(v)]++
	}
	if slices.Contains(per, 0) || slices.Max(per) > 3*1024/numFlows {
		t.Fatalf("1,024 source ports over %d flows: %v", numFlows, per)
	}
	if flowOf(echo(a, b, 1)) != flowOf(echo(a, b, 2)) || flowOf([]byte{0x60}) != 0 {
		t.Fatal("flowOf is not a function of the packet")
	}
}
