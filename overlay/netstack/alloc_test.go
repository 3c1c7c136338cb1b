package netstack

import (
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// segBatch is 44 MSS-sized segments of one flow: what a peer's GSO
// packet turns into on the wire.
func segBatch() [][]byte {
	pkts := make([][]byte, 44)
	for i := range pkts {
		pkts[i] = seg(1, uint32(i*1208), tcpFlagAck, 1208)
	}
	return pkts
}

// TestHotPathsDoNotAllocate guards the per-packet code of this package:
// segmenting a super-packet and grouping a batch.
func TestHotPathsDoNotAllocate(t *testing.T) {
	big := tcp6Packet(1, 0x18, 12, make([]byte, 40*1208))
	bufs := make([][]byte, batchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 16+1280)
	}
	sizes := make([]int, batchSize)
	if a := testing.AllocsPerRun(100, func() {
		splitTCP6(big, ipv6HeaderLen+32, 1208, bufs, sizes, 16)
	}); a != 0 {
		t.Errorf("splitTCP6: %v allocs", a)
	}
	// Segmenting a super-packet as gVisor's TCP hands it over: headers in
	// one view, the payload spread over others.
	s := &Stack{mtu: 1280}
	hl := ipv6HeaderLen + 32
	buf := buffer.MakeWithData(big[:hl])
	for _, part := range [][]byte{big[hl : hl+5000], big[hl+5000:]} {
		b := buffer.MakeWithData(part)
		buf.Merge(&b)
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buf})
	defer pkt.DecRef()
	pkt.GSOOptions = stack.GSO{Type: stack.GSOTCPv6, NeedsCsum: true, MSS: 1208, L3HdrLen: ipv6HeaderLen}
	if a := testing.AllocsPerRun(100, func() {
		if n, err := s.emit(pkt, bufs, sizes, 16); n != 40 || err != nil {
			t.Fatalf("emit: %d, %v", n, err)
		}
	}); a != 0 {
		t.Errorf("emit: %v allocs", a)
	}
	pkts := segBatch()
	var c coalescer
	c.reset(len(pkts))
	if a := testing.AllocsPerRun(100, func() {
		c.reset(len(pkts))
		for i := range pkts {
			verifyTransportChecksum(pkts[i])
			c.add(pkts, i)
		}
	}); a != 0 {
		t.Errorf("coalescer: %v allocs", a)
	}
	if len(c.groups) != 1 {
		t.Errorf("%d groups, want 1", len(c.groups))
	}
	// Building the coalesced packet takes its views and chunks from
	// gVisor's pools (which the race detector makes leaky).
	if a := testing.AllocsPerRun(100, func() {
		b := c.build(pkts, &c.groups[0])
		b.Release()
	}); a != 0 && !raceEnabled {
		t.Errorf("build: %v allocs", a)
	}
}

func BenchmarkSplitTCP6(b *testing.B) {
	big := tcp6Packet(1, 0x18, 12, make([]byte, 54*1208))
	bufs := make([][]byte, batchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 16+1280)
	}
	sizes := make([]int, batchSize)
	b.SetBytes(int64(len(big)))
	b.ReportAllocs()
	for b.Loop() {
		splitTCP6(big, ipv6HeaderLen+32, 1208, bufs, sizes, 16)
	}
}

// BenchmarkCoalesce checks, groups and builds a batch of 44 segments.
func BenchmarkCoalesce(b *testing.B) {
	pkts := segBatch()
	var c coalescer
	b.SetBytes(int64(44 * len(pkts[0])))
	b.ReportAllocs()
	for b.Loop() {
		c.reset(len(pkts))
		for i := range pkts {
			verifyTransportChecksum(pkts[i])
			c.add(pkts, i)
		}
		for i := range c.groups {
			b := c.build(pkts, &c.groups[i])
			b.Release()
		}
	}
}
