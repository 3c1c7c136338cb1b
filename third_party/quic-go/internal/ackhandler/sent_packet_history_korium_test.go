package ackhandler

// korium-tun: tests of ours for reserve (upstream's tests are not part of
// our copy).

import (
	"runtime"
	"testing"

	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
)

// TestSentPacketHistoryCompacts sends packets (with skipped packet
// numbers) while acknowledging the oldest, as a connection in steady state
// does, and checks that the history keeps every packet at its packet
// number, that its array stops growing, and that it stops allocating.
func TestSentPacketHistoryCompacts(t *testing.T) {
	h := newSentPacketHistory()
	const inFlight = 300
	next := protocol.PacketNumber(0)
	var sent []protocol.PacketNumber // in flight, oldest first
	step := func() {
		if next%97 == 50 {
			h.SkippedPacket(next)
			next++
		}
		h.SentPacket(next, &packet{Frames: []Frame{{Frame: nil}}, Length: 1})
		sent = append(sent, next)
		next++
		if len(sent) > inFlight {
			if err := h.Remove(sent[0]); err != nil {
				t.Fatal(err)
			}
			sent = sent[1:]
		}
	}
	check := func() {
		i := 0
		for pn, p := range h.Packets() {
			if p == nil || i >= len(sent) || pn != sent[i] {
				t.Fatalf("history has packet %d at position %d, want %v", pn, i, sent[i])
			}
			i++
		}
		if i != len(sent) {
			t.Fatalf("history has %d packets, want %d", i, len(sent))
		}
	}
	for range 5000 {
		step()
	}
	check()
	if c := cap(h.base); c > 4*inFlight {
		t.Fatalf("array of %d for %d packets in flight", c, inFlight)
	}
	// copy sent's own backing array to a fresh one, so that the allocation
	// count is the history's alone
	sent = append(make([]protocol.PacketNumber, 0, 100000), sent...)
	p := &packet{Frames: []Frame{{Frame: nil}}, Length: 1}
	// testing.AllocsPerRun rounds down to whole allocations per run: count.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 20000 {
		if next%97 == 50 {
			h.SkippedPacket(next)
			next++
		}
		h.SentPacket(next, p)
		sent = append(sent, next)
		next++
		if err := h.Remove(sent[0]); err != nil {
			t.Fatal(err)
		}
		sent = sent[1:]
	}
	runtime.ReadMemStats(&after)
	if n := after.Mallocs - before.Mallocs; n != 0 {
		t.Fatalf("%d allocations for 20000 packets sent", n)
	}
	// the shared packet p is in the history many times now: only count them
	for i := 0; i < len(sent); i++ {
		if _, ok := h.getIndex(sent[i]); !ok {
			t.Fatalf("packet %d missing", sent[i])
		}
	}
}
