package smartsock

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
	"github.com/korium/korium-tun/wire"
)

func newKey(t testing.TB) *pki.Keypair {
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func listenUDP(t testing.TB) *net.UDPConn {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func loopback(c *net.UDPConn) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(c.LocalAddr().(*net.UDPAddr).Port))
}

const testPoW = 4

var quicConf = &quic.Config{EnableDatagrams: true, InitialPacketSize: 1432, DisablePathMTUDiscovery: true, MaxIdleTimeout: 10 * time.Second, HandshakeIdleTimeout: 5 * time.Second}

type end struct {
	kp   *pki.Keypair
	sock *Conn // nil when running on a bare UDP conn
	udp  *net.UDPConn
	tr   *quic.Transport
}

func newEnd(t testing.TB, smart bool) *end {
	e := &end{kp: newKey(t), udp: listenUDP(t)}
	var pc net.PacketConn = e.udp
	if smart {
		cfg := Config{Keypair: e.kp, PoWBits: testPoW}
		if os.Getenv("SMARTSOCK_DEBUG") != "" {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("me", e.kp.Identity().Short())
		}
		s, err := New(e.udp, cfg)
		if err != nil {
			t.Fatal(err)
		}
		e.sock, pc = s, s
	}
	e.tr = &quic.Transport{Conn: pc, ConnectionIDGenerator: ConnIDGenerator{}}
	t.Cleanup(func() { e.tr.Close(); pc.Close() })
	return e
}

