package gossipsub

import (
	"bytes"
	"runtime"
	"testing"
	"testing/synctest"
	"time"
)

// writers counts the running per-peer writer goroutines.
func writers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("gossipsub.(*Router).writer("))
}

// An idle peer has no writer goroutine (a heartbeat's RPCs start one,
// which ends with the queue), and one starts for what is published.
func TestIdlePeerHasNoWriter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, nodes := line(t, 3, Config{})
		defer closeAll(nodes)
		var subs []*Subscription
		for _, n := range nodes {
			s, err := n.r.Subscribe("lobby")
			if err != nil {
				t.Fatal(err)
			}
			subs = append(subs, s)
		}
		time.Sleep(5 * time.Second) // grafts, heartbeats
		synctest.Wait()
		if n := writers(); n != 0 {
			t.Fatalf("%d writer goroutines for 4 idle peer entries, want 0", n)
		}
		if err := nodes[0].r.Publish("lobby", []byte("hi")); err != nil {
			t.Fatal(err)
		}
		for i, s := range subs[1:] {
			select {
			case m := <-s.Messages():
				if string(m.Data) != "hi" {
					t.Fatalf("node %d got %q", i+1, m.Data)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("node %d got nothing", i+1)
			}
		}
	})
}
