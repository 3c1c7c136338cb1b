package smartsock

import (
	"net/netip"
	"sync"
	"testing"
)

func ipPort(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(7400+i%7))
}

// TestIndexReadersNeverBlock: readers load while the one writer sets and
// deletes (run with -race): every load sees a whole map, entries written
// before a reader started are always there, and len counts what is there.
func TestIndexReadersNeverBlock(t *testing.T) {
	x := newAddrIndex[int]()
	for i := range 1000 {
		x.set(ipPort(i), i)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if i := n % 1000; x.load(ipPort(i)) != i {
					t.Errorf("entry %d lost while the writer wrote others", i)
					return
				}
			}
		}()
	}
	for i := 1000; i < 3000; i++ {
		x.set(ipPort(i), i)
		if i%2 == 0 {
			x.del(ipPort(i))
		}
	}
	close(stop)
	wg.Wait()
	n := 0
	x.all(func(netip.AddrPort, int) { n++ })
	if n != x.len() || n != 2000 {
		t.Fatalf("len %d, entries %d, want 2000", x.len(), n)
	}
	x.del(ipPort(5000)) // absent: nothing changes
	if x.len() != 2000 {
		t.Fatal("deleting an absent key changed len")
	}
}

// BenchmarkIndex: a lookup (the per-packet cost) and a change (the cost of
// a path appearing or leaving) in a table of 30,000 addresses, about what
// 10,000 peers with a few paths each hold.
func BenchmarkIndex(b *testing.B) {
	x := newAddrIndex[*path]()
	const n = 30000
	for i := range n {
		x.set(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 7400), &path{})
	}
	k := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 1, 2}), 7400)
	b.Run("load", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if x.load(k) == nil {
				b.Fatal("missing")
			}
		}
	})
	b.Run("set", func(b *testing.B) {
		pa := &path{}
		for b.Loop() {
			x.set(k, pa)
		}
	})
}
