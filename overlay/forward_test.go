package overlay

import (
	"testing"
	"time"
)

func benchPair(b testing.TB) (a, c *testNode) {
	c = newTestNode(b, nil, "")
	a = newTestNode(b, nil, "", c.contact())
	waitFor(b, "connection", 5*time.Second, connected(a, c))
	return a, c
}

// BenchmarkForward moves 1200-byte packets device -> QUIC -> device
// between two nodes on loopback and reports what arrived. allocs/op counts
// the whole process, quic-go included; the datapath's own per-packet code
// allocates nothing (datapath's TestPerPacketPathDoesNotAllocate).
func BenchmarkForward(b *testing.B) {
	a, c := benchPair(b)
	c.dev.CountOnly.Store(true)
	pkt := udp6(a.addr, c.addr, make([]byte, 1200))
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	start := time.Now()
	for i := 0; i < b.N; i++ {
		a.dev.In <- pkt
	}
	// Wait (bounded) for the tail; datagrams may be lost, so not for all.
	for end := time.Now().Add(2 * time.Second); c.dev.Written.Load() < int64(b.N) && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	got := c.dev.Written.Load()
	b.ReportMetric(float64(got)*float64(len(pkt))*8/el.Seconds()/1e9, "delivered-Gbit/s")
	b.ReportMetric(100*(1-float64(got)/float64(b.N)), "loss-%")
}
