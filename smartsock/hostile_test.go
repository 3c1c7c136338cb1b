package smartsock

import (
	"context"
	"encoding/binary"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
	"github.com/korium/korium-tun/wire"
)

// seqStream sends n numbered datagrams from send to recv, one every
// interval, and counts which arrive.
type seqStream struct {
	n    int
	seen []atomic.Bool
	sent atomic.Int64
	got  atomic.Int64
	done chan struct{} // closed when the sender sent the last one
}

func startSeqStream(t *testing.T, send, recv *quic.Conn, n int, interval time.Duration) *seqStream {
	s := &seqStream{n: n, seen: make([]atomic.Bool, n), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			d, err := recv.ReceiveDatagram(ctx)
			if err != nil {
				return
			}
			if len(d) < 8 {
				continue
			}
			if i := binary.BigEndian.Uint64(d); i < uint64(n) && !s.seen[i].Swap(true) {
				s.got.Add(1)
			}
		}
	}()
	go func() {
		defer wg.Done()
		defer close(s.done)
		msg := make([]byte, 200)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for i := 0; i < n; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			binary.BigEndian.PutUint64(msg, uint64(i))
			if err := send.SendDatagram(msg); err != nil {
				return
			}
			s.sent.Add(1)
		}
	}()
	return s
}

// lost waits for the sender to finish and the tail to arrive (bounded),
// and returns how many datagrams were sent but never arrived. A sender that
// cannot finish (SendDatagram blocks while the connection cannot send) fails
// the test: on a loaded machine its ticks come late, but they come.
func (s *seqStream) lost(t *testing.T) int {
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the sender stalled after %d of %d datagrams", s.sent.Load(), s.n)
	}
	if s.sent.Load() != int64(s.n) {
		t.Fatalf("the connection failed after %d of %d datagrams", s.sent.Load(), s.n)
	}
	for end := time.Now().Add(2 * time.Second); s.got.Load() < int64(s.n) && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	return s.n - int(s.got.Load())
}

// The ways a peer X can name the address of another peer Y.
const (
	vecPunch   = 1 << iota // X's punch candidate (MsgPunch)
	vecRecord              // a contact record of X carrying Y's address, which we dial
	vecThird               // a record of a third identity at Y's address, which we dial
	vecHello               // a hello signed by X arriving from Y's address
	vecRequest             // a probe request MACed by X arriving from Y's address
	vecAll     = vecPunch | vecRecord | vecThird | vecHello | vecRequest
)

// TestProvenPathNotStolen: peer X, connected to us, names peer Y's proven
// address in every way it can (as its punch candidate, as the address of its
// own contact record and of a third identity's record that we dial, in hellos
// it signs and probe requests it MACs, sent from Y's very socket as a spoofer
// or a NAT-mate would) while numbered datagrams flow both ways between us and
// Y. Not one may be lost, and Y's path must never move.
func TestProvenPathNotStolen(t *testing.T) {
	for _, tc := range []struct {
		name string
		vec  int
	}{{"punch", vecPunch}, {"record", vecRecord}, {"third-identity", vecThird}, {"hello", vecHello}, {"request", vecRequest}, {"all", vecAll}} {
		t.Run(tc.name, func(t *testing.T) { testPathNotStolen(t, tc.vec) })
	}
}

