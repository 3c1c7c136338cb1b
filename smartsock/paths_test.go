package smartsock

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"
	"golang.org/x/net/ipv4"

	"github.com/korium/korium-tun/wire"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// forwarder is a UDP socket that passes packets between two endpoints: a
// test relay (frames only for session) or a NAT-like middlebox on a direct
// path that can black-hole everything.
type forwarder struct {
	udp       *net.UDPConn
	a, b      netip.AddrPort
	crlyOnly  bool
	session   [16]byte
	blackhole atomic.Bool
	passed    atomic.Int64
}

func newForwarder(t *testing.T, a, b netip.AddrPort, crlyOnly bool, session [16]byte) *forwarder {
	f := &forwarder{udp: listenUDP(t), a: a, b: b, crlyOnly: crlyOnly, session: session}
	t.Cleanup(func() { f.udp.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, src, err := f.udp.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			if f.blackhole.Load() {
				continue
			}
			if f.crlyOnly {
				h, _, err := wire.ParseRelayHeader(buf[:n])
				if err != nil || h.Session != f.session {
					continue
				}
			}
			var dst netip.AddrPort
			switch src {
			case f.a:
				dst = f.b
			case f.b:
				dst = f.a
			default:
				continue
			}
			f.passed.Add(1)
			f.udp.WriteToUDPAddrPort(buf[:n], dst)
		}
	}()
	return f
}

func (f *forwarder) addr() netip.AddrPort { return loopback(f.udp) }

func setKeys(t *testing.T, a, b *end, ca, cb *quic.Conn) {
	t.Helper()
	ka, err := PathKey(ca.ConnectionState().TLS)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := PathKey(cb.ConnectionState().TLS)
	if err != nil {
		t.Fatal(err)
	}
	if ka != kb {
		t.Fatal("the two ends derived different path keys")
	}
	a.sock.SetPathKey(b.kp.Identity(), ka)
	b.sock.SetPathKey(a.kp.Identity(), kb)
}

