//go:build linux

package quicbench

import (
	"context"
	"errors"
	"io"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"
)

// maxAllocsPerDatagram is what the steady state may allocate, summed over
// both ends. What is left is periodic, not per datagram: a key update
// every 100,000 packets (new AEADs), a new connection ID every 10,000, and
// the pools refilling after a garbage collection. An allocation per
// datagram, per packet, per GSO batch (about 10 datagrams) or per ACK
// (2 to 20 packets) is far above it.
const maxAllocsPerDatagram = 0.01

// TestDatagramPathDoesNotAllocate moves datagrams between two connections
// in this process over loopback UDP, one way and both ways, and fails if
// the steady state allocates per datagram on either path (send:
// SendDatagram, packing, sealing, GSO write, ACK processing; receive:
// recvmmsg, opening, frame parsing, the datagram queue, ReceiveDatagrams,
// sending ACKs). Every datagram is checked byte for byte. Garbage
// collection is off while measuring, so that pools cannot be emptied by it:
// what is counted is what the code allocates.
func TestDatagramPathDoesNotAllocate(t *testing.T) {
	for _, both := range []bool{false, true} {
		name := map[bool]string{false: "one way", true: "both ways"}[both]
		t.Run(name, func(t *testing.T) {
			srv, cli := newPair(t)
			rs := receiveWith(srv.conn, false)
			rc := receiveWith(cli.conn, false)
			var seq uint64
			run := func(n int) (got uint64) {
				got0, gotc0 := rs.got.Load(), rc.got.Load()
				var wg sync.WaitGroup
				var errc error
				if both {
					wg.Go(func() { errc = send(srv.conn, seq, n) })
				}
				if err := send(cli.conn, seq, n); err != nil {
					t.Fatal(err)
				}
				wg.Wait()
				if errc != nil {
					t.Fatal(errc)
				}
				seq += uint64(n)
				got = rs.waitFor(got0+uint64(n), quiet) - got0
				if both {
					got += rc.waitFor(gotc0+uint64(n), quiet) - gotc0
				}
				return got
			}
			run(warmup)
			defer debug.SetGCPercent(debug.SetGCPercent(-1))
			// The best of a few windows: a pool may still grow to a new
			// peak in one (the receive queue holds up to 1024 datagrams, a
			// connection up to 256 unprocessed packets), and on a loaded
			// machine the runtime allocates now and then for itself, but an
			// allocation per datagram, packet or ACK shows in every window.
			const n, windows = 20000, 5
			sent := uint64(n)
			if both {
				sent *= 2
			}
			best := -1.0
			for w := range windows {
				m0 := mallocs()
				got := run(n)
				allocs := mallocs() - m0
				if bad := rs.bad.Load() + rc.bad.Load(); bad > 0 {
					t.Fatalf("%d datagrams arrived damaged", bad)
				}
				// Datagrams may be lost (a starved receiver's queue fills);
				// allocations are counted per datagram that arrived.
				if got < sent/2 {
					t.Fatalf("%d of %d datagrams arrived", got, sent)
				}
				per := float64(allocs) / float64(got)
				t.Logf("window %d: %d of %d datagrams arrived, %d allocations: %.4f per datagram", w, got, sent, allocs, per)
				if best < 0 || per < best {
					best = per
				}
			}
			if !raceEnabled && best > maxAllocsPerDatagram {
				t.Fatalf("at best %.4f allocations per datagram, want at most %v", best, maxAllocsPerDatagram)
			}
		})
	}
}

func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// TestReceiveDatagrams pins the contract of the batch receive API: it
// returns what is queued up to the number of buffers without waiting for
// more, stops before a datagram longer than its buffer and drops it with
// io.ErrShortBuffer when it is the first, returns the context's error when
// it is done, and the close error once the connection is closed.
func TestReceiveDatagrams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, cli := newPair(t)
	sizes := make([]int, 4)
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 200)
	}
	// sendSizes sends datagrams of these sizes, each starting with its index.
	sendSizes := func(ns ...int) {
		for i, n := range ns {
			b := make([]byte, n)
			b[0] = byte(i)
			if err := cli.conn.SendDatagram(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Three small datagrams then one too long for its buffer, then one more.
	sendSizes(10, 20, 30, 300, 40)
	var got []int
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < 3 && time.Now().Before(deadline) {
		n, err := srv.conn.ReceiveDatagrams(ctx, bufs, sizes)
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got = append(got, sizes[:n]...)
	}
	if len(got) != 3 || got[0] != 10 || got[1] != 20 || got[2] != 30 {
		t.Fatalf("got sizes %v, want [10 20 30] (the 300-byte one must stop the batch)", got)
	}
	if _, err := srv.conn.ReceiveDatagrams(ctx, bufs, sizes); !errors.Is(err, io.ErrShortBuffer) {
		t.Fatalf("a 300-byte datagram for 200-byte buffers: got %v, want io.ErrShortBuffer", err)
	}
	n, err := srv.conn.ReceiveDatagrams(ctx, bufs, sizes)
	if err != nil || n != 1 || sizes[0] != 40 || bufs[0][0] != 4 {
		t.Fatalf("after the dropped one: n=%d size=%d first byte %d, %v; want the 40-byte datagram", n, sizes[0], bufs[0][0], err)
	}
	// Nothing queued: a done context returns its error.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if _, err := srv.conn.ReceiveDatagrams(short, bufs, sizes); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the context's deadline", err)
	}
	// A blocked call returns when the connection closes.
	done := make(chan error, 1)
	go func() { _, err := srv.conn.ReceiveDatagrams(ctx, bufs, sizes); done <- err }()
	cli.conn.CloseWithError(7, "bye")
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("ReceiveDatagrams returned no error after the peer closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReceiveDatagrams still blocked after the peer closed")
	}
}
