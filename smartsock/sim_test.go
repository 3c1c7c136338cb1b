package smartsock

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/smartaddr"
	"github.com/korium/korium-tun/smartsock/simnet"
)

// Path selection, relay fallback, black-hole detection and hole punching on
// the in-memory network, in fake time (testing/synctest): what the loopback
// tests and the namespace lab check with real sockets, here with chosen
// latencies, losses and NATs, deterministically and in milliseconds. Each
// node is a Conn with a reader standing in for quic-go; a handshake is one
// long-header packet each way, as QUIC's first flight would be.

var _ UDP = (*simnet.Conn)(nil)

var (
	simA, simB, simR = netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
	simNA, simNB     = netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2")
	simLanA, simLanB = netip.MustParseAddrPort("10.0.0.1:7400"), netip.MustParseAddrPort("10.0.0.2:7400")
	simKey           = [32]byte{0x5e, 0xc7}
)

type simNode struct {
	kp   *pki.Keypair
	udp  *simnet.Conn
	c    *Conn
	got  atomic.Int64 // data packets (short header) that reached "quic-go"
	done chan struct{}
}

func newSimNode(t *testing.T, udp *simnet.Conn, seed byte) *simNode {
	t.Helper()
	s := &simNode{kp: demuxKey(seed), udp: udp, done: make(chan struct{})}
	var err error
	if s.c, err = NewConn(udp, Config{Keypair: s.kp}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(s.done)
		ms := make([]ipv4.Message, 8)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 1500)}
		}
		for {
			n, err := s.c.ReadBatch(ms, 0)
			if err != nil {
				return
			}
			for _, m := range ms[:n] {
				if m.N > 0 && m.Buffers[0][0] == 0x41 {
					s.got.Add(1)
				}
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *simNode) id() pki.Identity { return s.kp.Identity() }

func (s *simNode) close() {
	s.c.Close()
	<-s.done
}

func (s *simNode) virt(o *simNode) *net.UDPAddr {
	return net.UDPAddrFromAddrPort(smartaddr.Virtual(o.id()))
}

// handshake runs what QUIC's first flight does to smartsock: a long-header
// packet from a to b (b learns a from the hello before it) and one back,
// then both confirm the path and install the session's probe key.
func handshake(t *testing.T, a, b *simNode) {
	t.Helper()
	long := append([]byte{0xc3, 0, 0, 0, 1}, make([]byte, 1200)...)
	if _, _, err := a.c.WriteMsgUDP(long, nil, a.virt(b)); err != nil {
		t.Fatal(err)
	}
	synctestSleep(time.Second)
	if _, _, err := b.c.WriteMsgUDP(long, nil, b.virt(a)); err != nil {
		t.Fatal(err)
	}
	synctestSleep(time.Second)
	a.c.Confirm(b.id())
	b.c.Confirm(a.id())
	a.c.SetPathKey(b.id(), simKey)
	b.c.SetPathKey(a.id(), simKey)
	for _, e := range [][2]*simNode{{a, b}, {b, a}} {
		if pi, ok := e[0].c.Path(e[1].id()); !ok || !pi.Confirmed {
			t.Fatalf("no confirmed path after the handshake: %+v", pi)
		}
	}
}

// synctestSleep lets fake time pass (inside a bubble, instantly).
func synctestSleep(d time.Duration) { time.Sleep(d) }

// stream sends a data packet from a to b every 10 ms until the test ends.
func stream(t *testing.T, a, b *simNode) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pkt := append([]byte{0x41}, make([]byte, 1000)...)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				a.c.WriteMsgUDP(pkt, nil, a.virt(b))
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
}

