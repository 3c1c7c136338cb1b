package overlay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/overlay/netstack"
	"github.com/korium/korium-tun/pki"
)

// TestThreeNodesInProcess starts three nodes in one process without root
// (netstack devices, loopback UDP), each bootstrapped from the first, and
// moves data over TCP and UDP between every pair in both directions.
func TestThreeNodesInProcess(t *testing.T) {
	var nodes []*Node
	for i := 0; i < 3; i++ {
		kp, err := pki.GenerateKeypair(context.Background(), testPoW)
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Logger: testLogger(t)}
		if i > 0 {
			cfg.Bootstrap = []Contact{nodes[0].Contact(netip.MustParseAddr("127.0.0.1"))}
		}
		n, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes = append(nodes, n)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, n := range nodes {
				st := n.Status()
				t.Logf("node %d drops %v counters %v smartsock %+v", i, st.Drops, st.Counters, st.SmartSock)
				for _, p := range st.Peers {
					t.Logf("  peer %s tx %d rx %d lost %d cwnd %d", p.Identity[:8], p.TxPackets, p.RxPackets, p.QUICLost, p.QUICCwnd)
				}
				if s, ok := n.stack.(interface{ Stats() netstack.Stats }); ok {
					t.Logf("  netstack %+v", s.Stats())
				}
			}
		}
	})
	// Nodes 1 and 2 know only node 0; until the DHT resolves addresses they
	// connect to each other directly here.
	nodes[1].AddPeer(nodes[2].Contact(netip.MustParseAddr("127.0.0.1")))

	// Every node serves TCP (echo of a SHA-256) and UDP (echo) on its SmartAddr.
	for _, n := range nodes {
		ln, err := n.Listen("tcp", ":7000")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					h := sha256.New()
					io.Copy(h, c)
					c.Write(h.Sum(nil))
				}()
			}
		}()
		pc, err := n.ListenPacket("udp", ":7001")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				k, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:k], from)
			}
		}()
	}

	var wg sync.WaitGroup
	for i, a := range nodes {
		for j, b := range nodes {
			if i == j {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := tcpRoundTrip(a, b, 1<<20, uint64(i*3+j)); err != nil {
					t.Errorf("TCP %d->%d: %v", i, j, err)
				}
				if err := udpRoundTrip(a, b); err != nil {
					t.Errorf("UDP %d->%d: %v", i, j, err)
				}
			}()
		}
	}
	wg.Wait()
}

func tcpRoundTrip(a, b *Node, size int, seed uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var c net.Conn
	var err error
	for { // the first SYN may arrive before the connection to b is up
		c, err = a.DialContext(ctx, "tcp", netip.AddrPortFrom(b.Addr(), 7000).String())
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	want := sha256.Sum256(data)
	if _, err := c.Write(data); err != nil {
		return err
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want[:]) {
		return fmt.Errorf("hash mismatch: sent %x, peer saw %x", want, got)
	}
	return nil
}

func udpRoundTrip(a, b *Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.DialContext(ctx, "udp", netip.AddrPortFrom(b.Addr(), 7001).String())
	if err != nil {
		return err
	}
	defer c.Close()
	msg := []byte("hello " + b.Addr().String())
	buf := make([]byte, 2048)
	for ctx.Err() == nil {
		c.Write(msg)
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		k, err := c.Read(buf)
		if err == nil {
			if !bytes.Equal(buf[:k], msg) {
				return fmt.Errorf("echo %q, want %q", buf[:k], msg)
			}
			return nil
		}
	}
	return ctx.Err()
}

func TestKernelNodeHasNoNetstack(t *testing.T) {
	a := newTestNode(t, nil, "")
	if _, err := a.DialContext(context.Background(), "tcp", "[fd00:c0f1::1]:1"); err != ErrNoNetstack {
		t.Fatalf("DialContext on a device node: %v", err)
	}
}

// TestZeroConfig: a Config with only the test difficulty set starts a node
// with an ephemeral key, a random port on every address and a netstack.
func TestZeroConfig(t *testing.T) {
	n, err := New(Config{PoWBits: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.LocalAddr().Port() == 0 || n.MTU() != DefaultMTU || n.stack == nil {
		t.Fatalf("port %d mtu %d netstack %v", n.LocalAddr().Port(), n.MTU(), n.stack != nil)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}
