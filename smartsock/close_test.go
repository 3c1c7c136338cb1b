package smartsock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// TestCloseWaitsForItsGoroutines: Close stops the path loop and returns
// only once it has stopped (its last act, closing loopDone, is done the
// moment Close returns), unblocks a read and a Ping in progress, is
// idempotent, and every call after it fails at once instead of waiting
// for a loop that is gone. The loop's goroutine may still be on its way
// out when Close returns (seen in CI under load: runnable at the loop's
// closing brace, after its deferred close), so its disappearance and the
// goroutine count are waited for, within a second.
func TestCloseWaitsForItsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	var conns []*Conn
	var readers sync.WaitGroup
	pings := make(chan error, 4)
	for range 4 {
		c, err := New(listenUDP(t), Config{Keypair: newKey(t)})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		id := newKey(t).Identity()
		if _, err := c.AddPeer(id, netip.MustParseAddrPort("198.18.0.1:9")); err != nil {
			t.Fatal(err)
		}
		c.SetPathKey(id, [32]byte{1})
		c.Confirm(id)
		readers.Add(1)
		go func() { // quic-go's read loop, in short
			defer readers.Done()
			ms := []ipv4.Message{{Buffers: [][]byte{make([]byte, 1500)}}}
			for {
				if _, err := c.ReadBatch(ms, 0); err != nil {
					return
				}
			}
		}()
		go func() { // nobody answers: it waits until Close
			_, err := c.Ping(context.Background(), id)
			pings <- err
		}()
	}
	// Everything is running: the loops, the readers, the pings.
	waitFor(t, 5*time.Second, "pings in flight", func() bool {
		n := 0
		for _, c := range conns {
			c.call(func() { n += len(c.waiters) })
		}
		return n == len(conns)
	})
	buf := make([]byte, 1<<20)
	for _, c := range conns {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		// The moment Close returns, the loop has stopped: not merely told.
		select {
		case <-c.loopDone:
		default:
			t.Fatal("Close returned before its path loop stopped")
		}
		loop := fmt.Sprintf("(*Conn).loop(%p", c)
		waitFor(t, time.Second, "the path loop's goroutine to end", func() bool {
			return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), loop)
		})
		if err := c.Close(); err != nil {
			t.Fatalf("a second Close: %v", err)
		}
	}
	for range conns {
		if err := <-pings; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("a Ping in flight returned %v at Close, want net.ErrClosed", err)
		}
	}
	readers.Wait()
	waitFor(t, time.Second, fmt.Sprintf("the goroutine count to fall back to %d after Close", before), func() bool {
		return runtime.NumGoroutine() <= before
	})
	c := conns[0]
	start := time.Now()
	if _, err := c.AddPeer(newKey(t).Identity(), netip.MustParseAddrPort("198.18.0.2:9")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("AddPeer after Close: %v", err)
	}
	if _, err := c.Ping(context.Background(), newKey(t).Identity()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Ping after Close: %v", err)
	}
	if _, err := c.ExpectDialBack(1); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ExpectDialBack after Close: %v", err)
	}
	c.Confirm(newKey(t).Identity())
	c.Punch(newKey(t).Identity(), nil)
	c.Paths(newKey(t).Identity())
	if d := time.Since(start); d > time.Second {
		t.Fatalf("calls after Close took %v", d)
	}
}
