package datapath

import (
	"net/netip"
	"slices"
	"testing"
)

// A peer whose connection takes nothing: its queue keeps the newest
// SendQueue packets, in order, drops the older ones and counts them; the
// caller never waits.
func TestSendQueueDropsOldest(t *testing.T) {
	p := testPeer(1)
	e, _ := newTestEngine(t, func(c *Config) { c.SendQueue = 8 }, p)
	l := testLink(e, p)
	for i := range 20 {
		if !e.enqueue(l, udp6(e.cfg.Addr, p.Addr, []byte{byte(i)})) {
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
	e.enqueue(l, udp6(e.cfg.Addr, p.Addr, []byte("late")))
	l.stop(e)
	if e.enqueue(l, udp6(e.cfg.Addr, p.Addr, []byte("after"))) || e.queued.Load() != 0 {
		t.Fatalf("a stopped queue took a packet (%d buffers out)", e.queued.Load())
	}
}

// Every queue together holds at most MaxQueued packets: a dead peer's full
// queue cannot take the buffers the others need, beyond the cap a peer's
// new packet replaces its own oldest, and a peer with nothing queued loses
// the packet (counted).
func TestQueuesTogetherBounded(t *testing.T) {
	a, b := testPeer(1), testPeer(2)
	e, _ := newTestEngine(t, func(c *Config) { c.SendQueue, c.MaxQueued = 8, 10 }, a, b)
	la, lb := testLink(e, a), testLink(e, b)
	for range 8 {
		e.enqueue(la, udp6(e.cfg.Addr, a.Addr, []byte("a")))
	}
	for i := range 5 {
		e.enqueue(lb, udp6(e.cfg.Addr, b.Addr, []byte{byte(i)}))
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
		e.enqueue(lb, udp6(e.cfg.Addr, b.Addr, []byte("b")))
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
	e2.enqueue(la, udp6(e2.cfg.Addr, a.Addr, []byte("a")))
	e2.enqueue(la, udp6(e2.cfg.Addr, a.Addr, []byte("a")))
	e2.enqueue(lb, udp6(e2.cfg.Addr, b.Addr, []byte("b")))
	if e2.Counters.TxQueueFull.Load() != 1 || lb.take(batch[:]) != 0 {
		t.Fatal("a packet beyond the cap was queued")
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
	for i := range 1000 {
		e.enqueue(l, bulk)
		if i%100 == 50 {
			id := byte(len(pings) + 1)
			pings = append(pings, id)
			e.enqueue(l, echo(e.cfg.Addr, p.Addr, id))
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
	if d := e.Counters.TxQueueDropped.Load(); d != uint64(1000+len(pings)-e.cfg.SendQueue) {
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
