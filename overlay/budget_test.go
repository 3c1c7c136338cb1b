package overlay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
	"github.com/korium/korium-tun/rpc"
)

// Issue 9, item 1: memory under half-sent requests.
const (
	attackers        = 4
	streamsPerAttack = 64 // a peer's whole stream allowance
	attackHeapLimit  = 40 << 20
	// maxReopen bounds how often one attacker slot reopens a stream the
	// victim ended, so a refusing victim costs the test bounded work.
	maxReopen = 40
)

// TestHalfSentRequestsBounded is the attack: 4 connected peers each open 64
// streams, announce a request at its protocol's cap, send all of it but the
// last byte and stall, reopening every stream the victim ends. The
// victim's live heap (HeapAlloc after a GC) must grow by less than 40 MiB,
// and an honest peer's DHT requests and 1 MiB application requests must
// complete meanwhile. In "node-full" the victim's NodeBudget is only twice
// a PeerBudget, so the attackers fill it and the honest peer's requests go
// through by taking from them.
func TestHalfSentRequestsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: moves a few hundred MiB over loopback")
	}
	for _, v := range []struct {
		name  string
		proto byte
		size  int
		cfg   rpc.Config
	}{
		{"dht", rpc.ProtoDHT, dht.MaxMessageSize, rpc.Config{}},
		{"app", rpc.ProtoApp, MaxRequestSize, rpc.Config{}},
		{"app-node-full", rpc.ProtoApp, MaxRequestSize, rpc.Config{NodeBudget: 2 * rpc.DefaultPeerBudget}},
	} {
		t.Run(v.name, func(t *testing.T) { halfSentAttack(t, v.proto, v.size, v.cfg) })
	}
}

func newAttackNode(t testing.TB, withDHT bool, rc rpc.Config, boot ...Contact) *testNode {
	t.Helper()
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	dev := newMemDevice()
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Bootstrap: boot,
		Logger: testLogger(t), DisableDHT: !withDHT, DisablePubSub: !withDHT, DHT: dhtConfigForOneHost(), RPC: rc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{n, dev}
}

// liveHeap is HeapAlloc and HeapInuse after a full collection.
func liveHeap() (alloc, inuse uint64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.HeapInuse
}

// honestRound is one round of honest traffic from h to v: 5 DHT pings, a
// FIND_NODE lookup through v, and 2 application requests of 1 MiB whose
// answer is the request's SHA-256. It returns the latencies by kind.
func honestRound(t testing.TB, h, v *testNode, big []byte) (dhtLat, appLat []time.Duration) {
	t.Helper()
	c := dht.Contact{Identity: v.id}
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		_, err := h.dht.Ping(ctx, c)
		cancel()
		if err != nil {
			t.Fatalf("honest DHT ping %d: %v", i, err)
		}
		dhtLat = append(dhtLat, time.Since(start))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	start := time.Now()
	found, err := h.dht.FindPeers(ctx, dht.IDOf(h.id))
	cancel()
	if err != nil || !slices.ContainsFunc(found, func(c dht.Contact) bool { return c.Identity == v.id }) {
		t.Fatalf("honest FIND_NODE through the victim: %d contacts, %v", len(found), err)
	}
	dhtLat = append(dhtLat, time.Since(start))
	want := sha256.Sum256(big)
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		start := time.Now()
		resp, err := h.Send(ctx, v.id, big)
		cancel()
		if err != nil || !bytes.Equal(resp, want[:]) {
			t.Fatalf("honest 1 MiB request %d: %x, %v", i, resp, err)
		}
		appLat = append(appLat, time.Since(start))
	}
	return dhtLat, appLat
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// attack runs the attacking streams and counts what they did.
type attack struct {
	wg        sync.WaitGroup
	sent      atomic.Int64 // slots whose first attempt ended (written in full or refused)
	stalled   atomic.Int64 // slots now holding a request written in full, stalled
	exhausted atomic.Int64 // slots that gave up after maxReopen attempts
	written   atomic.Int64 // requests written in full (all but the last byte)
	ended     atomic.Int64 // attempts the victim ended
}

