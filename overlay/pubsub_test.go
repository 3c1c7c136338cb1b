package overlay

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/pki"
)

// TestPubSubAcrossNodes: four in-process nodes (each knowing only the
// first) subscribe to a topic; what each publishes reaches all others with
// the publisher's verified identity as From.
func TestPubSubAcrossNodes(t *testing.T) {
	const n = 4
	var nodes []*Node
	for i := 0; i < n; i++ {
		kp, err := pki.GenerateKeypair(context.Background(), testPoW)
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: newMemDevice(), Logger: testLogger(t), DHT: dhtConfigForOneHost()}
		if i > 0 {
			cfg.Bootstrap = []Contact{nodes[0].Contact(netip.MustParseAddr("127.0.0.1"))}
		}
		nd, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		nodes = append(nodes, nd)
	}
	const topic = "chat/lobby"
	subs := make([]*gossipsub.Subscription, n)
	for i, nd := range nodes {
		s, err := nd.Subscribe(topic)
		if err != nil {
			t.Fatal(err)
		}
		subs[i] = s
	}
	// Everyone learns the others' subscriptions through its connections.
	waitFor(t, "topic peers", 30*time.Second, func() bool {
		for _, nd := range nodes {
			if len(nd.TopicPeers(topic)) < n-1 {
				return false
			}
		}
		return true
	})
	for i, nd := range nodes {
		msg := fmt.Sprintf("hello from %d", i)
		if err := nd.Publish(topic, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		for j, s := range subs {
			if j == i {
				continue
			}
			deadline := time.After(10 * time.Second)
			for got := false; !got; {
				select {
				case m := <-s.Messages():
					if string(m.Data) == msg {
						if m.From != nd.Identity() || m.Topic != topic {
							t.Fatalf("node %d got %q from %s on %q, want from %s", j, m.Data, m.From.Short(), m.Topic, nd.Identity().Short())
						}
						got = true
					}
				case <-deadline:
					t.Fatalf("node %d never received %q", j, msg)
				}
			}
		}
	}
}
