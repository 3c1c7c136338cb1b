//go:build linux

package quicbench

import (
	"context"
	"errors"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"
)

// TestTrySendDatagram pins the contract of the fork's TrySendDatagram
// (the overlay's device reader sends with it, and must never block): it
// queues and sends like SendDatagram while there is room; toward a peer
// that answers nothing (its socket closed: the congestion window fills,
// then quic-go's 32-entry queue) it reports false at once instead of
// waiting, allocating nothing; too large a datagram is a
// DatagramTooLargeError; a closed connection an error.
func TestTrySendDatagram(t *testing.T) {
	srv, cli := newPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := []byte("try")
	if ok, err := cli.conn.TrySendDatagram(msg); !ok || err != nil {
		t.Fatalf("TrySendDatagram on an idle connection: %v, %v", ok, err)
	}
	got, err := srv.conn.ReceiveDatagram(ctx)
	if err != nil || string(got) != "try" {
		t.Fatalf("received %q, %v", got, err)
	}
	var tooLarge *quic.DatagramTooLargeError
	if ok, err := cli.conn.TrySendDatagram(make([]byte, 2000)); ok || !errors.As(err, &tooLarge) {
		t.Fatalf("a 2,000-byte datagram: %v, %v; want a DatagramTooLargeError", ok, err)
	}

	srv.udp.Close() // the peer answers nothing from now on
	big := make([]byte, 1200)
	full := false
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; i < 100000 && !full && time.Now().Before(deadline); i++ {
		ok, err := cli.conn.TrySendDatagram(big)
		if err != nil {
			t.Fatal(err)
		}
		full = !ok
	}
	if !full {
		t.Fatal("TrySendDatagram never found the queue full toward a dead peer")
	}
	// Refused or (while the congestion window lets quic-go send a
	// little more) queued, a call allocates nothing.
	if allocs := testing.AllocsPerRun(100, func() { cli.conn.TrySendDatagram(big) }); allocs != 0 && !raceEnabled {
		t.Fatalf("TrySendDatagram toward a dead peer allocates %.1f per call", allocs)
	}
	cli.conn.CloseWithError(0, "")
	if ok, err := cli.conn.TrySendDatagram(msg); ok || err == nil {
		t.Fatalf("on a closed connection: %v, %v; want an error", ok, err)
	}
}
