package group

import (
	"sync/atomic"
	"testing"
	"time"
)

// Wait waits for every goroutine Go started, also those started by the
// group's own goroutines while Wait runs, and refuses new ones once it
// began: those never run.
func TestWaitWaitsAndRefuses(t *testing.T) {
	var g Group
	var ran, done atomic.Int64
	stop := make(chan struct{})
	for range 8 {
		g.Go(func() {
			ran.Add(1)
			<-stop
			g.Go(func() { ran.Add(1); done.Add(1) }) // refused once Wait began, else waited for
			done.Add(1)
		})
	}
	waited := make(chan struct{})
	go func() { g.Wait(); close(waited) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		closed := g.closed
		g.mu.Unlock()
		if closed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Wait did not begin")
		}
		time.Sleep(time.Millisecond)
	}
	if g.Go(func() { t.Error("a goroutine ran after Wait began") }) {
		t.Fatal("Go accepted a goroutine after Wait began")
	}
	select {
	case <-waited:
		t.Fatal("Wait returned while goroutines were running")
	default:
	}
	close(stop)
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return")
	}
	if r, d := ran.Load(), done.Load(); r != 8 || d != 8 {
		t.Fatalf("%d ran and %d finished, want the 8 started before Wait (their own were refused)", r, d)
	}
}
