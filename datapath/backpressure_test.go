package datapath

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/peers"
)

// bpRig is a read loop (its state, driven batch by batch) with send
// queues whose senders are stand-ins: drain takes packets at a chosen
// pace. It runs inside a synctest bubble, so the time the read loop spends
// in a batch is exactly the time it waited for room.
type bpRig struct {
	t     *testing.T
	e     *Engine
	r     *reader
	stop  chan struct{}
	wg    sync.WaitGroup
	taken map[*peers.Peer]*int
}

func newBPRig(t *testing.T, ps ...*peers.Peer) *bpRig {
	e, _ := newTestEngine(t, func(c *Config) { c.SendQueue = 64 }, ps...)
	g := &bpRig{t: t, e: e, r: newReader(e), stop: make(chan struct{}), taken: map[*peers.Peer]*int{}}
	for _, p := range ps {
		g.r.links[p] = testLink(e, p)
		g.taken[p] = new(int)
	}
	t.Cleanup(func() { close(g.stop); g.wg.Wait() })
	return g
}

// drain stands in for p's sender: woken by the read loop, it takes one
// packet every pace (0: everything at once) until the queue is empty.
// Without a drain, p's queue never empties (a black-holed peer).
func (g *bpRig) drain(p *peers.Peer, pace time.Duration) { g.drainHiccup(p, pace, 0, 0) }

// drainHiccup is drain, whose sender, the first time it is woken after
// after has passed, is off its CPU for pause first (0: never).
func (g *bpRig) drainHiccup(p *peers.Peer, pace, after, pause time.Duration) {
	l, n := g.r.links[p], g.taken[p]
	start := time.Now()
	g.wg.Go(func() {
		var batch [sendBatch]*txBuf
		for {
			select {
			case <-l.wake:
			case <-g.stop:
				return
			}
			if pause > 0 && time.Since(start) > after {
				select {
				case <-time.After(pause):
				case <-g.stop:
					return
				}
				pause = 0
			}
			max := sendBatch
			if pace > 0 {
				max = 1
			}
			for k := l.take(batch[:max]); k > 0; k = l.take(batch[:max]) {
				for _, b := range batch[:k] {
					g.e.putTx(b)
				}
				*n += k
				if pace > 0 {
					select {
					case <-time.After(pace):
					case <-g.stop:
						return
					}
				}
			}
		}
	})
}

// run gives the read loop batches of per packets for each of ps, one batch
// every 10 ms, for d, and returns the time it spent inside the batches:
// its waits for room.
func (g *bpRig) run(d time.Duration, per int, ps ...*peers.Peer) (busy time.Duration) {
	return g.runBatches(d, func(_ int, send func(*peers.Peer)) {
		for range per {
			for _, p := range ps {
				send(p)
			}
		}
	})
}

// runBatches is run with the packets of batch i (from 0) chosen by fill,
// which calls send once per packet.
func (g *bpRig) runBatches(d time.Duration, fill func(i int, send func(*peers.Peer))) (busy time.Duration) {
	pkts := map[*peers.Peer][]byte{}
	send := func(p *peers.Peer) {
		pkt := pkts[p]
		if pkt == nil {
			pkt = udp6(g.e.cfg.Addr, p.Addr, make([]byte, 1000))
			pkts[p] = pkt
		}
		g.r.handle(pkt)
	}
	for i, end := 0, time.Now().Add(d); time.Now().Before(end); i++ {
		t0 := time.Now()
		g.r.now = time.Since(g.r.epoch)
		fill(i, send)
		g.r.flush()
		busy += time.Since(t0)
		time.Sleep(10 * time.Millisecond)
	}
	synctest.Wait() // the drains took what they were woken for
	return busy
}