func (e *end) tls(t testing.TB, peer *pki.Identity) *tls.Config {
	c := pki.TLSConfig{Keypair: e.kp}
	var cfg *tls.Config
	var err error
	if peer == nil {
		cfg, err = c.Server(nil)
	} else {
		cfg, err = c.Client(*peer)
	}
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// connect dials b from a and returns both ends of the connection.
func connect(t testing.TB, a, b *end) (client, server *quic.Conn) {
	t.Helper()
	ln, err := b.tr.Listen(b.tls(t, nil), quicConf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var dst net.Addr = net.UDPAddrFromAddrPort(loopback(b.udp))
	if a.sock != nil {
		v, err := a.sock.AddPeer(b.kp.Identity(), loopback(b.udp))
		if err != nil {
			t.Fatal(err)
		}
		dst = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id := b.kp.Identity()
	accepted := make(chan *quic.Conn, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	client, err = a.tr.Dial(ctx, dst, a.tls(t, &id), quicConf)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	if a.sock != nil {
		a.sock.Confirm(b.kp.Identity())
		b.sock.Confirm(a.kp.Identity())
	}
	return client, server
}

func TestHandshakeOverVirtualAddresses(t *testing.T) {
	a, b := newEnd(t, true), newEnd(t, true)
	client, server := connect(t, a, b)
	// quic-go on both sides sees only virtual addresses.
	if got := client.RemoteAddr().(*net.UDPAddr).AddrPort(); got != smartaddr.Virtual(b.kp.Identity()) {
		t.Fatalf("client sees %v, want b's virtual address", got)
	}
	if got := server.RemoteAddr().(*net.UDPAddr).AddrPort(); got != smartaddr.Virtual(a.kp.Identity()) {
		t.Fatalf("server sees %v, want a's virtual address", got)
	}
	// Datagrams flow both ways.
	if err := client.SendDatagram([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := server.ReceiveDatagram(ctx)
	if err != nil || string(got) != "ping" {
		t.Fatalf("ReceiveDatagram = %q, %v", got, err)
	}
	if pi, ok := b.sock.Path(a.kp.Identity()); !ok || !pi.Confirmed || pi.Current != loopback(a.udp) {
		t.Fatalf("b's path to a = %+v", pi)
	}
	if b.sock.Stats().RxHello == 0 {
		t.Fatal("no hello received before the handshake")
	}
}

func TestUnknownSourceNeverReachesQUIC(t *testing.T) {
	a, b := newEnd(t, true), newEnd(t, true)
	ln, err := b.tr.Listen(b.tls(t, nil), quicConf)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A dial on a bare socket sends no hello: b must drop its packets.
	bare := newEnd(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	id := b.kp.Identity()
	if _, err := bare.tr.Dial(ctx, net.UDPAddrFromAddrPort(loopback(b.udp)), bare.tls(t, &id), quicConf); err == nil {
		t.Fatal("handshake without hello succeeded")
	}
	if b.sock.Stats().DropUnknownSource == 0 {
		t.Fatal("unknown-source drops not counted")
	}
	_ = a
}

func TestForgedHelloRejected(t *testing.T) {
	a, b := newEnd(t, true), newEnd(t, true)
	mallory := newKey(t)
	send := func(h wire.Hello) {
		t.Helper()
		if _, err := a.udp.WriteToUDPAddrPort(wire.AppendHello(nil, &h), loopback(b.udp)); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UnixNano()
	forged := wire.NewHello(mallory, b.kp.Identity(), 1, now)
	forged.From = a.kp.Identity() // claims to be a, signed by mallory
	send(forged)
	stale := wire.NewHello(a.kp, b.kp.Identity(), 2, now-int64(time.Hour))
	send(stale)
	wrongTo := wire.NewHello(a.kp, mallory.Identity(), 3, now)
	send(wrongTo)
	good := wire.NewHello(a.kp, b.kp.Identity(), 4, now)
	send(good)
	send(good) // replay
	// A valid signature from an identity without enough proof of work.
	weak, _ := pki.NewKeypair(make([]byte, 32), 0)
	for n := uint64(1); weak.PoWBits() >= testPoW; n++ {
		weak, _ = pki.NewKeypair(make([]byte, 32), n)
	}
	send(wire.NewHello(weak, b.kp.Identity(), 5, now))
	deadline := time.Now().Add(5 * time.Second)
	// Drive b's read loop: a listener makes quic-go read the socket.
	ln, err := b.tr.Listen(b.tls(t, nil), quicConf)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for b.sock.Stats().RxHello < 6 {
		if time.Now().After(deadline) {
			t.Fatalf("hellos not processed: %+v", b.sock.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.sock.sync() // what the read path handed the path loop is done
	s := b.sock.Stats()
	if s.DropBadProbe != 3 || s.DropStaleHello != 2 {
		t.Fatalf("want 3 bad (forged, wrong recipient, weak proof of work) and 2 stale (old, replay), got %+v", s)
	}
	if pi, ok := b.sock.Path(a.kp.Identity()); !ok || pi.Current != loopback(a.udp) {
		t.Fatalf("good hello did not add a path: %+v", pi)
	}
	if _, ok := b.sock.Path(mallory.Identity()); ok {
		t.Fatal("mallory got a path")
	}
}

func TestConnIDsAvoidMagics(t *testing.T) {
	for i := 0; i < 10000; i++ {
		id, _ := ConnIDGenerator{}.GenerateConnectionID()
		if reservedCIDPrefix(id.Bytes()) {
			t.Fatal("reserved prefix issued")
		}
	}
	if !reservedCIDPrefix([]byte("MPRxxxxx")) || !reservedCIDPrefix([]byte("RLYxxxxx")) {
		t.Fatal("reservedCIDPrefix misses a magic")
	}
}

// BenchmarkDatagrams compares quic-go datagram throughput on a bare
// *net.UDPConn with the same through smartsock, on loopback.
func BenchmarkDatagrams(b *testing.B) {
	for _, mode := range []struct {
		name  string
		smart bool
	}{{"bare-udpconn", false}, {"smartsock", true}} {
		b.Run(mode.name, func(b *testing.B) {
			x, y := newEnd(b, mode.smart), newEnd(b, mode.smart)
			client, server := connect(b, x, y)
			payload := make([]byte, 1392) // a full tunnel packet at the default MTU
			var got atomic.Int64
			var wg sync.WaitGroup
			ctx, cancel := context.WithCancel(context.Background())
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					d, err := server.ReceiveDatagram(ctx)
					if err != nil {
						return
					}
					got.Add(int64(len(d)))
				}
			}()
			b.SetBytes(int64(len(payload)))
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if err := client.SendDatagram(payload); err != nil {
					b.Fatal(err)
				}
			}
			// Let the tail arrive, bounded.
			want := int64(b.N * len(payload))
			for end := time.Now().Add(time.Second); got.Load() < want && time.Now().Before(end); {
				time.Sleep(time.Millisecond)
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(got.Load())*8/el.Seconds()/1e9, "delivered-Gbit/s")
			b.ReportMetric(100*(1-float64(got.Load())/float64(want)), "loss-%")
			cancel()
			wg.Wait()
		})
	}
}

// TestKeepsQUICFastPaths checks that quic-go enables GSO through smartsock
// exactly as it does on a bare *net.UDPConn.
func TestKeepsQUICFastPaths(t *testing.T) {
	bareA, bareB := newEnd(t, false), newEnd(t, false)
	bc, _ := connect(t, bareA, bareB)
	a, b := newEnd(t, true), newEnd(t, true)
	sc, _ := connect(t, a, b)
	if bc.ConnectionState().GSO != sc.ConnectionState().GSO {
		t.Fatalf("GSO: bare %v, smartsock %v", bc.ConnectionState().GSO, sc.ConnectionState().GSO)
	}
	t.Logf("GSO enabled: %v", sc.ConnectionState().GSO)
}

// A full path table evicts unconfirmed entries first, then the confirmed
// peer that has been silent the longest: peers that left must not fill it
// for good.
func TestPathTableEvictsSilentPeers(t *testing.T) {
	kp := newKey(t)
	c, err := New(listenUDP(t), Config{Keypair: kp, MaxPeers: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ids := make([]pki.Identity, 4)
	for i := range ids {
		ids[i][0] = byte(i + 1)
	}
	real := netip.MustParseAddrPort("198.18.0.1:7400")
	c.AddPeer(ids[0], real)
	c.Confirm(ids[0])
	c.AddPeer(ids[1], netip.AddrPortFrom(real.Addr(), 7401))
	c.Confirm(ids[1])
	c.virt.load(smartaddr.Virtual(ids[0])).lastRecv.Add(-int64(time.Minute)) // 0 has been silent longer
	if _, err := c.AddPeer(ids[2], netip.AddrPortFrom(real.Addr(), 7402)); err != nil {
		t.Fatalf("full table of confirmed peers refused a new one: %v", err)
	}
	if _, ok := c.Path(ids[0]); ok {
		t.Fatal("the longest silent peer was kept")
	}
	if _, ok := c.Path(ids[1]); !ok {
		t.Fatal("the recently heard peer was evicted")
	}
	// 2 is unconfirmed: it goes before the confirmed 1.
	if _, err := c.AddPeer(ids[3], netip.AddrPortFrom(real.Addr(), 7403)); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Path(ids[2]); ok {
		t.Fatal("an unconfirmed peer outlived a confirmed one")
	}
	if _, ok := c.Path(ids[1]); !ok {
		t.Fatal("confirmed peer evicted while an unconfirmed one existed")
	}
}
