package gossipsub

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

type discardSender struct{}

func (discardSender) Send(context.Context, pki.Identity, []byte) error { return nil }

// BenchmarkHeartbeat is one heartbeat of a router whose peers all
// subscribe to its topic: idle (nothing to gossip: the per-second cost of
// an idle node at that many peers), and gossiping (a message published
// before each heartbeat, which then sends IHAVE to a quarter of the peers;
// the publish, signature included, is in the figure).
func BenchmarkHeartbeat(b *testing.B) {
	for _, c := range []struct {
		n      int
		gossip bool
	}{{100, false}, {1000, false}, {1000, true}} {
		n := c.n
		name := fmt.Sprintf("idle/peers=%d", n)
		if c.gossip {
			name = fmt.Sprintf("gossiping/peers=%d", n)
		}
		b.Run(name, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.HeartbeatInterval = time.Minute // the benchmark drives it
			cfg.MaxMessageAge = 10 * time.Minute
			cfg.PublishRate = 1e9
			r, err := New(cfg, testKey(b, 0), discardSender{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			if _, err := r.Subscribe("t"); err != nil {
				b.Fatal(err)
			}
			sub := EncodeRPCs(&RPC{Subs: []SubOpt{{Subscribe: true, Topic: "t"}}}, cfg.Limits)[0]
			for i := range n {
				id := testKey(b, i+1).Identity()
				r.AddPeer(id, netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), i%2 == 0)
				r.HandleRPC(id, sub)
			}
			deadline := time.Now().Add(10 * time.Second)
			for len(r.TopicPeers("t")) < n {
				if time.Now().After(deadline) {
					b.Fatalf("%d of %d peers subscribed", len(r.TopicPeers("t")), n)
				}
				time.Sleep(time.Millisecond)
			}
			r.do(r.heartbeat) // forms the mesh
			b.ReportAllocs()
			for b.Loop() {
				if c.gossip {
					if err := r.Publish("t", []byte{1}); err != nil {
						b.Fatal(err)
					}
				}
				r.do(r.heartbeat)
			}
		})
	}
}

// A peer's graylisting is logged when it changes, once, whether the
// router notices at the peer's RPC or at a heartbeat that scores it, and
// its RPCs are dropped meanwhile.
func TestGraylistTransitionLoggedOnce(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	log := slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
		if bytes.Contains(b, []byte("graylist changed")) {
			mu.Lock()
			logged = append(logged, string(b))
			mu.Unlock()
		}
		return len(b), nil
	}), nil))
	cfg := DefaultConfig()
	r, err := New(cfg, testKey(t, 0), discardSender{}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	id := testKey(t, 1).Identity()
	r.AddPeer(id, netip.AddrFrom4([4]byte{10, 0, 0, 1}), true)
	sub := EncodeRPCs(&RPC{Subs: []SubOpt{{Subscribe: true, Topic: "t"}}}, cfg.Limits)[0]
	r.SetAppScore(id, -1000)
	for range 3 {
		r.HandleRPC(id, sub)
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(logged) }
	deadline := time.Now().Add(5 * time.Second)
	for r.Stats().DropGraylisted < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 3 RPCs dropped as graylisted", r.Stats().DropGraylisted)
		}
		time.Sleep(time.Millisecond)
	}
	r.do(r.heartbeat)
	if n := count(); n != 1 {
		t.Fatalf("graylisting logged %d times, want once: %q", n, logged)
	}
	r.SetAppScore(id, 0)
	r.HandleRPC(id, sub)
	deadline = time.Now().Add(5 * time.Second)
	for count() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the end of the graylisting was not logged")
		}
		time.Sleep(time.Millisecond)
	}
	if len(r.TopicPeers("t")) != 1 {
		t.Fatal("the RPC after the graylisting ended was not handled")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// A peer's IDONTWANTs are forgotten after IDontWantTTLTicks heartbeats,
// and a peer that sent none is skipped by the heartbeat's expiry (dwN).
func TestIDontWantExpires(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HeartbeatInterval = time.Minute // the test drives it
	cfg.MaxMessageAge = 10 * time.Minute
	r, err := New(cfg, testKey(t, 0), discardSender{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	a, quiet := testKey(t, 1).Identity(), testKey(t, 2).Identity()
	r.AddPeer(a, netip.MustParseAddr("10.0.0.1"), true)
	r.AddPeer(quiet, netip.MustParseAddr("10.0.1.1"), true)
	r.HandleRPC(a, EncodeRPCs(&RPC{IDontWant: []MsgID{{1}, {2}}}, cfg.Limits)[0])
	held := func(id pki.Identity) (n, dwN int) {
		r.do(func() {
			p := r.peers[id]
			p.dwMu.Lock()
			n = p.dontWant.len()
			p.dwMu.Unlock()
			dwN = p.dwN
		})
		return n, dwN
	}
	deadline := time.Now().Add(5 * time.Second)
	for n, _ := held(a); n != 2; n, _ = held(a) {
		if time.Now().After(deadline) {
			t.Fatalf("peer holds %d IDONTWANTs, want 2", n)
		}
		time.Sleep(time.Millisecond)
	}
	for i := 0; i <= cfg.IDontWantTTLTicks; i++ {
		if n, dwN := held(a); n != 2 || dwN != 2 {
			t.Fatalf("after %d heartbeats: %d IDONTWANTs held (dwN %d), want 2 until the TTL of %d", i, n, dwN, cfg.IDontWantTTLTicks)
		}
		r.do(r.heartbeat)
	}
	r.do(r.heartbeat)
	if n, dwN := held(a); n != 0 || dwN != 0 {
		t.Fatalf("%d IDONTWANTs held (dwN %d) after the TTL, want 0", n, dwN)
	}
	if n, dwN := held(quiet); n != 0 || dwN != 0 {
		t.Fatalf("a peer that sent no IDONTWANT holds %d (dwN %d)", n, dwN)
	}
}
