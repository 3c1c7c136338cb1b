package smartsock

import (
	"sync"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
)

// refusalEnd is a smartsock with its read loop running and its refusal
// events collected.
type refusalEnd struct {
	*end
	mu     sync.Mutex
	events []Refusal
}

func newRefusalEnd(t *testing.T) *refusalEnd {
	r := &refusalEnd{end: &end{kp: newKey(t), udp: listenUDP(t)}}
	s, err := New(r.udp, Config{Keypair: r.kp, PoWBits: testPoW, OnRefusal: func(ev Refusal) {
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	r.sock = s
	r.end.tr = &quic.Transport{Conn: s, ConnectionIDGenerator: ConnIDGenerator{}}
	ln, err := r.tr.Listen(r.tls(t, nil), quicConf) // runs the read loop
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); r.tr.Close(); s.Close() })
	return r
}

func (r *refusalEnd) got() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Refusal(nil), r.events...)
}

// A refusal is taken only from an address we have a path to, addressed to
// us, fresh and signed; a low-PoW or same-identity one only from the
// identity of that path, a wrong-identity one only from someone else.
func TestRefusalAcceptedOnlyWhereItFits(t *testing.T) {
	a := newRefusalEnd(t)
	x, y := newKey(t), newKey(t)
	raw := listenUDP(t)
	defer raw.Close()
	rawAddr := loopback(raw)
	aAddr := loopback(a.udp)
	send := func(r wire.Refusal) {
		if _, err := raw.WriteToUDPAddrPort(wire.AppendRefusal(nil, &r), aAddr); err != nil {
			t.Fatal(err)
		}
	}
	now := func() int64 { return time.Now().UnixNano() }
	// No path to rawAddr yet: ignored.
	send(wire.NewRefusal(y, a.kp.Identity(), RefuseWrongIdentity, 0, 1, now()))
	waitStat(t, "unknown address dropped", func() bool { return a.sock.stats.DropBadProbe.Load() == 1 })
	// We dial x at rawAddr.
	if _, err := a.sock.AddPeer(x.Identity(), rawAddr); err != nil {
		t.Fatal(err)
	}
	bad := []wire.Refusal{
		wire.NewRefusal(y, x.Identity(), RefuseWrongIdentity, 0, 2, now()),                    // not to us
		wire.NewRefusal(y, a.kp.Identity(), RefuseLowPoW, 24, 3, now()),                       // low PoW from someone else
		wire.NewRefusal(x, a.kp.Identity(), RefuseWrongIdentity, 0, 4, now()),                 // x says it is not x
		wire.NewRefusal(y, a.kp.Identity(), RefuseSameIdentity, 0, 5, now()),                  // same identity from someone else
		wire.NewRefusal(x, a.kp.Identity(), RefuseLowPoW, 24, 6, now()-int64(10*time.Minute)), // stale
	}
	forged := wire.NewRefusal(x, a.kp.Identity(), RefuseLowPoW, 24, 7, now())
	forged.Bits = 30 // not what x signed
	bad = append(bad, forged)
	for _, r := range bad {
		send(r)
	}
	waitStat(t, "bad refusals dropped", func() bool {
		s := a.sock.Stats()
		return s.DropBadProbe+s.DropStaleHello == 1+uint64(len(bad))
	})
	if ev := a.got(); len(ev) != 0 {
		t.Fatalf("accepted %+v", ev)
	}
	send(wire.NewRefusal(y, a.kp.Identity(), RefuseWrongIdentity, 0, 8, now()))
	send(wire.NewRefusal(x, a.kp.Identity(), RefuseLowPoW, 24, 9, now()))
	waitStat(t, "two events", func() bool { return len(a.got()) == 2 })
	ev := a.got()
	if ev[0].Local || ev[0].Peer != x.Identity() || ev[0].From != y.Identity() || ev[0].Reason != RefuseWrongIdentity || ev[0].Addr != rawAddr {
		t.Fatalf("wrong-identity event %+v", ev[0])
	}
	if ev[1].Peer != x.Identity() || ev[1].From != x.Identity() || ev[1].Bits != 24 || ev[1].Have != a.kp.PoWBits() {
		t.Fatalf("low-PoW event %+v", ev[1])
	}
}

// A well-signed hello for another identity, or from one below our proof of
// work, is answered with a signed refusal (smaller than the hello) and
// reported; a flood of them gets at most the refusal rate of answers.
func TestRefusedHelloAnswered(t *testing.T) {
	b := newRefusalEnd(t)
	raw := listenUDP(t)
	defer raw.Close()
	dialer := newKey(t)
	other := newKey(t)
	hello := wire.NewHello(dialer, other.Identity(), 42, time.Now().UnixNano())
	if _, err := raw.WriteToUDPAddrPort(wire.AppendHello(nil, &hello), loopback(b.udp)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := raw.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	r, err := wire.ParseRefusal(buf[:n])
	if err != nil || !r.Verify(nil) || r.From != b.kp.Identity() || r.To != dialer.Identity() || r.Reason != RefuseWrongIdentity || r.TxID != 42 {
		t.Fatalf("refusal %+v %v", r, err)
	}
	if n >= wire.HelloSize {
		t.Fatalf("a refusal of %d bytes answers a hello of %d", n, wire.HelloSize)
	}
	waitStat(t, "local event", func() bool { return len(b.got()) == 1 })
	if ev := b.got()[0]; !ev.Local || ev.Peer != dialer.Identity() || ev.Wanted != other.Identity() || ev.Addr != loopback(raw) {
		t.Fatalf("event %+v", ev)
	}
	// A weak identity's hello to b.
	var weak *pki.Keypair
	for seed := byte(1); weak == nil || weak.PoWBits() >= testPoW; seed++ {
		weak, _ = pki.NewKeypair(append(make([]byte, 31), seed), 0)
	}
	raw.WriteToUDPAddrPort(wire.AppendHello(nil, ptr(wire.NewHello(weak, b.kp.Identity(), 43, time.Now().UnixNano()))), loopback(b.udp))
	n, _, err = raw.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := wire.ParseRefusal(buf[:n]); err != nil || r.Reason != RefuseLowPoW || int(r.Bits) != testPoW {
		t.Fatalf("low-PoW refusal %+v %v", r, err)
	}
	// A flood: at most refusalRate answers a second.
	start := time.Now()
	const flood = 200
	for i := 0; i < flood; i++ {
		h := wire.NewHello(dialer, other.Identity(), uint64(100+i), time.Now().UnixNano())
		raw.WriteToUDPAddrPort(wire.AppendHello(nil, &h), loopback(b.udp))
	}
	waitStat(t, "flood handled", func() bool {
		s := b.sock.Stats()
		return s.TxRefusal+s.DropRefusalRate+s.DropHelloRate+s.DropHelloSrcRate >= flood+2
	})
	s := b.sock.Stats()
	limit := uint64(refusalRate + refusalRate*time.Since(start).Seconds() + 2)
	t.Logf("%d refused hellos: %d refusals sent, %d over the refusal rate, %d over the source's hello budget", flood, s.TxRefusal-2, s.DropRefusalRate, s.DropHelloSrcRate)
	if s.TxRefusal > limit {
		t.Fatalf("%d refusals sent, limit %d", s.TxRefusal, limit)
	}
}

func waitStat(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }
