package gossipsub

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

type discardSender struct{}

func (discardSender) Send(context.Context, pki.Identity, []byte) error { return nil }

// BenchmarkHeartbeat is one heartbeat of a router whose peers all
// subscribe to its topic, with messages in its cache (so it gossips): the
// per-second cost of an idle node at that many peers.
func BenchmarkHeartbeat(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.HeartbeatInterval = time.Minute // the benchmark drives it
			cfg.MaxMessageAge = 10 * time.Minute
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
			for i := range 3 {
				if err := r.Publish("t", []byte{byte(i)}); err != nil {
					b.Fatal(err)
				}
			}
			r.do(r.heartbeat) // forms the mesh
			b.ReportAllocs()
			for b.Loop() {
				r.do(r.heartbeat)
			}
		})
	}
}
