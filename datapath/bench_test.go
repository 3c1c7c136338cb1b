package datapath

import (
	"testing"
)

// The per-packet work of the datapath: deciding where a packet goes,
// queueing it for its peer's sender and taking it out again, and checking
// an inbound datagram in place. None of it may allocate.

func TestPerPacketPathDoesNotAllocate(t *testing.T) {
	p := testPeer(1)
	e, _ := newTestEngine(t, nil, p)
	pkt := udp6(e.cfg.Addr, p.Addr, make([]byte, 1200))
	var cache routeCache
	if allocs := testing.AllocsPerRun(1000, func() {
		if v := e.route(pkt, &cache); v != routeSend || cache.peer != p {
			t.Fatal("not routed")
		}
	}); allocs != 0 {
		t.Fatalf("route allocates %.1f per packet", allocs)
	}
	l := testLink(e, p)
	var batch [sendBatch]*txBuf
	if allocs := testing.AllocsPerRun(1000, func() {
		if !e.enqueue(l, pkt, nil) {
			t.Fatal("refused")
		}
		if k := l.take(batch[:]); k != 1 || batch[0].n != len(pkt) {
			t.Fatalf("took %d", k)
		}
		e.putTx(batch[0])
	}); allocs != 0 {
		t.Fatalf("enqueue and take allocate %.1f per packet", allocs)
	}
	in := udp6(p.Addr, e.cfg.Addr, make([]byte, 1200))
	if allocs := testing.AllocsPerRun(1000, func() {
		if !e.accept(p, in) {
			t.Fatal("rejected")
		}
	}); allocs != 0 {
		t.Fatalf("accept allocates %.1f per packet", allocs)
	}
}

func BenchmarkRoute(b *testing.B) {
	p := testPeer(1)
	e, _ := newTestEngine(b, nil, p)
	pkt := udp6(e.cfg.Addr, p.Addr, make([]byte, 1200))
	var cache routeCache
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		e.route(pkt, &cache)
	}
}

// BenchmarkEnqueue: one packet into a peer's send queue and out again.
func BenchmarkEnqueue(b *testing.B) {
	p := testPeer(1)
	e, _ := newTestEngine(b, nil, p)
	pkt := udp6(e.cfg.Addr, p.Addr, make([]byte, 1200))
	l := testLink(e, p)
	var batch [sendBatch]*txBuf
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		e.enqueue(l, pkt, nil)
		l.take(batch[:])
		e.putTx(batch[0])
	}
}

func BenchmarkAcceptInbound(b *testing.B) {
	p := testPeer(1)
	e, _ := newTestEngine(b, nil, p)
	in := udp6(p.Addr, e.cfg.Addr, make([]byte, 1200))
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		e.accept(p, in)
	}
}

// The read loop's own per-packet work allocates nothing either: routing
// and queueing a packet, and waiting for room in a full queue until its
// sender (here a stand-in that takes whatever it is woken for) makes some.
func TestReadLoopDoesNotAllocate(t *testing.T) {
	p := testPeer(1)
	e, _ := newTestEngine(t, func(c *Config) { c.SendQueue = 1 }, p)
	r := newReader(e)
	l := testLink(e, p)
	r.links[p] = l
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var batch [sendBatch]*txBuf
		for {
			select {
			case <-l.wake:
			case <-stop:
				return
			}
			for k := l.take(batch[:]); k > 0; k = l.take(batch[:]) {
				for _, b := range batch[:k] {
					e.putTx(b)
				}
			}
		}
	}()
	defer func() { close(stop); <-done }()
	pkt := udp6(e.cfg.Addr, p.Addr, make([]byte, 1200))
	r.handle(pkt)
	if allocs := testing.AllocsPerRun(1000, func() {
		r.handle(pkt) // the queue holds one: this waits for the stand-in
		r.flush()
	}); allocs != 0 {
		t.Fatalf("the read loop allocates %.2f per packet", allocs)
	}
	if w := e.Counters.TxQueueWaits.Load(); w == 0 {
		t.Fatal("no packet waited for room")
	}
	if d := p.TxDropped.Load(); d > e.Counters.TxQueueWaitTimeouts.Load()*uint64(e.stallDrain()+1) {
		t.Fatalf("%d dropped after %d timeouts", d, e.Counters.TxQueueWaitTimeouts.Load())
	}
}
