package overlay

import (
	"testing"
	"time"
)

// The per-packet work of our own code: deciding where a packet goes, and
// checking an inbound datagram and queueing it for the device. Neither may
// allocate.

func benchPair(b testing.TB) (a, c *testNode) {
	c = newTestNode(b, nil, "")
	a = newTestNode(b, nil, "", c.contact())
	waitFor(b, "connection", 5*time.Second, connected(a, c))
	return a, c
}

func TestPerPacketPathDoesNotAllocate(t *testing.T) {
	a, c := benchPair(t)
	pkt := udp6(a.addr, c.addr, make([]byte, 1200))
	var cache routeCache
	if allocs := testing.AllocsPerRun(1000, func() {
		if _, v := a.route(pkt, &cache); v != routeSend {
			t.Fatal("not routed")
		}
	}); allocs != 0 {
		t.Fatalf("route allocates %.1f per packet", allocs)
	}
	in := udp6(c.addr, a.addr, make([]byte, 1200))
	p := a.peer(c.id)
	if allocs := testing.AllocsPerRun(1000, func() {
		b := a.acceptInbound(p, in)
		if b == nil {
			t.Fatal("rejected")
		}
		a.bufPool.Put(b)
	}); allocs != 0 {
		t.Fatalf("acceptInbound allocates %.1f per packet", allocs)
	}
}

func BenchmarkRoute(b *testing.B) {
	a, c := benchPair(b)
	pkt := udp6(a.addr, c.addr, make([]byte, 1200))
	var cache routeCache
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		a.route(pkt, &cache)
	}
}

func BenchmarkAcceptInbound(b *testing.B) {
	a, c := benchPair(b)
	in := udp6(c.addr, a.addr, make([]byte, 1200))
	p := a.peer(c.id)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		a.bufPool.Put(a.acceptInbound(p, in))
	}
}

// BenchmarkForward moves 1200-byte packets device -> QUIC -> device
// between two nodes on loopback and reports what arrived. allocs/op counts
// the whole process, quic-go included: its SendDatagram copies the payload
// into a new frame and its receive path copies each datagram; the overlay's
// own per-packet code allocates nothing (TestPerPacketPathDoesNotAllocate).
func BenchmarkForward(b *testing.B) {
	a, c := benchPair(b)
	c.dev.countOnly = true
	pkt := udp6(a.addr, c.addr, make([]byte, 1200))
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	start := time.Now()
	for i := 0; i < b.N; i++ {
		a.dev.in <- pkt
	}
	// Wait (bounded) for the tail; datagrams may be lost, so not for all.
	for end := time.Now().Add(2 * time.Second); c.dev.written.Load() < int64(b.N) && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	got := c.dev.written.Load()
	b.ReportMetric(float64(got)*float64(len(pkt))*8/el.Seconds()/1e9, "delivered-Gbit/s")
	b.ReportMetric(100*(1-float64(got)/float64(b.N)), "loss-%")
}