// A black-holed peer (its queue never drains) costs the read loop one
// bounded wait, once, however long the device keeps sending to it; the
// other peer's packets all flow. Without the stall mark every full-queue
// packet would wait maxWait: 2 s of packets would hold the reader for
// 200 x 16 x 5 ms.
func TestBlackHoledQueueCostsOneWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dead, live := testPeer(1), testPeer(2)
		g := newBPRig(t, dead, live)
		g.drain(live, 0)
		const d, per = 2 * time.Second, 16
		busy := g.run(d, per, live, dead)
		c := &g.e.Counters
		if busy > maxWait {
			t.Fatalf("the read loop waited %v for a dead peer over %v, want at most one wait (%v)", busy, d, maxWait)
		}
		if c.TxQueueWaitTimeouts.Load() != 1 {
			t.Fatalf("%d waits timed out, want 1", c.TxQueueWaitTimeouts.Load())
		}
		sent := int(d / (10 * time.Millisecond) * per)
		if got := *g.taken[live]; got != sent || live.TxDropped.Load() != 0 {
			t.Fatalf("the live peer's sender took %d of %d packets (%d dropped)", got, sent, live.TxDropped.Load())
		}
		if st, dd := c.TxQueueStalled.Load(), dead.TxDropped.Load(); st != uint64(sent-64) || dd != st {
			t.Fatalf("dead peer: %d dropped, %d counted as stalled, want %d", dd, st, sent-64)
		}
	})
}

// A peer that drains, but slower than the device fills its queue, holds
// the read loop for at most its budget while another peer has traffic:
// waitBudget at once and 1/waitShare of the time after. Past it, its full
// queue drops its oldest (counted by reason), and the other peer loses
// nothing.
func TestSlowQueueWaitsWithinBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow, live := testPeer(1), testPeer(2)
		g := newBPRig(t, slow, live)
		g.drain(live, 0)
		g.drain(slow, time.Millisecond) // 1,000 packets/s; the device gives it 3,200
		const d, per = 2 * time.Second, 32
		t0 := time.Now()
		busy := g.run(d, per, live, slow)
		elapsed := time.Since(t0)
		c := &g.e.Counters
		if bound := waitBudget + elapsed/waitShare; busy > bound {
			t.Fatalf("the read loop waited %v for a slow peer in %v, want at most %v", busy, elapsed, bound)
		}
		if busy < elapsed/waitShare/2 {
			t.Fatalf("the read loop waited only %v in %v: the slow peer got no backpressure", busy, elapsed)
		}
		if c.TxQueueOverBudget.Load()+c.TxQueueStalled.Load() != slow.TxDropped.Load() || slow.TxDropped.Load() == 0 {
			t.Fatalf("slow peer dropped %d: %d over budget + %d stalled", slow.TxDropped.Load(), c.TxQueueOverBudget.Load(), c.TxQueueStalled.Load())
		}
		if live.TxDropped.Load() != 0 {
			t.Fatalf("the live peer lost %d packets", live.TxDropped.Load())
		}
		t.Logf("waited %v of %v; slow peer: %d taken, %d dropped (%d over budget, %d stalled); %d waits, %d timed out",
			busy, elapsed, *g.taken[slow], slow.TxDropped.Load(), c.TxQueueOverBudget.Load(), c.TxQueueStalled.Load(),
			c.TxQueueWaits.Load(), c.TxQueueWaitTimeouts.Load())
	})
}

// The same slow peer alone: nobody else waits behind it, so the read loop
// waits for its room as long as it drains (the device's own queue holds
// the rest, and the sender's TCP slows down instead of losing packets):
// nothing is dropped.
func TestLoneSlowQueueGetsBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := testPeer(1)
		g := newBPRig(t, slow)
		g.drain(slow, time.Millisecond)
		const d, per = time.Second, 32
		busy := g.run(d, per, slow)
		if dr := slow.TxDropped.Load(); dr != 0 {
			t.Fatalf("a lone slow peer lost %d packets, want none: the read loop waits for it", dr)
		}
		if w := g.e.Counters.TxQueueWaits.Load(); w == 0 || busy < d/2 {
			t.Fatalf("%d waits, %v waited in %v: no backpressure", w, busy, d)
		}
	})
}