// until waits, in fake time, for cond and returns how long it took.
func until(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// simRelay is a relay node: a Conn running relay/server.
type simRelay struct {
	*simNode
	srv *server.Server
}

func newSimRelay(t *testing.T, n *simnet.Network) *simRelay {
	udp, err := n.Listen(netip.AddrPortFrom(simR, 7400))
	if err != nil {
		t.Fatal(err)
	}
	r := &simRelay{simNode: newSimNode(t, udp, 0x70)}
	r.srv = server.New(server.Config{}, r.c)
	r.c.SetRelayForwarder(r.srv.Forward)
	return r
}

// connect opens a session for a and b, whose datagrams reach the relay from
// seenA and seenB, and adds it to both as a relay path.
func (r *simRelay) connect(t *testing.T, a, b *simNode, seenA, seenB netip.AddrPort) {
	t.Helper()
	sess, err := r.srv.Open(a.id(), b.id(), seenA, seenB, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a.c.AddRelayPath(b.id(), r.id(), r.udp.Addr(), sess)
	b.c.AddRelayPath(a.id(), r.id(), r.udp.Addr(), sess)
}

func publicPair(t *testing.T, n *simnet.Network) (*simNode, *simNode) {
	ua, err := n.Listen(netip.AddrPortFrom(simA, 7400))
	if err != nil {
		t.Fatal(err)
	}
	ub, err := n.Listen(netip.AddrPortFrom(simB, 7400))
	if err != nil {
		t.Fatal(err)
	}
	return newSimNode(t, ua, 0xa1), newSimNode(t, ub, 0xb1)
}

// TestSimPathChoice: two public peers connected through a relay 5 ms from
// each, then offered their direct path. Traffic takes the direct path when
// its RTT beats the relay's by more than RelayHandicap plus SwitchMargin,
// and stays relayed when the direct path is slow or lost.
func TestSimPathChoice(t *testing.T) {
	for _, tc := range []struct {
		name          string
		direct        simnet.Link
		wantRelayed   bool
		wantValidated bool
	}{
		{"fast direct path wins", simnet.Link{Latency: 20 * time.Millisecond}, false, true},
		{"slow direct path loses to the relay", simnet.Link{Latency: 50 * time.Millisecond}, true, true},
		{"black-holed direct path", simnet.Link{Latency: time.Millisecond, Loss: 1}, true, false},
		// Select weighs RTT and liveness, not loss: a path that loses 5%
		// answers enough probes to be chosen, and QUIC recovers the rest.
		// (At 30% three probes in a row are lost often enough to flap.)
		{"lossy direct path still proves itself", simnet.Link{Latency: time.Millisecond, Loss: 0.05}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := simnet.New(simnet.Config{Seed: 1})
				defer n.Close()
				n.SetLink(simA, simR, simnet.Link{Latency: 5 * time.Millisecond})
				n.SetLink(simB, simR, simnet.Link{Latency: 5 * time.Millisecond})
				n.SetLink(simA, simB, tc.direct)
				a, b := publicPair(t, n)
				r := newSimRelay(t, n)
				r.connect(t, a, b, a.udp.Addr(), b.udp.Addr())
				handshake(t, a, b)
				if pi, _ := a.c.Path(b.id()); !pi.Relayed {
					t.Fatalf("the handshake did not run through the relay: %+v", pi)
				}
				stream(t, a, b)
				stream(t, b, a)
				a.c.Punch(b.id(), []netip.AddrPort{b.udp.Addr()})
				b.c.Punch(a.id(), []netip.AddrPort{a.udp.Addr()})
				time.Sleep(PunchWindow + ProbeInterval)
				for _, e := range [][2]*simNode{{a, b}, {b, a}} {
					pi, _ := e[0].c.Path(e[1].id())
					ps, _ := e[0].c.Paths(e[1].id())
					validated := false
					for _, p := range ps {
						validated = validated || (p.Kind == "direct" && p.Validated)
					}
					if pi.Relayed != tc.wantRelayed || validated != tc.wantValidated {
						t.Errorf("relayed %v (want %v), direct proven %v (want %v): %+v", pi.Relayed, tc.wantRelayed, validated, tc.wantValidated, ps)
					}
				}
				loss := 0.0
				if !tc.wantRelayed {
					loss = tc.direct.Loss
				}
				before := b.got.Load()
				time.Sleep(time.Second)
				if got, want := b.got.Load()-before, int64(90*(1-loss)); got < want {
					t.Errorf("%d of 100 data packets arrived in the last second, want %d", got, want)
				}
			})
		})
	}
}

