package overlay

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/korium/korium-tun/internal/ip6"
	"github.com/korium/korium-tun/internal/memdev"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

const testPoW = 4

type testNode struct {
	*Node
	dev *memDevice
}

func newTestNode(t testing.TB, kp *pki.Keypair, listen string, boot ...Contact) *testNode {
	t.Helper()
	if kp == nil {
		var err error
		if kp, err = pki.GenerateKeypair(context.Background(), testPoW); err != nil {
			t.Fatal(err)
		}
	}
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	dev := newMemDevice()
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: listen, Device: dev, Bootstrap: boot, Logger: testLogger(t), DisableDHT: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{n, dev}
}

func (n *testNode) contact() Contact { return n.Contact(netip.MustParseAddr("127.0.0.1")) }

// udp6 builds an IPv6/UDP packet.
func udp6(src, dst netip.Addr, payload []byte) []byte { return memdev.UDP6(src, dst, payload) }

func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	if !waitUntil(d, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// waitUntil polls cond until it holds (true) or d passes (false).
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func expectPacket(t testing.TB, dev *memDevice, want []byte) {
	t.Helper()
	select {
	case got := <-dev.Got:
		if !bytes.Equal(got, want) {
			t.Fatalf("device got %x, want %x", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no packet reached the device")
	}
}

func expectNothing(t testing.TB, dev *memDevice, d time.Duration) {
	t.Helper()
	select {
	case got := <-dev.Got:
		t.Fatalf("device got unexpected packet %x", got)
	case <-time.After(d):
	}
}

// deliver sends p from a until it reaches b (bounded).
func deliver(t testing.TB, a, b *testNode, p []byte) {
	t.Helper()
	waitFor(t, "delivery", 10*time.Second, func() bool {
		a.dev.Send(p)
		select {
		case got := <-b.dev.Got:
			return bytes.Equal(got, p)
		case <-time.After(200 * time.Millisecond):
			return false
		}
	})
}

func connected(a, b *testNode) func() bool {
	return func() bool { return a.peer(b.id) != nil && b.peer(a.id) != nil }
}

func TestTwoNodesExchangePackets(t *testing.T) {
	b := newTestNode(t, nil, "")
	a := newTestNode(t, nil, "", b.contact())
	waitFor(t, "connection", 5*time.Second, connected(a, b))

	for i := 0; i < 100; i++ {
		p := udp6(a.addr, b.addr, bytes.Repeat([]byte{byte(i)}, 1000))
		a.dev.Send(p)
		expectPacket(t, b.dev, p)
		q := udp6(b.addr, a.addr, []byte{byte(i)})
		b.dev.Send(q)
		expectPacket(t, a.dev, q)
	}
	// A full-size packet (the tunnel MTU) crosses in one datagram.
	full := udp6(a.addr, b.addr, make([]byte, DefaultMTU-48))
	a.dev.Send(full)
	expectPacket(t, b.dev, full)
	st := a.Status()
	if len(st.Peers) != 1 || st.Peers[0].TxPackets != 101 || st.Peers[0].RxPackets != 100 || !st.Peers[0].Confirmed {
		t.Fatalf("status: %+v", st.Peers)
	}
}

func TestSpoofedInnerSourceNeverReachesDevice(t *testing.T) {
	b := newTestNode(t, nil, "")
	a := newTestNode(t, nil, "", b.contact())
	waitFor(t, "connection", 5*time.Second, connected(a, b))
	conn := a.peer(b.id).Conn
	var other pki.Identity
	other[0] = 7
	cases := []struct {
		name    string
		pkt     []byte
		counter func() uint64
	}{
		{"other peer's source", udp6(smartaddr.FromIdentity(other), b.addr, []byte("x")), b.dp.Counters.RxSpoofedSource.Load},
		{"receiver's own source", udp6(b.addr, b.addr, []byte("x")), b.dp.Counters.RxSpoofedSource.Load},
		{"not for receiver", udp6(a.addr, smartaddr.FromIdentity(other), []byte("x")), b.dp.Counters.RxNotForUs.Load},
		{"length mismatch", udp6(a.addr, b.addr, []byte("x"))[:45], b.dp.Counters.RxMalformed.Load},
		{"ipv4", append([]byte{0x45}, make([]byte, 60)...), b.dp.Counters.RxMalformed.Load},
		{"short", []byte{0x60}, b.dp.Counters.RxMalformed.Load},
		{"over the MTU", udp6(a.addr, b.addr, make([]byte, DefaultMTU-48+1)), b.dp.Counters.RxMalformed.Load},
	}
	for _, c := range cases {
		before := c.counter()
		if err := conn.SendDatagram(c.pkt); err != nil {
			t.Fatal(err)
		}
		waitFor(t, c.name+" counted", 5*time.Second, func() bool { return c.counter() > before })
	}
	expectNothing(t, b.dev, 100*time.Millisecond)
	// And an honest packet still passes afterwards.
	ok := udp6(a.addr, b.addr, []byte("honest"))
	conn.SendDatagram(ok)
	expectPacket(t, b.dev, ok)
}

func TestWrongIdentityRefused(t *testing.T) {
	b := newTestNode(t, nil, "")
	a := newTestNode(t, nil, "")
	impostor := b.contact()
	impostor.Identity[0] ^= 1 // dial b's address expecting someone else
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Connect(ctx, impostor); err == nil {
		t.Fatal("connected to a node that does not hold the expected identity")
	}
	if a.peer(impostor.Identity) != nil || len(b.Status().Peers) != 0 {
		t.Fatal("a connection survived")
	}
}

func TestLowProofOfWorkRefused(t *testing.T) {
	b := newTestNode(t, nil, "")
	weak, _ := pki.NewKeypair(bytes.Repeat([]byte{9}, 32), 0)
	for weak.PoWBits() >= testPoW {
		weak, _ = pki.NewKeypair(weak.Seed()[:31:31], 0) // unreachable in practice
	}
	// A node that accepts no proof of work tries to join b's network.
	dev := newMemDevice()
	a, err := New(Config{Keypair: weak, PoWBits: -1, Listen: "127.0.0.1:0", Device: dev})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Connect(ctx, b.contact()); err == nil {
		// The client may finish before the server's verdict arrives; the
		// server must still refuse it.
		waitFor(t, "refusal", 5*time.Second, func() bool { return a.peer(b.id) == nil })
	}
	waitFor(t, "handshake refusal counted", 5*time.Second, func() bool { return len(b.Status().Peers) == 0 })
	// And a node requiring the difficulty refuses to start with a weak key.
	if _, err := New(Config{Keypair: weak, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: newMemDevice()}); err == nil {
		t.Fatal("node started with a key below the network difficulty")
	}
}

func TestSimultaneousDialKeepsOneConnection(t *testing.T) {
	for i := 0; i < 5; i++ {
		a := newTestNode(t, nil, "")
		b := newTestNode(t, nil, "")
		a.AddPeer(b.contact())
		b.AddPeer(a.contact())
		waitFor(t, "connection", 5*time.Second, connected(a, b))
		// Both ends must settle on the same connection: one dialed it, the
		// other accepted it.
		waitFor(t, "agreement", 5*time.Second, func() bool {
			pa, pb := a.peer(b.id), b.peer(a.id)
			return pa != nil && pb != nil && pa.Outbound != pb.Outbound
		})
		// A packet sent while the losing connection is being replaced is
		// lost, as on any link; retry like a transport would.
		deliver(t, a, b, udp6(a.addr, b.addr, []byte("one")))
		waitFor(t, "agreement after delivery", 5*time.Second, func() bool {
			pa, pb := a.peer(b.id), b.peer(a.id)
			return pa != nil && pb != nil && pa.Outbound != pb.Outbound && pa.Conn.Context().Err() == nil
		})
		deliver(t, a, b, udp6(a.addr, b.addr, []byte("two")))
		a.Close()
		b.Close()
	}
}

func TestHeldPacketDeliveredOnConnect(t *testing.T) {
	b := newTestNode(t, nil, "")
	a := newTestNode(t, nil, "")
	p := udp6(a.addr, b.addr, []byte("early"))
	a.dev.Send(p)
	waitFor(t, "packet held", 5*time.Second, func() bool {
		held, _, _ := a.dp.Pending()
		return held == 1
	})
	a.AddPeer(b.contact())
	expectPacket(t, b.dev, p)
	waitFor(t, "held packet counted as delivered", 5*time.Second, func() bool { return a.dp.Counters.PendingDelivered.Load() == 1 })
}

func TestHeldPacketExpires(t *testing.T) {
	kp, _ := pki.GenerateKeypair(context.Background(), testPoW)
	dev := newMemDevice()
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, DisableDHT: true,
		PendingTimeout: 50 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	a := &testNode{n, dev}
	var nobody pki.Identity
	nobody[3] = 1
	a.dev.Send(udp6(a.addr, smartaddr.FromIdentity(nobody), []byte("lost")))
	waitFor(t, "held packet dropped and counted", 5*time.Second, func() bool { return a.dp.Counters.TxNoPeer.Load() == 1 })
}

func TestPacketTooBig(t *testing.T) {
	b := newTestNode(t, nil, "")
	a := newTestNode(t, nil, "", b.contact())
	waitFor(t, "connection", 5*time.Second, connected(a, b))
	big := udp6(a.addr, b.addr, make([]byte, 1452))
	a.dev.Send(big)
	select {
	case got := <-a.dev.Got:
		src, dst, ok := ip6.Addrs(got)
		if !ok || src != b.addr || dst != a.addr || got[6] != 58 || got[40] != 2 {
			t.Fatalf("not an ICMPv6 Packet Too Big from b to a: %x", got[:48])
		}
		if mtu := binary.BigEndian.Uint32(got[44:48]); mtu != DefaultMTU {
			t.Fatalf("PTB MTU %d, want %d", mtu, DefaultMTU)
		}
		if ip6.Checksum(got[8:24], got[24:40], got[40:]) != 0 {
			t.Fatal("bad ICMPv6 checksum")
		}
		if !bytes.Equal(got[48:], big[:len(got)-48]) {
			t.Fatal("PTB does not quote the original packet")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Packet Too Big")
	}
	expectNothing(t, b.dev, 50*time.Millisecond)
}

func TestRestartedPeerRecovers(t *testing.T) {
	bkp, _ := pki.GenerateKeypair(context.Background(), testPoW)
	b := newTestNode(t, bkp, "")
	bAddr := b.LocalAddr()
	a := newTestNode(t, nil, "", b.contact())
	waitFor(t, "connection", 5*time.Second, connected(a, b))
	b.Close()
	start := time.Now()
	b2 := newTestNode(t, bkp, "127.0.0.1:"+strconv.Itoa(int(bAddr.Port())))
	// a still holds a stale connection; b2's stateless reset or a's redial
	// brings a fresh one well before the idle timeout.
	waitFor(t, "reconnection", 10*time.Second, func() bool {
		p := a.peer(b2.id)
		return p != nil && b2.peer(a.id) != nil && p.Conn.Context().Err() == nil
	})
	deliver(t, a, b2, udp6(a.addr, b2.addr, []byte("again")))
	t.Logf("recovered %v after restart; b2 smartsock %+v; a smartsock %+v", time.Since(start).Round(time.Millisecond), b2.sock.Stats(), a.sock.Stats())
}

func TestParseContact(t *testing.T) {
	id := []byte("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a") // RFC 8032 test key 1
	good := []string{string(id) + "@198.18.0.1:4000", string(id) + "@[2001:db8::1]:1"}
	for _, s := range good {
		c, err := ParseContact(s)
		if err != nil || c.String() != s {
			t.Errorf("ParseContact(%q) = %v, %v", s, c, err)
		}
	}
	bad := []string{"", "@1.2.3.4:5", string(id), string(id) + "@", string(id) + "@1.2.3.4", string(id) + "@1.2.3.4:0",
		string(id) + "@2001:db8::1:5", string(id) + "@host:5", string(id)[1:] + "@1.2.3.4:5", string(id) + "@0.0.0.0:5", string(id) + "@[fe80::1%eth0]:5"}
	for _, s := range bad {
		if _, err := ParseContact(s); err == nil {
			t.Errorf("ParseContact(%q) accepted", s)
		}
	}
}

func FuzzParseContact(f *testing.F) {
	f.Add(string(bytes.Repeat([]byte("ab"), 32)) + "@198.18.0.1:4000")
	f.Add("x@[::1]:1")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseContact(s)
		if err != nil {
			return
		}
		c2, err := ParseContact(c.String())
		if err != nil || c2.Identity != c.Identity || c2.Addr != c.Addr {
			t.Fatalf("round trip of %q: %v %v", s, c2, err)
		}
	})
}

func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
