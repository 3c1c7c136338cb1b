package overlay

import (
	"context"
	"fmt"

	"testing"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
)

// TestDHTReachesEveryoneFromOneBootstrap: nodes that know only the first
// node reach every other node's SmartAddr (the first packet triggers a DHT
// resolution), and still do after the first node is gone.
func TestDHTReachesEveryoneFromOneBootstrap(t *testing.T) {
	const n = 5
	var nodes []*testNode
	for i := 0; i < n; i++ {
		var boot []Contact
		if i > 0 {
			boot = []Contact{nodes[0].contact()}
		}
		kp, err := pki.GenerateKeypair(context.Background(), testPoW)
		if err != nil {
			t.Fatal(err)
		}
		dev := newMemDevice()
		// All nodes share 127.0.0.1: lift the per-prefix table caps meant
		// for the internet.
		nd, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Bootstrap: boot,
			Logger: testLogger(t), DHT: dhtConfigForOneHost()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		nodes = append(nodes, &testNode{nd, dev})
	}
	// Every node has joined once its record is stored somewhere else.
	waitFor(t, "DHT joins", 30*time.Second, func() bool {
		for _, nd := range nodes[1:] {
			if s := nd.Status().DHT; s == nil || s.TableSize < 1 {
				return false
			}
		}
		return true
	})
	// Let records spread to every node that joined later.
	waitFor(t, "records everywhere", 60*time.Second, func() bool {
		for _, nd := range nodes {
			for _, other := range nodes {
				if nd == other {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := nd.ResolveAddr(ctx, other.addr)
				cancel()
				if err != nil {
					return false
				}
			}
		}
		return true
	})
	nodes[0].Close()
	rest := nodes[1:]
	// Request/response to an identity with no connection resolves it first.
	rest[1].SetRequestHandler(func(_ context.Context, _ pki.Identity, req []byte) ([]byte, error) {
		return append([]byte("echo "), req...), nil
	})
	if p := rest[0].peer(rest[1].id); p != nil {
		p.Conn.CloseWithError(peers.CodeNormal, "test")
	}
	waitFor(t, "disconnect", 5*time.Second, func() bool { return rest[0].peer(rest[1].id) == nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	resp, err := rest[0].Send(ctx, rest[1].id, []byte("hi"))
	cancel()
	if err != nil || string(resp) != "echo hi" {
		t.Fatalf("Send to an unconnected identity: %q, %v", resp, err)
	}
	for i, a := range rest {
		for j, b := range rest {
			if i == j {
				continue
			}
			// In a network this small the DHT's own lookups connect
			// everyone; drop a's connection to b so that a's first packet
			// must resolve b's address again.
			if p := a.peer(b.id); p != nil {
				p.Conn.CloseWithError(peers.CodeNormal, "test")
			}
			waitFor(t, "disconnect", 5*time.Second, func() bool { return a.peer(b.id) == nil && b.peer(a.id) == nil })
			deliver(t, a, b, udp6(a.addr, b.addr, []byte(fmt.Sprintf("%d->%d", i, j))))
		}
	}
	// Background DHT traffic (republish, refresh) may reconnect a pair
	// before its packet, so not every delivery needs a resolution; most do.
	var total uint64
	for _, nd := range rest {
		r := nd.dp.Counters.ResolveOK.Load()
		if r == 0 {
			t.Errorf("node %s never resolved an address through the DHT", nd.id.Short())
		}
		total += r
	}
	if pairs := uint64(len(rest) * (len(rest) - 1)); total*2 < pairs {
		t.Errorf("%d resolutions for %d deliveries after disconnecting", total, pairs)
	}
}

// dhtConfigForOneHost lifts the DHT's per-prefix caps (2 contacts per /24
// per bucket, 10 insertions per /24 in a burst), which would otherwise treat
// test nodes sharing 127.0.0.1 as one crowd.
func dhtConfigForOneHost() dht.Config {
	return dht.Config{MaxPerPrefixPerBucket: dht.MaxK, InsertBurst: 1000}
}
