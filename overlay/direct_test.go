package overlay

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// Packets to and from an idle peer skip the datapath's goroutine
// hand-offs (the device reader sends straight to the connection, the
// receiver writes straight to the device), and a burst that switches
// between the straight path and the queues keeps its order: every packet
// that arrives comes after the ones sent before it, intact.
func TestIdlePacketsSkipHandOffs(t *testing.T) {
	b := newTestNode(t, nil, "")
	a := newTestNode(t, nil, "", b.contact())
	waitFor(t, "connection", 5*time.Second, connected(a, b))
	const pings = 50
	tx0, rx0 := a.dp.Counters.TxDirect.Load(), b.dp.Counters.RxDirect.Load()
	for i := range pings {
		// A quiet peer (datapath's idleGap, 1 ms) is what takes the
		// straight path; a burst (below) goes through the queues.
		time.Sleep(2 * time.Millisecond)
		p := udp6(a.addr, b.addr, bytes.Repeat([]byte{byte(i)}, 100))
		a.dev.Send(p)
		expectPacket(t, b.dev, p)
	}
	// One at a time after a pause, every packet finds the peer's queue
	// empty and the device writer idle (a packet of the node's own in
	// between may not: half is plenty of margin).
	if tx, rx := a.dp.Counters.TxDirect.Load()-tx0, b.dp.Counters.RxDirect.Load()-rx0; tx < pings/2 || rx < pings/2 {
		t.Fatalf("of %d lone packets, %d were sent and %d written straight; want most", pings, tx, rx)
	}

	const burst = 3000
	done := make(chan struct{})
	defer close(done)
	go func() {
		send := func(i int) {
			var seq [1000]byte
			binary.BigEndian.PutUint32(seq[:], uint32(i))
			a.dev.Send(udp6(a.addr, b.addr, seq[:]))
		}
		for i := range burst {
			send(i)
		}
		// The burst's last packets may be lost as any other; lone packets
		// after it (numbered on) tell the reader the burst is over.
		for i := burst; i < burst+500; i++ {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
				send(i)
			}
		}
	}()
	last, got := -1, 0
	for last < burst-1 { // packets may be lost (a queue overflowed), never reordered
		select {
		case pkt := <-b.dev.Got:
			seq := int(binary.BigEndian.Uint32(pkt[48:]))
			if seq <= last {
				t.Fatalf("packet %d arrived after %d: reordered", seq, last)
			}
			if !bytes.Equal(pkt[52:], make([]byte, 996)) {
				t.Fatalf("packet %d damaged", seq)
			}
			last = seq
			got++
		case <-time.After(5 * time.Second):
			t.Fatalf("the burst stopped after packet %d (%d arrived; drops %v at the sender, %v at the receiver)",
				last, got, nonZero(a.Status().Drops), nonZero(b.Status().Drops))
		}
	}
	if got < burst/2 {
		t.Fatalf("only %d of the burst's %d packets arrived (drops %v at the sender, %v at the receiver)",
			got, burst, nonZero(a.Status().Drops), nonZero(b.Status().Drops))
	}
	t.Logf("%d of %d arrived; straight: %d sent, %d written; queue waits %d", got, burst,
		a.dp.Counters.TxDirect.Load(), b.dp.Counters.RxDirect.Load(), a.dp.Counters.TxQueueWaits.Load())
}