// TestRelayThenDirectThenBlackHole runs one QUIC connection through a relay,
// moves it to a direct path found by punching, and falls back to the relay
// when the direct path goes silent, while datagrams keep flowing and the
// connection never breaks.
func TestRelayThenDirectThenBlackHole(t *testing.T) {
	a, b := newEnd(t, true), newEnd(t, true)
	ida, idb := a.kp.Identity(), b.kp.Identity()
	relayID := newKey(t).Identity()
	var session [16]byte
	rand.Read(session[:])
	relay := newForwarder(t, loopback(a.udp), loopback(b.udp), true, session)
	virtB := a.sock.AddRelayPath(idb, relayID, relay.addr(), session)
	b.sock.AddRelayPath(ida, relayID, relay.addr(), session)

	ln, err := b.tr.Listen(b.tls(t, nil), quicConf)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	accepted := make(chan *quic.Conn, 1)
	go func() { c, _ := ln.Accept(ctx); accepted <- c }()
	ca, err := a.tr.Dial(ctx, virtB, a.tls(t, &idb), quicConf)
	if err != nil {
		t.Fatalf("dial through relay: %v", err)
	}
	cb := <-accepted
	if cb == nil {
		t.Fatal("accept through relay failed")
	}
	a.sock.Confirm(idb)
	b.sock.Confirm(ida)
	setKeys(t, a, b, ca, cb)
	if pi, _ := a.sock.Path(idb); !pi.Relayed || !pi.Confirmed {
		t.Fatalf("path after relayed handshake: %+v", pi)
	}
	if relay.passed.Load() == 0 {
		t.Fatal("the relay forwarded nothing")
	}

	// A steady datagram stream a -> b for the whole test.
	var got atomic.Int64
	go func() {
		for {
			if _, err := cb.ReceiveDatagram(context.Background()); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		msg := make([]byte, 1000)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
				ca.SendDatagram(msg)
			}
		}
	}()
	waitFor(t, 3*time.Second, "datagrams through the relay", func() bool { return got.Load() > 50 })

	// A middlebox on the direct path; a learns it as b's candidate address.
	direct := newForwarder(t, loopback(a.udp), loopback(b.udp), false, [16]byte{})
	if n := a.sock.Punch(idb, []netip.AddrPort{direct.addr()}); n != 1 {
		t.Fatalf("Punch took %d addresses", n)
	}
	took := waitFor(t, 10*time.Second, "both ends on the direct path", func() bool {
		pa, _ := a.sock.Path(idb)
		pb, _ := b.sock.Path(ida)
		return !pa.Relayed && pa.Current == direct.addr() && !pb.Relayed
	})
	t.Logf("relay -> direct in %v", took)
	before := got.Load()
	waitFor(t, 3*time.Second, "datagrams on the direct path", func() bool { return got.Load() > before+50 })
	r, err := a.sock.Ping(ctx, idb)
	if err != nil || r.Path.Kind != "direct" {
		t.Fatalf("ping: %+v, %v", r, err)
	}

	// The direct path becomes a black hole: both ends fall back to the relay.
	direct.blackhole.Store(true)
	defer func() {
		pa, _ := a.sock.Paths(idb)
		pb, _ := b.sock.Paths(ida)
		t.Logf("a's paths to b: %+v", pa)
		t.Logf("b's paths to a: %+v", pb)
	}()
	took = waitFor(t, 8*time.Second, "fallback to the relay", func() bool {
		pa, _ := a.sock.Path(idb)
		return pa.Relayed
	})
	tookB := waitFor(t, 8*time.Second, "fallback to the relay", func() bool {
		pb, _ := b.sock.Path(ida)
		return pb.Relayed
	})
	t.Logf("black hole -> relay in %v (sender), %v more (receiver)", took, tookB)
	before = got.Load()
	waitFor(t, 3*time.Second, "datagrams after the fallback", func() bool { return got.Load() > before+50 })
	if ca.Context().Err() != nil || cb.Context().Err() != nil {
		t.Fatal("the connection broke")
	}
	if _, sw := a.sock.Paths(idb); sw < 2 {
		t.Fatalf("a counted %d switches, want at least 2", sw)
	}
}

// TestForgedProbeRejected: probes from anyone without the session key never
// prove a path, even when they echo a real transaction ID.
func TestForgedProbeRejected(t *testing.T) {
	a, b := newEnd(t, true), newEnd(t, true)
	ca, cb := connect(t, a, b)
	setKeys(t, a, b, ca, cb)
	idb := b.kp.Identity()
	waitFor(t, 3*time.Second, "the real path measured", func() bool {
		ps, _ := a.sock.Paths(idb)
		return len(ps) > 0 && ps[0].RTT > 0
	})
	orig, _ := a.sock.Path(idb)

	// The attacker is offered as a punch candidate (say, a lie in a contact
	// record): it sees a's probe and answers with the right transaction ID,
	// claiming to be b, but cannot compute the MAC.
	evil := listenUDP(t)
	defer evil.Close()
	if a.sock.Punch(idb, []netip.AddrPort{loopback(evil)}) != 1 {
		t.Fatal("Punch refused its first candidate")
	}
	if a.sock.Punch(idb, []netip.AddrPort{netip.MustParseAddrPort("198.18.9.9:9")}) != 0 {
		t.Fatal("a second Punch during the first was taken: a peer could make us probe anyone at will")
	}
	evil.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 2048)
	var answered int
	for answered < 2 {
		n, src, err := evil.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("the attacker got %d probes: %v", answered, err)
		}
		req, err := wire.ParseProbe(buf[:n])
		if err != nil || req.Type != wire.ProbeRequest {
			continue
		}
		var wrong [32]byte
		rand.Read(wrong[:])
		forged := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeReply, TxID: req.TxID, Timestamp: req.Timestamp}, From: idb, Observed: src}
		forged.Seal(&wrong, a.kp.Identity())
		evil.WriteToUDPAddrPort(wire.AppendProbe(nil, &forged), src)
		// And a request with a bad MAC, asking a to answer.
		fr := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeRequest, TxID: 7, Timestamp: time.Now().UnixNano()}, From: idb}
		fr.Seal(&wrong, a.kp.Identity())
		evil.WriteToUDPAddrPort(wire.AppendProbe(nil, &fr), src)
		answered++
	}
	waitFor(t, 2*time.Second, "forged probes counted", func() bool { return a.sock.Stats().DropProbeMAC >= 4 })
	ps, _ := a.sock.Paths(idb)
	for _, p := range ps {
		if p.Addr == loopback(evil).String() && p.Validated {
			t.Fatal("a forged reply proved the attacker's path")
		}
	}
	if now, _ := a.sock.Path(idb); now.Current != orig.Current || now.Relayed {
		t.Fatalf("traffic moved from %v to %v", orig.Current, now.Current)
	}
	// A frame for a session nobody set up is dropped and counted.
	before := a.sock.Stats().DropRelay
	frame := wire.AppendRelayHeader(nil, wire.RelayHeader{Session: [16]byte{1}})
	evil.WriteToUDPAddrPort(append(frame, 0x40, 1, 2, 3), loopback(a.udp))
	waitFor(t, 2*time.Second, "spoofed relay frame dropped", func() bool { return a.sock.Stats().DropRelay > before })
}