// A black-holed peer that the device keeps sending to does not make a slow
// (bulk) peer's waits charged: once the dead peer's queue is stalled its
// packets are dropped without a wait, so the slow peer gets backpressure
// as if alone and loses nothing past the first batches (before the dead
// queue's one wait timed out). A third peer with traffic that flows still
// makes them charged: the dead one does not hide it.
func TestBlackHoledPeerDoesNotChargeOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow, dead := testPeer(1), testPeer(2)
		g := newBPRig(t, slow, dead)
		g.drain(slow, time.Millisecond) // 1,000 packets/s; the device gives it 3,200
		const d, per = time.Second, 32
		busy := g.run(d, per, slow, dead)
		c := &g.e.Counters
		if dr := slow.TxDropped.Load(); dr > per {
			t.Fatalf("beside a black-holed peer a slow peer lost %d packets (%d over budget), want at most a batch (%d)", dr, c.TxQueueOverBudget.Load(), per)
		}
		if busy < d/2 {
			t.Fatalf("the read loop waited %v in %v: the slow peer got no backpressure", busy, d)
		}
		if c.TxQueueWaitTimeouts.Load() != 1 {
			t.Fatalf("%d waits timed out, want 1 (the dead peer's)", c.TxQueueWaitTimeouts.Load())
		}
	})
	synctest.Test(t, func(t *testing.T) {
		slow, dead, live := testPeer(1), testPeer(2), testPeer(3)
		g := newBPRig(t, slow, dead, live)
		g.drain(slow, time.Millisecond)
		g.drain(live, 0)
		const d, per = time.Second, 32
		t0 := time.Now()
		busy := g.run(d, per, live, slow, dead)
		if bound := maxWait + waitBudget + time.Since(t0)/waitShare; busy > bound {
			t.Fatalf("with a live peer beside, the read loop waited %v for a slow one, want at most %v", busy, bound)
		}
		if live.TxDropped.Load() != 0 {
			t.Fatalf("the live peer lost %d packets", live.TxDropped.Load())
		}
	})
}

// A peer with one packet a second (a ping) makes a bulk peer's waits
// charged only for activeWindow after each: the bulk peer loses a small
// share of what it loses beside a peer with steady traffic (which is what
// the budget is for), instead of being held to its budget all the time.
func TestSparsePeerChargesLittle(t *testing.T) {
	drops := func(every int) uint64 {
		var n uint64
		synctest.Test(t, func(t *testing.T) {
			slow, other := testPeer(1), testPeer(2)
			g := newBPRig(t, slow, other)
			g.drain(slow, time.Millisecond) // 1,000 packets/s; the device gives it 3,200
			g.drain(other, 0)
			g.runBatches(4*time.Second, func(i int, send func(*peers.Peer)) {
				for range 32 {
					send(slow)
				}
				if i%every == 0 {
					send(other)
				}
			})
			n = slow.TxDropped.Load()
		})
		return n
	}
	steady, sparse := drops(1), drops(100) // a packet every 10 ms; every second
	if steady == 0 || sparse*4 > steady {
		t.Fatalf("a bulk peer beside one packet a second lost %d packets, beside steady traffic %d: want under a quarter", sparse, steady)
	}
	t.Logf("the bulk peer lost %d packets beside steady traffic, %d beside one packet a second", steady, sparse)
}

// A peer alone with traffic whose sender is off its CPU for 15 ms once (a
// busy host, a GC) is not a dead peer: each wait that times out drops one
// packet, and the queue is not stalled (which dropped every packet until
// its sender took half a queue). A lone peer that is dead stalls after
// lostWaits+1 timed-out waits, so the read loop waits for it that long
// once, not for every packet.
func TestLoneQueueHiccupDoesNotStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := testPeer(1)
		g := newBPRig(t, p)
		g.drainHiccup(p, 0, 300*time.Millisecond, 15*time.Millisecond)
		g.run(time.Second, 96, p) // 9,600 packets/s: more than a queue per batch
		c := &g.e.Counters
		if st := c.TxQueueStalled.Load(); st != 0 {
			t.Fatalf("a 15 ms hiccup of a lone peer's sender stalled its queue: %d packets dropped as stalled", st)
		}
		if dr := p.TxDropped.Load(); dr > lostWaits {
			t.Fatalf("a 15 ms hiccup cost %d packets, want at most %d (one per timed-out wait)", dr, lostWaits)
		}
		if c.TxQueueWaitTimeouts.Load() == 0 {
			t.Fatal("no wait timed out: the hiccup was not seen")
		}
	})
	synctest.Test(t, func(t *testing.T) {
		dead := testPeer(1)
		g := newBPRig(t, dead)
		busy := g.run(2*time.Second, 16, dead)
		if bound := (lostWaits + 1) * maxWait; busy > bound {
			t.Fatalf("the read loop waited %v for a lone dead peer, want at most %v", busy, bound)
		}
		if g.e.Counters.TxQueueStalled.Load() == 0 {
			t.Fatal("a lone dead peer's queue never stalled")
		}
	})
}
