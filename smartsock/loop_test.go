package smartsock

import (
	"testing"
	"time"
)

// With every peer idle the loop sleeps between the idle peers' due times
// instead of running ten probe rounds a second, and a write to a peer
// while it sleeps wakes it before its timer would (so traffic starting on
// an idle peer is still seen within a tick).
func TestLoopSleepsWhileIdle(t *testing.T) {
	a, b := newEnd(t, true), newEnd(t, true)
	client, _ := connect(t, a, b) // no keep-alives: idle after the handshake
	key := [32]byte{1, 2, 3}      // as the overlay sets from the session
	a.sock.SetPathKey(b.kp.Identity(), key)
	b.sock.SetPathKey(a.kp.Identity(), key)
	c := a.sock
	state := func() (sleeping bool, next time.Time) {
		c.call(func() { next = c.nextLook })
		return c.sleeping.Load(), next
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if s, _ := state(); s {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the loop never slept: the idle peer still needs every tick after 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	r0, t0 := c.rounds.Load(), time.Now()
	time.Sleep(3 * time.Second)
	rounds, took := c.rounds.Load()-r0, time.Since(t0)
	t.Logf("%d probe rounds in %v with the peer idle (%d at one a tick)", rounds, took.Round(time.Millisecond), took/tickEvery)
	if max := uint64(took/idleGrid) + 4; rounds > max {
		t.Errorf("%d probe rounds in %v with the only peer idle, want at most %d", rounds, took.Round(time.Millisecond), max)
	}

	// A write while the loop sleeps until a due time well ahead.
	for range 100 {
		s, next := state()
		if s && time.Until(next) > 500*time.Millisecond {
			r0 := c.rounds.Load()
			if err := client.SendDatagram([]byte("traffic starts")); err != nil {
				t.Fatal(err)
			}
			for time.Now().Before(next.Add(-100 * time.Millisecond)) {
				if c.rounds.Load() > r0 {
					return // woken by the write, before its timer
				}
				time.Sleep(5 * time.Millisecond)
			}
			t.Fatalf("a write to the idle peer did not wake the loop: no round before its timer (%v)", next)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the loop never slept for more than 500 ms with the peer idle")
}
