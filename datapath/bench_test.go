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
		if !e.enqueue(l, pkt) {
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
		e.enqueue(l, pkt)
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