func halfSentAttack(t *testing.T, proto byte, size int, victimRPC rpc.Config) {
	victim := newAttackNode(t, true, victimRPC)
	victim.SetRequestHandler(func(_ context.Context, _ pki.Identity, req []byte) ([]byte, error) {
		h := sha256.Sum256(req)
		return h[:], nil
	})
	honest := newAttackNode(t, true, rpc.Config{}, victim.contact())
	var bad []*testNode
	for i := 0; i < attackers; i++ {
		bad = append(bad, newAttackNode(t, false, rpc.Config{}, victim.contact()))
	}
	waitFor(t, "everyone connected", 20*time.Second, func() bool {
		for _, b := range append([]*testNode{honest}, bad...) {
			if !connected(b, victim)() {
				return false
			}
		}
		return true
	})
	waitFor(t, "the victim in the honest peer's DHT table", 20*time.Second, func() bool {
		s := honest.Status().DHT
		return s != nil && s.TableSize >= 1
	})
	big := bytes.Repeat([]byte{0x5a}, MaxRequestSize)
	// Honest traffic before the attack, for the latency ratio (twice: the
	// first round warms up lookups and buffers).
	honestRound(t, honest, victim, big)
	dht0, app0 := honestRound(t, honest, victim, big)
	base, baseInuse := liveHeap()

	// The attack. Every slot shares one read-only payload.
	junk := make([]byte, size-1)
	hdr := binary.AppendUvarint([]byte{proto}, uint64(size))
	ctx, cancel := context.WithCancel(context.Background())
	var a attack
	defer func() {
		cancel()
		a.wg.Wait()
	}()
	for _, b := range bad {
		conn := b.peer(victim.id).Conn
		for range streamsPerAttack {
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				for try := 0; ; try++ {
					if try > maxReopen {
						a.exhausted.Add(1)
						return
					}
					str, err := conn.OpenStreamSync(ctx)
					if err != nil {
						return
					}
					_, err = str.Write(hdr)
					if err == nil {
						_, err = str.Write(junk)
					}
					if try == 0 {
						a.sent.Add(1)
					}
					if err == nil {
						a.written.Add(1)
						a.stalled.Add(1)
						select {
						case <-ctx.Done():
						case <-str.Context().Done(): // the victim refused or reset it
						}
						a.stalled.Add(-1)
					}
					str.CancelWrite(0)
					str.CancelRead(0)
					if ctx.Err() != nil {
						return
					}
					a.ended.Add(1)
				}
			}()
		}
	}
	const slots = attackers * streamsPerAttack
	waitFor(t, "every attack slot's first request written or refused", 120*time.Second, func() bool {
		return a.sent.Load() == slots
	})
	var peak, peakInuse uint64
	var peakBuffered int64
	sample := func() {
		h, in := liveHeap()
		peak, peakInuse = max(peak, h), max(peakInuse, in)
		peakBuffered = max(peakBuffered, victim.RPCStats().Buffered)
	}
	// While the attackers reopen what the victim refuses.
	sample()
	dht1, app1 := honestRound(t, honest, victim, big)
	sample()
	// Once every slot either stalls on a request the victim holds or has
	// given up reopening.
	waitFor(t, "every attack slot stalled or out of retries", 120*time.Second, func() bool {
		return a.stalled.Load()+a.exhausted.Load() == slots
	})
	sample()
	dht2, app2 := honestRound(t, honest, victim, big)
	sample()

	grow := int64(peak) - int64(base)
	rs := victim.RPCStats()
	t.Logf("%d attackers x %d streams x %d B of proto %d: victim HeapAlloc +%.1f MiB (HeapInuse +%.1f MiB), at most %.1f MiB buffered; attack: %d written in full, %d ended by the victim, %d slots stalled, %d out of retries",
		attackers, streamsPerAttack, size-1, proto, mib(grow), mib(int64(peakInuse)-int64(baseInuse)), mib(peakBuffered),
		a.written.Load(), a.ended.Load(), a.stalled.Load(), a.exhausted.Load())
	t.Logf("honest latency (median) before -> while attackers reopen -> while they stall: DHT %v -> %v (x%.1f) -> %v (x%.1f); 1 MiB app %v -> %v (x%.1f) -> %v (x%.1f)",
		median(dht0), median(dht1), ratio(dht1, dht0), median(dht2), ratio(dht2, dht0),
		median(app0), median(app1), ratio(app1, app0), median(app2), ratio(app2, app0))
	t.Logf("victim rpc stats: %+v", rs)
	if grow >= attackHeapLimit {
		t.Errorf("victim heap grew by %.1f MiB under the attack, want < %d MiB", mib(grow), attackHeapLimit>>20)
	}
	// The budgets, not a lack of pressure, held the heap: each attacker
	// holds about its budget (or all it sent, if that is less), and what
	// did not fit was refused and counted.
	peer := min(int64(rpc.DefaultPeerBudget), int64(streamsPerAttack)*int64(size-1))
	node := int64(rpc.DefaultNodeBudget)
	if victimRPC.NodeBudget > 0 {
		node = int64(victimRPC.NodeBudget)
	}
	if want := min(node, attackers*peer) / 2; peakBuffered < want {
		t.Errorf("the victim buffered at most %.1f MiB: the attack did not press (want >= %.1f MiB)", mib(peakBuffered), mib(want))
	}
	if peakBuffered > node {
		t.Errorf("the victim buffered %.1f MiB, above its node budget %.1f MiB", mib(peakBuffered), mib(node))
	}
	switch {
	case attackers*peer > node:
		if rs.Preempted+rs.OverNodeBudget == 0 {
			t.Errorf("the node budget was full but nothing was taken or refused for it: %+v", rs)
		}
	case streamsPerAttack*int64(size-1) > peer:
		if rs.OverPeerBudget == 0 {
			t.Errorf("no stream was refused for the per-peer budget: %+v", rs)
		}
	}
	if st := victim.Status(); st.Drops["rpc_over_peer_budget"] != rs.OverPeerBudget {
		t.Errorf("status shows rpc_over_peer_budget %d, rpc says %d", st.Drops["rpc_over_peer_budget"], rs.OverPeerBudget)
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func ratio(during, before []time.Duration) float64 {
	return float64(median(during)) / float64(median(before))
}

// TestRPCCapsFitProtocols: the node caps each protocol at its real
// maximum, on the requests it serves and on those it sends.
func TestRPCCapsFitProtocols(t *testing.T) {
	gs := rpcConfig(Config{RequestTimeout: time.Second})
	for proto, want := range map[byte]int{
		rpc.ProtoDHT:    dht.MaxMessageSize,
		rpc.ProtoGossip: 1 << 20, // gossipsub's default Limits.MaxRPCSize
		rpc.ProtoRelay:  relay.MaxMessageSize,
		rpc.ProtoApp:    MaxRequestSize,
		rpc.ProtoCA:     DefaultCAMessageSize,
	} {
		if got := gs.MaxSize.Max(proto); got != want {
			t.Errorf("protocol %d capped at %d, want %d", proto, got, want)
		}
	}
	var custom Config
	custom.PubSub.Limits.MaxRPCSize = 256 << 10
	custom.RPC.MaxSize[rpc.ProtoCA] = 8 << 10
	custom.RPC.MaxSize[rpc.ProtoDHT] = 1 // not the user's to change
	cc := rpcConfig(custom)
	if cc.MaxSize.Max(rpc.ProtoGossip) != 256<<10 || cc.MaxSize.Max(rpc.ProtoCA) != 8<<10 || cc.MaxSize.Max(rpc.ProtoDHT) != dht.MaxMessageSize {
		t.Errorf("custom caps: %v", cc.MaxSize)
	}

	b := newTestNode(t, nil, "")
	a := newTestNode(t, nil, "", b.contact())
	waitFor(t, "connection", 5*time.Second, connected(a, b))
	b.RegisterProtocol(rpc.ProtoRelay, func(context.Context, pki.Identity, []byte) ([]byte, error) { return nil, nil })
	big := make([]byte, relay.MaxMessageSize+1)
	// Sending: refused before it leaves.
	if _, err := a.Call(reqCtx(t), b.id, rpc.ProtoRelay, big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("sending a relay request above relay.MaxMessageSize: %v", err)
	}
	// Serving: a peer that sends one anyway is answered "too large".
	before := b.RPCStats().TooLarge
	if _, err := rpc.Call(reqCtx(t), a.peer(b.id).Conn, rpc.ProtoRelay, big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("serving a relay request above relay.MaxMessageSize: %v", err)
	}
	if got := b.RPCStats().TooLarge; got != before+1 {
		t.Fatalf("too_large %d -> %d", before, got)
	}
	if _, err := a.Call(reqCtx(t), b.id, rpc.ProtoRelay, big[:relay.MaxMessageSize]); err != nil {
		t.Fatalf("a relay request at the cap: %v", err)
	}
}