// TestSimBlackHoleFallsBackToRelay: a proven direct path goes dark while
// data flows both ways: both ends move to the relay within two seconds (by
// probing the quiet path fast), data goes on, and when the path heals they
// come back to it.
func TestSimBlackHoleFallsBackToRelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(simnet.Config{Seed: 2})
		defer n.Close()
		n.SetLink(simA, simB, simnet.Link{Latency: 5 * time.Millisecond})
		n.SetLink(simA, simR, simnet.Link{Latency: 10 * time.Millisecond})
		n.SetLink(simB, simR, simnet.Link{Latency: 10 * time.Millisecond})
		a, b := publicPair(t, n)
		r := newSimRelay(t, n)
		if _, err := a.c.AddPeer(b.id(), b.udp.Addr()); err != nil {
			t.Fatal(err)
		}
		handshake(t, a, b)
		r.connect(t, a, b, a.udp.Addr(), b.udp.Addr())
		stream(t, a, b)
		stream(t, b, a)
		until(t, 10*time.Second, "both paths measured", func() bool {
			ps, _ := a.c.Paths(b.id())
			return len(ps) == 2 && ps[0].RTT > 0 && ps[1].RTT > 0
		})
		if pi, _ := a.c.Path(b.id()); pi.Relayed {
			t.Fatalf("not on the direct path: %+v", pi)
		}
		n.SetLink(simA, simB, simnet.Link{Latency: 5 * time.Millisecond, Loss: 1})
		took := until(t, 2*time.Second, "a on the relay", func() bool { pi, _ := a.c.Path(b.id()); return pi.Relayed })
		tookB := until(t, 2*time.Second, "b on the relay", func() bool { pi, _ := b.c.Path(a.id()); return pi.Relayed })
		t.Logf("black hole -> relay in %v (a), %v more (b)", took, tookB)
		before := b.got.Load()
		time.Sleep(time.Second)
		if got := b.got.Load() - before; got < 95 {
			t.Errorf("%d of 100 data packets through the relay in a second", got)
		}
		n.SetLink(simA, simB, simnet.Link{Latency: 5 * time.Millisecond})
		back := until(t, ProbeInterval+2*time.Second, "back on the direct path", func() bool {
			pa, _ := a.c.Path(b.id())
			pb, _ := b.c.Path(a.id())
			return !pa.Relayed && !pb.Relayed
		})
		t.Logf("healed -> direct in %v", back)
		if _, sw := a.c.Paths(b.id()); sw < 2 {
			t.Errorf("%d path switches, want 2 (away and back)", sw)
		}
	})
}

// natPair puts a and b behind NATs of the given kinds, with a relay on the
// Internet, connects them through it, and returns what the relay saw each
// of them at (their NATs' mappings toward it).
func natPair(t *testing.T, n *simnet.Network, kindA, kindB simnet.NATKind) (a, b *simNode, r *simRelay, seenA, seenB netip.AddrPort) {
	na, err := n.NewNAT(simNA, kindA)
	if err != nil {
		t.Fatal(err)
	}
	nb, err := n.NewNAT(simNB, kindB)
	if err != nil {
		t.Fatal(err)
	}
	ua, err := na.Listen(simLanA)
	if err != nil {
		t.Fatal(err)
	}
	ub, err := nb.Listen(simLanB)
	if err != nil {
		t.Fatal(err)
	}
	a, b = newSimNode(t, ua, 0xa2), newSimNode(t, ub, 0xb2)
	r = newSimRelay(t, n)
	// Each reaches the relay once (as its QUIC connection to it would),
	// which maps it; the relay registers what it saw.
	ua.WriteTo([]byte{0x40, 0}, nil, r.udp.Addr())
	ub.WriteTo([]byte{0x40, 0}, nil, r.udp.Addr())
	var ok1, ok2 bool
	seenA, ok1 = na.Mapped(simLanA, r.udp.Addr())
	seenB, ok2 = nb.Mapped(simLanB, r.udp.Addr())
	if !ok1 || !ok2 {
		t.Fatal("no NAT mapping toward the relay")
	}
	r.connect(t, a, b, seenA, seenB)
	handshake(t, a, b)
	return a, b, r, seenA, seenB
}

