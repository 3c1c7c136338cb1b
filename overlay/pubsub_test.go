package overlay

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
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
	// Everyone has at least one topic peer; the mesh (not a full mesh of
	// connections) carries messages to the rest.
	waitFor(t, "topic peers", 30*time.Second, func() bool {
		for _, nd := range nodes {
			if len(nd.TopicPeers(topic)) == 0 {
				return false
			}
		}
		return true
	})
	for i, nd := range nodes {
		prefix := fmt.Sprintf("hello from %d #", i)
		got := map[int]bool{}
		deadline := time.Now().Add(30 * time.Second)
		// Publish until every other node has one of these messages: one
		// sent before the mesh is complete may reach only some nodes.
		for k := 0; len(got) < n-1; k++ {
			if time.Now().After(deadline) {
				t.Fatalf("message from node %d reached only %v", i, got)
			}
			if err := nd.Publish(topic, []byte(fmt.Sprintf("%s%d", prefix, k))); err != nil {
				t.Fatal(err)
			}
			wait := time.After(500 * time.Millisecond)
		collect:
			for {
				for j, s := range subs {
					if j == i {
						continue
					}
					select {
					case m := <-s.Messages():
						if strings.HasPrefix(string(m.Data), prefix) {
							if m.From != nd.Identity() || m.Topic != topic {
								t.Fatalf("node %d got %q from %s on %q, want from %s", j, m.Data, m.From.Short(), m.Topic, nd.Identity().Short())
							}
							got[j] = true
						}
					default:
					}
				}
				if len(got) == n-1 {
					break collect
				}
				select {
				case <-wait:
					break collect
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
	}
	// A relay signal from the last node reaches the second through the mesh,
	// with its verified originator.
	src, dst := nodes[n-1], nodes[1]
	deadline := time.After(15 * time.Second)
	for got := false; !got; {
		if err := src.SendSignal(dst.Identity(), []byte("punch at 198.18.0.9:4000")); err != nil {
			t.Fatal(err)
		}
		select {
		case sig := <-dst.Signals():
			if sig.From != src.Identity() || string(sig.Payload) != "punch at 198.18.0.9:4000" {
				t.Fatalf("signal %q from %s", sig.Payload, sig.From.Short())
			}
			got = true
		case <-time.After(500 * time.Millisecond):
		case <-deadline:
			t.Fatal("relay signal never arrived")
		}
	}
}