func testPathNotStolen(t *testing.T, vec int) {
	a, y, x := newEnd(t, true), newEnd(t, true), newEnd(t, true)
	ida, idy, idx := a.kp.Identity(), y.kp.Identity(), x.kp.Identity()
	cay, cya := connect(t, a, y)
	setKeys(t, a, y, cay, cya)
	cax, cxa := connect(t, a, x)
	setKeys(t, a, x, cax, cxa)
	keyAX, err := PathKey(cax.ConnectionState().TLS)
	if err != nil {
		t.Fatal(err)
	}
	addrA, addrY, addrX := loopback(a.udp), loopback(y.udp), loopback(x.udp)
	waitFor(t, 5*time.Second, "both paths measured", func() bool {
		py, _ := a.sock.Paths(idy)
		px, _ := a.sock.Paths(idx)
		return len(py) > 0 && py[0].RTT > 0 && len(px) > 0 && px[0].RTT > 0
	})
	_, swAY := a.sock.Paths(idy)
	_, swYA := y.sock.Paths(ida)
	_, swAX := a.sock.Paths(idx)
	switchesBefore := a.sock.Stats().PathSwitches
	hellosBefore := a.sock.Stats().RxHello

	const n = 750 // 1.5 s at one per 2 ms, each way
	toY := startSeqStream(t, cay, cya, n, 2*time.Millisecond)
	toA := startSeqStream(t, cya, cay, n, 2*time.Millisecond)

	z := newKey(t)
	idz := z.Identity()
	zDial := make(chan error, 1)
	var moved, rounds, punched int
	helloTx := uint64(1 << 40)
	attack := time.NewTicker(20 * time.Millisecond)
	for end := time.Now().Add(n * 2 * time.Millisecond); time.Now().Before(end); <-attack.C {
		rounds++
		if vec&vecPunch != 0 {
			punched += a.sock.Punch(idx, []netip.AddrPort{addrY})
		}
		if vec&vecRecord != 0 {
			if _, err := a.sock.AddPeer(idx, addrY); err != nil {
				t.Fatal(err)
			}
		}
		if vec&vecThird != 0 {
			if _, err := a.sock.AddPeer(idz, addrY); err != nil {
				t.Fatal(err)
			}
			if rounds == 1 {
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					_, err := a.tr.Dial(ctx, net.UDPAddrFromAddrPort(smartaddr.Virtual(idz)), a.tls(t, &idz), quicConf)
					zDial <- err
				}()
			}
		}
		helloTx++
		if vec&vecHello != 0 {
			h := wire.NewHello(x.kp, ida, helloTx, time.Now().UnixNano())
			y.udp.WriteToUDPAddrPort(wire.AppendHello(nil, &h), addrA)
		}
		if vec&vecRequest != 0 {
			req := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeRequest, TxID: helloTx, Timestamp: time.Now().UnixNano()}, From: idx}
			req.Seal(&keyAX, ida)
			y.udp.WriteToUDPAddrPort(wire.AppendProbe(nil, &req), addrA)
		}
		if pi, _ := a.sock.Path(idy); pi.Current != addrY || pi.Relayed {
			moved++
		}
	}
	attack.Stop()
	lostToY, lostToA := toY.lost(t), toA.lost(t)
	t.Logf("%d attack rounds (%d punch candidates taken): lost %d of %d datagrams to Y, %d of %d from Y; Y's path elsewhere in %d samples",
		rounds, punched, lostToY, n, lostToA, n, moved)
	if lostToY != 0 || lostToA != 0 || moved != 0 {
		t.Errorf("X's word moved traffic of Y")
	}
	if _, sw := a.sock.Paths(idy); sw != swAY {
		t.Errorf("our path to Y switched %d times", sw-swAY)
	}
	if _, sw := y.sock.Paths(ida); sw != swYA {
		t.Errorf("Y's path to us switched %d times", sw-swYA)
	}
	if s := a.sock.Stats().PathSwitches; s != switchesBefore {
		t.Errorf("%d path switches during the attack", s-switchesBefore)
	}
	if pi, _ := a.sock.Path(idx); pi.Current != addrX {
		t.Errorf("X's own path moved to %v", pi.Current)
	}
	if _, sw := a.sock.Paths(idx); sw != swAX {
		t.Errorf("X's path switched %d times", sw-swAX)
	}
	ps, _ := a.sock.Paths(idx)
	for _, p := range ps {
		if p.Addr == addrY.String() && p.Validated {
			t.Errorf("Y's address became a proven path of X: %+v", p)
		}
	}
	if vec&vecThird != 0 {
		if err := <-zDial; err == nil {
			t.Error("a dial to a third identity at Y's address succeeded")
		}
		if pi, ok := a.sock.Path(idz); ok && (pi.Confirmed || pi.Current == addrY) {
			t.Errorf("the third identity got Y's path: %+v", pi)
		}
	}
	if a.sock.Stats().AddrClaimRefused == 0 {
		t.Error("no claim on Y's address was refused: the attack never reached the path table")
	}
	if vec&vecPunch != 0 && punched == 0 {
		t.Error("the punch was refused: nothing was tested")
	}
	if vec&vecHello != 0 && a.sock.Stats().RxHello == hellosBefore {
		t.Error("the attack's hellos were never read")
	}
	if cay.Context().Err() != nil || cax.Context().Err() != nil {
		t.Error("a connection broke")
	}
}

