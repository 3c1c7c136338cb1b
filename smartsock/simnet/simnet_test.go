package simnet

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/net/ipv4"
)

var (
	pubA = netip.MustParseAddr("198.18.0.1")
	pubB = netip.MustParseAddr("198.18.0.2")
	natA = netip.MustParseAddr("198.18.1.1")
	natB = netip.MustParseAddr("198.18.1.2")
	lanA = netip.MustParseAddrPort("10.0.0.1:7400")
	lanB = netip.MustParseAddrPort("10.0.0.2:7400")
)

func msgs(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1500)}
	}
	return ms
}

func listen(t *testing.T, n *Network, a netip.AddrPort) *Conn {
	c, err := n.Listen(a)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// recv reads one datagram, or fails after d of (fake) time.
func recv(t *testing.T, c *Conn, d time.Duration) (string, netip.AddrPort, bool) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	ms := msgs(1)
	n, err := c.ReadBatch(ms, 0)
	if err != nil {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal(err)
		}
		return "", netip.AddrPort{}, false
	}
	if n != 1 {
		t.Fatalf("ReadBatch = %d", n)
	}
	return string(ms[0].Buffers[0][:ms[0].N]), ms[0].Addr.(*net.UDPAddr).AddrPort(), true
}

// TestLatencyAndOrder: a datagram takes its link's latency, to the fake
// nanosecond, and datagrams on one link arrive in order.
func TestLatencyAndOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(Config{})
		defer n.Close()
		n.SetLink(pubA, pubB, Link{Latency: 30 * time.Millisecond})
		a, b := listen(t, n, netip.AddrPortFrom(pubA, 1)), listen(t, n, netip.AddrPortFrom(pubB, 1))
		start := time.Now()
		for _, s := range []string{"one", "two", "three"} {
			a.WriteTo([]byte(s), nil, b.Addr())
		}
		ms := msgs(4)
		got := 0
		for got < 3 {
			k, err := b.ReadBatch(ms[got:], 0)
			if err != nil {
				t.Fatal(err)
			}
			got += k
		}
		if d := time.Since(start); d != 30*time.Millisecond {
			t.Fatalf("arrived after %v, want 30ms", d)
		}
		for i, want := range []string{"one", "two", "three"} {
			if s := string(ms[i].Buffers[0][:ms[i].N]); s != want || ms[i].Addr.(*net.UDPAddr).AddrPort() != a.Addr() {
				t.Fatalf("datagram %d: %q from %v", i, s, ms[i].Addr)
			}
		}
	})
}

// TestLossIsSeeded: a link's loss drops about that share, the same share
// for the same seed, and a black hole drops everything.
func TestLossIsSeeded(t *testing.T) {
	run := func(seed uint64, loss float64) uint64 {
		var delivered uint64
		synctest.Test(t, func(t *testing.T) {
			n := New(Config{Seed: seed, Link: Link{Loss: loss}})
			defer n.Close()
			a, b := listen(t, n, netip.AddrPortFrom(pubA, 1)), listen(t, n, netip.AddrPortFrom(pubB, 1))
			for range 1000 {
				a.WriteTo([]byte("x"), nil, b.Addr())
			}
			synctest.Wait()
			delivered = n.Stats().Delivered
		})
		return delivered
	}
	d1, d2 := run(7, 0.3), run(7, 0.3)
	if d1 != d2 || d1 < 620 || d1 > 780 {
		t.Fatalf("30%% loss delivered %d and %d of 1000", d1, d2)
	}
	if d := run(7, 1); d != 0 {
		t.Fatalf("a black hole delivered %d", d)
	}
}

// TestConeNAT: one mapping whatever the destination; unsolicited datagrams
// are filtered; two cone NATs punch when both sides send.
func TestConeNAT(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(Config{Link: Link{Latency: 10 * time.Millisecond}})
		defer n.Close()
		na, _ := n.NewNAT(natA, Cone)
		nb, _ := n.NewNAT(natB, Cone)
		a, err := na.Listen(lanA)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := nb.Listen(lanB)
		srv1, srv2 := listen(t, n, netip.AddrPortFrom(pubA, 1)), listen(t, n, netip.AddrPortFrom(pubB, 1))
		a.WriteTo([]byte("hi"), nil, srv1.Addr())
		a.WriteTo([]byte("hi"), nil, srv2.Addr())
		_, from1, _ := recv(t, srv1, time.Second)
		_, from2, _ := recv(t, srv2, time.Second)
		if from1 != from2 || from1.Addr() != natA {
			t.Fatalf("a cone NAT mapped one socket to %v and %v", from1, from2)
		}
		if m, ok := na.Mapped(lanA, srv2.Addr()); !ok || m != from1 {
			t.Fatalf("Mapped = %v, %v", m, ok)
		}
		// srv2 may answer; srv1's other socket, never contacted, may not.
		srv2.WriteTo([]byte("back"), nil, from2)
		if s, _, ok := recv(t, a, time.Second); !ok || s != "back" {
			t.Fatal("the answer of a contacted server was filtered")
		}
		other := listen(t, n, netip.AddrPortFrom(pubA, 2))
		other.WriteTo([]byte("unsolicited"), nil, from1)
		if _, _, ok := recv(t, a, time.Second); ok {
			t.Fatal("an unsolicited datagram passed a cone NAT")
		}
		// Punching: b learns a's mapping (from a server), both send.
		b.WriteTo([]byte("hi"), nil, srv1.Addr())
		_, bMapped, _ := recv(t, srv1, time.Second)
		b.WriteTo([]byte("punch"), nil, from1) // opens b's NAT for a's mapping
		time.Sleep(time.Second)                // and arrives before a sent anything: filtered
		a.WriteTo([]byte("punch"), nil, bMapped)
		if s, _, ok := recv(t, b, time.Second); !ok || s != "punch" {
			t.Fatal("a's punch did not reach b")
		}
		b.WriteTo([]byte("punch again"), nil, from1)
		if s, src, ok := recv(t, a, time.Second); !ok || s != "punch again" || src != bMapped {
			t.Fatalf("b's punch did not reach a: %q from %v", s, src)
		}
		if n.Stats().Filtered != 2 {
			t.Fatalf("%d filtered, want 2 (the unsolicited one, b's first punch)", n.Stats().Filtered)
		}
		// A rebooted NAT forgets: the next datagram leaves from a new port.
		na.Rebind()
		a.WriteTo([]byte("hi"), nil, srv1.Addr())
		if _, from, _ := recv(t, srv1, time.Second); from == from1 {
			t.Fatal("Rebind kept the mapping")
		}
	})
}

// TestSymmetricNAT: a mapping per destination, so the one a server saw is
// no use to anyone else and punching fails.
func TestSymmetricNAT(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(Config{})
		defer n.Close()
		na, _ := n.NewNAT(natA, Cone)
		nb, _ := n.NewNAT(natB, Symmetric)
		a, _ := na.Listen(lanA)
		b, _ := nb.Listen(lanB)
		srv1, srv2 := listen(t, n, netip.AddrPortFrom(pubA, 1)), listen(t, n, netip.AddrPortFrom(pubB, 1))
		b.WriteTo([]byte("hi"), nil, srv1.Addr())
		b.WriteTo([]byte("hi"), nil, srv2.Addr())
		_, from1, _ := recv(t, srv1, time.Second)
		_, from2, _ := recv(t, srv2, time.Second)
		if from1 == from2 {
			t.Fatal("a symmetric NAT reused a mapping for another destination")
		}
		a.WriteTo([]byte("hi"), nil, srv1.Addr())
		_, aMapped, _ := recv(t, srv1, time.Second)
		// Both punch toward what srv1 observed.
		for range 5 {
			a.WriteTo([]byte("punch"), nil, from1)
			b.WriteTo([]byte("punch"), nil, aMapped)
		}
		if _, _, ok := recv(t, a, time.Second); ok {
			t.Fatal("a punch through a symmetric NAT reached a")
		}
		if _, _, ok := recv(t, b, time.Second); ok {
			t.Fatal("a punch through a symmetric NAT reached b")
		}
	})
}

// TestSocketBasics: the LAN behind one NAT, deadlines, Close unblocking a
// read, a full queue dropping, and addresses in use.
func TestSocketBasics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(Config{QueueLen: 2})
		defer n.Close()
		na, _ := n.NewNAT(natA, Cone)
		a, _ := na.Listen(lanA)
		b, _ := na.Listen(lanB)
		a.WriteTo([]byte("lan"), nil, b.Addr())
		if s, src, ok := recv(t, b, time.Second); !ok || s != "lan" || src != lanA {
			t.Fatalf("LAN datagram: %q from %v", s, src)
		}
		for range 3 {
			a.WriteTo([]byte("x"), nil, b.Addr())
		}
		synctest.Wait()
		if st := n.Stats(); st.QueueFull != 1 {
			t.Fatalf("%d dropped at a full queue, want 1", st.QueueFull)
		}
		start := time.Now()
		if _, _, ok := recv(t, a, 250*time.Millisecond); ok || time.Since(start) != 250*time.Millisecond {
			t.Fatal("the read deadline")
		}
		a.SetReadDeadline(time.Time{})
		errc := make(chan error)
		go func() { _, err := a.ReadBatch(msgs(1), 0); errc <- err }()
		synctest.Wait()
		a.Close()
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("a read blocked at Close returned %v", err)
		}
		if err := a.WriteTo([]byte("x"), nil, b.Addr()); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("a write after Close: %v", err)
		}
		if _, err := na.Listen(lanB); err == nil {
			t.Fatal("an address in use was given twice")
		}
		if _, err := na.Listen(lanA); err != nil {
			t.Fatalf("a closed socket's address: %v", err)
		}
	})
}
