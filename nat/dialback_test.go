package nat

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/korium/korium-tun/wire"
)

// Dial-backs leave from one socket that is not the asker's peer socket,
// three copies each, 100 ms or more apart; at most MaxDialBacks wait, and
// none are left once sent or closed.
func TestDialBacksShareOneSocket(t *testing.T) {
	d := newDialBacker()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { defer close(stopped); d.run(ctx) }()
	defer func() { cancel(); <-stopped }()

	type got struct {
		from  netip.AddrPort
		nonce uint64
		at    time.Time
	}
	listen := func() (*net.UDPConn, netip.AddrPort) {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, c.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	// readQuiet reads up to n dial-backs (3 s at most), skipping anything else.
	readQuiet := func(c *net.UDPConn, n int) []got {
		var out []got
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		for len(out) < n {
			m, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return out
			}
			if nonce, err := wire.ParseDialBack(buf[:m]); err == nil {
				out = append(out, got{from, nonce, time.Now()})
			}
		}
		return out
	}
	read := func(c *net.UDPConn, n int) []got {
		t.Helper()
		out := readQuiet(c, n)
		if len(out) != n {
			t.Fatalf("%d of %d dial-backs arrived", len(out), n)
		}
		return out
	}
	c1, a1 := listen()
	c2, a2 := listen()
	if !d.start(a1, 7) || !d.start(a2, 8) {
		t.Fatal("dial-backs refused")
	}
	var g2 []got
	done2 := make(chan struct{})
	go func() { defer close(done2); g2 = readQuiet(c2, dialBackCopies) }() // read as they arrive
	g1 := read(c1, dialBackCopies)
	<-done2
	if len(g2) != dialBackCopies {
		t.Fatalf("%d of %d dial-backs to the second asker arrived", len(g2), dialBackCopies)
	}
	src := g1[0].from
	for _, g := range append(g1, g2...) {
		if g.from != src {
			t.Errorf("dial-backs from %v and %v: want one socket", src, g.from)
		}
	}
	for i, gs := range [][]got{g1, g2} {
		for _, g := range gs {
			if want := uint64(7 + i); g.nonce != want {
				t.Errorf("nonce %d, want %d", g.nonce, want)
			}
		}
		if spread := gs[len(gs)-1].at.Sub(gs[0].at); spread < 150*time.Millisecond {
			t.Errorf("three copies within %v: want them spread over >= 200 ms", spread)
		}
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting: %s", what)
			}
		}
	}
	waitFor("no dial-back pending", func() bool { return d.pending() == 0 })

	// A flood of asks: at most MaxDialBacks wait, the rest are refused.
	c3, a3 := listen()
	ok := 0
	for i := range 3 * MaxDialBacks {
		if d.start(a3, uint64(100+i)) {
			ok++
		}
		if p := d.pending(); p > MaxDialBacks {
			t.Fatalf("%d dial-backs pending, cap %d", p, MaxDialBacks)
		}
	}
	if ok > MaxDialBacks+1 || ok == 3*MaxDialBacks {
		t.Errorf("%d of %d asks accepted at once, cap %d", ok, 3*MaxDialBacks, MaxDialBacks)
	}
	read(c3, ok) // at least the first copy of each
	waitFor("the flood's dial-backs sent", func() bool { return d.pending() == 0 })

	// Closed: nothing waits and nothing more is accepted.
	cancel()
	<-stopped
	if d.start(a1, 9) || d.pending() != 0 {
		t.Error("a dial-back accepted after close")
	}
}
