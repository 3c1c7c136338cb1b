package gossipsub

import (
	"context"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/pki"
)

// countSender counts RPCs and takes a round trip for each, as the node's
// request/response sender does.
type countSender struct{ n atomic.Int64 }

func (s *countSender) Send(ctx context.Context, to pki.Identity, b []byte) error {
	s.n.Add(1)
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestIdlePeersCostNoGoroutine: a writer runs only while a peer's queue
// has work, so a node with many quiet connections holds no goroutine (and
// no stack) per peer; every queued RPC is still sent.
func TestIdlePeersCostNoGoroutine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := runtime.NumGoroutine()
		var s countSender
		r, err := New(Config{}, testKey(t, 1), &s, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if _, err := r.Subscribe("t"); err != nil {
			t.Fatal(err)
		}
		const peers = 200
		for i := 0; i < peers; i++ {
			r.AddPeer(testKey(t, 100+i).Identity(), netip.AddrFrom4([4]byte{1, byte(i), 0, 1}), true)
		}
		// Each peer is sent our subscription, and the mesh peers a GRAFT.
		synctest.Wait()
		if busy := runtime.NumGoroutine() - base; busy <= 1 {
			t.Fatalf("%d goroutines while %d peers have RPCs in flight", busy, peers)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := s.n.Load(); got < peers {
			t.Fatalf("%d RPCs sent to %d peers", got, peers)
		}
		// Now idle: the loop only.
		if idle := runtime.NumGoroutine() - base; idle != 1 {
			t.Fatalf("%d goroutines for a router with %d idle peers, want 1 (its loop)", idle, peers)
		}
		sent := s.n.Load()
		// Leaving the topic is announced to every peer.
		if err := r.Unsubscribe("t"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := s.n.Load() - sent; got < peers {
			t.Fatalf("%d RPCs after idling, want %d (one per peer)", got, peers)
		}
		if idle := runtime.NumGoroutine() - base; idle != 1 {
			t.Fatalf("%d goroutines after the announcements drained", idle)
		}
	})
}