// flood sends garbage to dst from its own socket at pps until stop closes:
// probe requests claiming to be claim (passing every check short of the
// MAC), hellos to to with random signatures, and random QUIC-looking bytes.
// It returns how many it sent.
func flood(t *testing.T, dst netip.AddrPort, pps int, claim, to pki.Identity, stop <-chan struct{}) <-chan int {
	u := listenUDP(t)
	t.Cleanup(func() { u.Close() })
	sent := make(chan int, 1)
	go func() {
		rng := mrand.New(mrand.NewPCG(1, 2))
		var buf []byte
		n := 0
		start := time.Now()
		for {
			select {
			case <-stop:
				sent <- n
				return
			default:
			}
			if due := int(time.Since(start).Seconds()*float64(pps)) - n; due <= 0 {
				time.Sleep(100 * time.Microsecond)
				continue
			}
			now := time.Now().UnixNano()
			switch n % 4 {
			case 0, 1:
				p := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeRequest, TxID: rng.Uint64(), Timestamp: now}, From: claim}
				binary.BigEndian.PutUint64(p.MAC[:], rng.Uint64())
				buf = wire.AppendProbe(buf[:0], &p)
			case 2:
				h := wire.Hello{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeHello, TxID: rng.Uint64(), Timestamp: now}, To: to}
				binary.BigEndian.PutUint64(h.From[:], rng.Uint64())
				binary.BigEndian.PutUint64(h.Sig[:], rng.Uint64())
				buf = wire.AppendHello(buf[:0], &h)
			default:
				buf = append(buf[:0], 0x40|byte(rng.IntN(0x40)))
				for len(buf) < 200 {
					buf = binary.BigEndian.AppendUint64(buf, rng.Uint64())
				}
			}
			u.WriteToUDPAddrPort(buf, dst)
			n++
		}
	}()
	return sent
}

// TestProbeFloodFromOneSource: 20,000 packets/s of garbage from one address
// (probe requests claiming to be our real peer B with random MACs, hellos
// with random signatures, random bytes) while B pings us 20 times: at least
// 19 must be answered, and the flood must spend only its own source's
// budget, never the one all sources share.
func TestProbeFloodFromOneSource(t *testing.T) {
	a, b := newEnd(t, true), newEnd(t, true)
	ida, idb := a.kp.Identity(), b.kp.Identity()
	cab, cba := connect(t, a, b)
	setKeys(t, a, b, cab, cba)
	stop := make(chan struct{})
	sent := flood(t, loopback(a.udp), 20000, idb, ida, stop)
	waitFor(t, 5*time.Second, "the flood to arrive", func() bool { return a.sock.Stats().DropProbeSrcRate > 0 })
	start := time.Now()
	answered := 0
	for i := 0; i < 20; i++ {
		// As long as `korium-tun ping` waits: a late answer on a loaded
		// machine is an answer; a dropped request is not.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if _, err := b.sock.Ping(ctx, ida); err == nil {
			answered++
		}
		cancel()
		time.Sleep(50 * time.Millisecond)
	}
	el := time.Since(start)
	close(stop)
	n := <-sent
	s := a.sock.Stats()
	t.Logf("%d of 20 pings answered during a flood of %d packets (%.0f/s); a dropped %d requests over the source budget, %d for their MAC, %d hellos over the source budget, %d over the shared budgets",
		answered, n, float64(n)/(el.Seconds()+0.1), s.DropProbeSrcRate, s.DropProbeMAC, s.DropHelloSrcRate, s.DropProbeRate+s.DropHelloRate)
	if answered < 19 {
		t.Errorf("only %d of 20 pings answered", answered)
	}
	if s.DropProbeRate != 0 || s.DropHelloRate != 0 {
		t.Errorf("the flood spent the shared budgets: %d requests, %d hellos", s.DropProbeRate, s.DropHelloRate)
	}
	if s.DropHelloSrcRate == 0 {
		t.Error("no hello was held to its source's budget")
	}
}
