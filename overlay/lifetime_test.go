package overlay

import (
	"bytes"
	"context"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

// Close waits for every goroutine the node started: after three nodes
// connected, carried packets both ways (so every peer has its sender and
// receiver) and closed, the process is back to the goroutines it had.
func TestCloseWaitsForEveryGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	var nodes []*testNode
	for i := range 3 {
		kp, err := pki.GenerateKeypair(context.Background(), testPoW)
		if err != nil {
			t.Fatal(err)
		}
		dev := newMemDevice()
		cfg := Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Logger: testLogger(t), DHT: dhtConfigForOneHost()}
		if i > 0 {
			cfg.Bootstrap = []Contact{nodes[0].contact()}
		}
		n, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, &testNode{n, dev})
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				deliver(t, a, b, udp6(a.addr, b.addr, []byte("hello")))
			}
		}
	}
	var nobody pki.Identity
	nobody[2] = 9
	nodes[1].dev.Send(udp6(nodes[1].addr, netip.AddrFrom16(pkiAddr(nobody).As16()), []byte("resolving"))) // a resolution in flight
	for _, n := range nodes {
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// Right after Close none of our goroutines may run (quic-go's own may
	// take a moment to end after its connections closed).
	if ours := ourGoroutines(); len(ours) > 0 {
		t.Fatalf("%d of our goroutines still run after Close:\n%s", len(ours), strings.Join(ours, "\n\n"))
	}
	var after int
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if after = runtime.NumGoroutine(); after <= before || time.Now().After(end) {
			break
		}
	}
	if after > before {
		t.Fatalf("%d goroutines before, %d 5 s after Close", before, after)
	}
}

// ourGoroutines returns the stacks of running goroutines in this module's
// code (quic-go's fork and the test itself aside).
func ourGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var ours []string
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if strings.Contains(s, "testing.tRunner") || strings.Contains(s, "ourGoroutines") {
			continue
		}
		if strings.Contains(s, "smartsock.(*Conn).probeLoop") {
			continue // smartsock's Close does not wait for it yet (its redesign does)
		}
		if lines := strings.SplitN(s, "\n", 3); len(lines) > 1 && strings.HasPrefix(lines[1], "github.com/korium/korium-tun/internal/group.(*Group).Go.func1(") {
			// Its function returned and its Done ran (so Wait returned):
			// the goroutine is only exiting.
			continue
		}
		for _, line := range strings.Split(s, "\n") {
			if strings.Contains(line, "korium-tun/") && !strings.Contains(line, "third_party/") {
				ours = append(ours, s)
				break
			}
		}
	}
	return ours
}