// TestRelayForwardingBatches runs a relay on a real smartsock Conn (its
// forwarder a two-endpoint stand-in for relay/server) and checks that a
// QUIC stream between two ends arrives intact while the relay gathers
// frames into GSO writes.
func TestRelayForwardingBatches(t *testing.T) {
	a, b := newEnd(t, true), newEnd(t, true)
	ida, idb := a.kp.Identity(), b.kp.Identity()
	rkp := newKey(t)
	rudp := listenUDP(t)
	r, err := New(rudp, Config{Keypair: rkp})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	addrA, addrB := loopback(a.udp), loopback(b.udp)
	r.SetRelayForwarder(func(frame []byte, src netip.AddrPort, _ time.Time) bool {
		switch src {
		case addrA:
			r.SendRelay(frame, addrB)
		case addrB:
			r.SendRelay(frame, addrA)
		default:
			return false
		}
		return true
	})
	go func() { // the relay's read loop (quic-go's, on a node)
		ms := make([]ipv4.Message, 16)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 2048)}
			ms[i].OOB = make([]byte, 128)
		}
		for {
			if _, err := r.ReadBatch(ms, 0); err != nil {
				return
			}
		}
	}()
	var session [16]byte
	rand.Read(session[:])
	virtB := a.sock.AddRelayPath(idb, rkp.Identity(), loopback(rudp), session)
	b.sock.AddRelayPath(ida, rkp.Identity(), loopback(rudp), session)
	ln, err := b.tr.Listen(b.tls(t, nil), quicConf)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan *quic.Conn, 1)
	go func() { c, _ := ln.Accept(ctx); accepted <- c }()
	ca, err := a.tr.Dial(ctx, virtB, a.tls(t, &idb), quicConf)
	if err != nil {
		t.Fatalf("dial through the relay: %v", err)
	}
	cb := <-accepted
	if cb == nil {
		t.Fatal("accept failed")
	}
	// 8 MiB on a stream: full-size packets, reliably delivered, checked
	// byte for byte.
	const size = 8 << 20
	want := make([]byte, size)
	rand.Read(want)
	errc := make(chan error, 1)
	go func() {
		str, err := ca.OpenStreamSync(ctx)
		if err == nil {
			_, err = str.Write(want)
			str.Close()
		}
		errc <- err
	}()
	str, err := cb.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(str)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("%d of %d bytes through the relay (intact: %v), %v", len(got), size, bytes.Equal(got, want), err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	st := r.Stats()
	t.Logf("relay: %d frames forwarded in %d GSO writes (plus single writes)", st.RxForwarded, st.TxForwardGSO)
	if st.TxForwardGSO == 0 {
		t.Fatal("the relay never gathered frames into a GSO write")
	}
}