// TestSimPunchThroughConeNATs: two peers behind cone NATs, connected through
// a relay, punch toward each other's mapping (as the relay observed it) at
// the same time: both move to the direct path, and the relay stops
// carrying their traffic.
func TestSimPunchThroughConeNATs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(simnet.Config{Seed: 3, Link: simnet.Link{Latency: 10 * time.Millisecond}})
		defer n.Close()
		a, b, r, seenA, seenB := natPair(t, n, simnet.Cone, simnet.Cone)
		stream(t, a, b)
		stream(t, b, a)
		if pi, _ := a.c.Path(b.id()); !pi.Relayed {
			t.Fatalf("not relayed before the punch: %+v", pi)
		}
		a.c.Punch(b.id(), []netip.AddrPort{seenB})
		b.c.Punch(a.id(), []netip.AddrPort{seenA})
		took := until(t, PunchWindow, "both on the direct path", func() bool {
			pa, _ := a.c.Path(b.id())
			pb, _ := b.c.Path(a.id())
			return !pa.Relayed && pa.Current == seenB && !pb.Relayed && pb.Current == seenA
		})
		t.Logf("punched through two cone NATs in %v", took)
		fwd := r.srv.Stats().ForwardedFrames
		before := b.got.Load()
		time.Sleep(2 * time.Second)
		if got := b.got.Load() - before; got < 190 {
			t.Errorf("%d of 200 data packets on the direct path", got)
		}
		if d := r.srv.Stats().ForwardedFrames - fwd; d > 4 {
			t.Errorf("the relay still forwarded %d frames after the punch", d)
		}
	})
}

// TestSimPunchFailsThroughSymmetricNAT: behind a symmetric NAT the mapping
// the relay saw is no use to the other peer: the punch fails, nothing
// direct is proven, and traffic stays on the relay without a gap.
func TestSimPunchFailsThroughSymmetricNAT(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(simnet.Config{Seed: 4, Link: simnet.Link{Latency: 10 * time.Millisecond}})
		defer n.Close()
		a, b, r, seenA, seenB := natPair(t, n, simnet.Cone, simnet.Symmetric)
		stream(t, a, b)
		filtered := n.Stats().Filtered
		a.c.Punch(b.id(), []netip.AddrPort{seenB})
		b.c.Punch(a.id(), []netip.AddrPort{seenA})
		before := b.got.Load()
		time.Sleep(PunchWindow + time.Second)
		for _, e := range [][2]*simNode{{a, b}, {b, a}} {
			pi, _ := e[0].c.Path(e[1].id())
			ps, _ := e[0].c.Paths(e[1].id())
			for _, p := range ps {
				if p.Kind == "direct" && p.Validated {
					t.Errorf("a direct path was proven through a symmetric NAT: %+v", ps)
				}
			}
			if !pi.Relayed {
				t.Errorf("left the relay: %+v", pi)
			}
		}
		if got, want := b.got.Load()-before, int64((PunchWindow+time.Second)/(10*time.Millisecond)); got < want-5 {
			t.Errorf("%d of %d data packets through the relay during the punch", got, want)
		}
		if n.Stats().Filtered == filtered || r.srv.Stats().ForwardedFrames == 0 {
			t.Errorf("the punch never reached a NAT (%d filtered) or the relay carried nothing", n.Stats().Filtered-filtered)
		}
	})
}

// TestSimFollowsNATRebinding: a peer behind a cone NAT whose mapping
// changes (the NAT rebooted) keeps its connection: its probes from the new
// port make a peer-reflexive path the other side proves and moves to, and
// data resumes, with no handshake and no relay.
func TestSimFollowsNATRebinding(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(simnet.Config{Seed: 5, Link: simnet.Link{Latency: 10 * time.Millisecond}})
		defer n.Close()
		na, _ := n.NewNAT(simNA, simnet.Cone)
		ua, _ := na.Listen(simLanA)
		ub, _ := n.Listen(netip.AddrPortFrom(simB, 7400))
		a, b := newSimNode(t, ua, 0xa3), newSimNode(t, ub, 0xb3)
		if _, err := a.c.AddPeer(b.id(), ub.Addr()); err != nil {
			t.Fatal(err)
		}
		handshake(t, a, b)
		stream(t, a, b)
		stream(t, b, a)
		time.Sleep(time.Second)
		old, _ := b.c.Path(a.id())
		na.Rebind()
		took := until(t, 5*time.Second, "b on a's new mapping", func() bool {
			pi, _ := b.c.Path(a.id())
			return pi.Current != old.Current && pi.Confirmed
		})
		now, _ := b.c.Path(a.id())
		if m, _ := na.Mapped(simLanA, ub.Addr()); now.Current != m {
			t.Fatalf("b moved to %v, a's mapping is %v", now.Current, m)
		}
		t.Logf("followed the rebinding %v -> %v in %v", old.Current, now.Current, took)
		before := a.got.Load()
		time.Sleep(time.Second)
		if got := a.got.Load() - before; got < 95 {
			t.Errorf("%d of 100 data packets to a after the move", got)
		}
	})
}
