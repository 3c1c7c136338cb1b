package netstack

import (
	"bytes"
	"context"
	"crypto/sha256"
	"go/build"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentFlows runs flows that share GRO buckets, which stall if a
// flush leaves packets behind.
func TestConcurrentFlows(t *testing.T) {
	p := newPair(t)
	ln, err := p.b.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const flows, size = 16, 1 << 20
	sums := make(chan [32]byte, flows)
	go func() {
		for range flows {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				io.Copy(h, c)
				sums <- [32]byte(h.Sum(nil))
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var want [32]byte
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	want = sha256.Sum256(data)
	var wg sync.WaitGroup
	for range flows {
		wg.Go(func() {
			c, err := p.a.DialContext(ctx, "tcp", addrPort(p.b, 7000))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write(data); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for range flows {
		select {
		case s := <-sums:
			if s != want {
				t.Fatal("checksum mismatch")
			}
		case <-ctx.Done():
			t.Fatal("flows did not finish")
		}
	}
}

// TestReadSmallBatch reads with fewer buffers than a GSO packet needs:
// the device must keep the packet for the next call rather than lose it,
// and a caller with a single buffer still gets plain packets.
func TestReadSmallBatch(t *testing.T) {
	a := newStack(t, testAddr(1))
	defer a.Close()
	// A UDP datagram to a peer nobody pumps for: it just waits in the queue.
	c, err := a.DialContext(context.Background(), "udp", addrPort(&Stack{addr: testAddr(2)}, 9))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 3 {
		c.Write(bytes.Repeat([]byte{byte(i)}, 100))
	}
	bufs := [][]byte{make([]byte, 1280)}
	sizes := []int{0}
	for i := range 3 {
		n, err := a.Read(bufs, sizes, 0)
		if err != nil || n != 1 || sizes[0] != 40+8+100 {
			t.Fatalf("read %d: n=%d size=%d err=%v", i, n, sizes[0], err)
		}
		if got := bufs[0][sizes[0]-1]; got != byte(i) {
			t.Fatalf("read %d: datagram %d", i, got)
		}
	}
}

// TestImports keeps the package's project imports to smartaddr.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasPrefix(imp, "github.com/korium/korium-tun/") && imp != "github.com/korium/korium-tun/smartaddr" {
			t.Errorf("netstack imports %s; it may import only smartaddr from this project", imp)
		}
	}
}

// FuzzWrite feeds arbitrary bytes to Write as a batch of inbound packets
// (a, b, a), which also exercises coalescing across packets.
func FuzzWrite(f *testing.F) {
	f.Add(tcp6Packet(1, 0x02, 0, nil), []byte{})
	f.Add(tcp6Packet(1, 0x10, 12, []byte("data")), tcp6Packet(5, 0x10, 12, []byte("more")))
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 17, 64}, []byte{0x45})
	s, err := New(Config{Addr: testAddr(2)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	const off = 10
	dst := s.Addr().As16()
	packet := func(b []byte) []byte {
		buf := make([]byte, off+len(b))
		copy(buf[off:], b)
		// Point the packet at the stack so it gets past address checks.
		if len(b) >= 40 && b[0]>>4 == 6 {
			copy(buf[off+24:], dst[:])
		}
		return buf
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		pa := packet(a)
		if _, err := s.Write([][]byte{pa, packet(b), pa}, off); err != nil {
			t.Fatal(err)
		}
		// Drain replies (RSTs, ICMP errors) so the queue never fills.
		bufs := [][]byte{make([]byte, 1<<16)}
		for s.ep.NumQueued() > 0 {
			if _, err := s.Read(bufs, []int{0}, 0); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// BenchmarkTCPThroughput sends over one TCP connection between two
// back-to-back stacks; allocs/op are per 64 KiB written, allocs/pkt per
// packet crossing the pump.
func BenchmarkTCPThroughput(b *testing.B) {
	p := newPair(b)
	ln, err := p.b.Listen("tcp", ":5001")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- 0
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		done <- n
	}()
	c, err := p.a.DialContext(context.Background(), "tcp", addrPort(p.b, 5001))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	pk0 := p.packets.Load()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	if n := <-done; n != int64(b.N*len(buf)) {
		b.Fatalf("received %d of %d bytes", n, b.N*len(buf))
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	if pk := p.packets.Load() - pk0; pk > 0 {
		b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(pk), "allocs/pkt")
		b.ReportMetric(float64(pk)/float64(b.N), "pkts/op")
	}
}
