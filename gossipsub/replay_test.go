package gossipsub

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/pki"
)

// replayRig is one subscribed router and a hand-driven neighbour whose
// receive limits are lifted, so that it can push 10,000 messages at once.
func replayRig(t *testing.T, cfg Config) (*simNet, *simNode, *simNode, *Subscription) {
	cfg.ReceiveRate, cfg.ReceiveBurst = 1e9, 1<<20
	cfg.RelayRate = 1e9
	net, nodes := line(t, 1, cfg)
	t.Cleanup(func() { closeAll(nodes) })
	sub, err := nodes[0].r.Subscribe("t")
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	peer := net.addNode(t, 99, netip.MustParseAddr("192.0.2.1"), rng, nil)
	peer.raw = func(pki.Identity, []byte) {}
	net.connect(peer, nodes[0])
	return net, nodes[0], peer, sub
}

// freshKeys returns n keys nobody used before (they cost nothing).
func freshKeys(t *testing.T, n int) []*pki.Keypair {
	ks := make([]*pki.Keypair, n)
	for i := range ks {
		ks[i] = testKey(t, 1_000_000+i)
	}
	return ks
}

// TestReplayAfterSeenEviction is the attack of the issue: a signed message
// is delivered; 10,000 messages from fresh keys push its publisher out of
// the replay filter (MaxSeenSources); the old message, sent again, must not
// be delivered again.
func TestReplayAfterSeenEviction(t *testing.T) {
	keys := freshKeys(t, DefaultConfig().MaxSeenSources)
	synctest.Test(t, func(t *testing.T) {
		_, r, peer, sub := replayRig(t, Config{})
		victim := testKey(t, 42)
		old := WireMessage{Seqno: 7, Timestamp: nowMs(), Topic: "t", Data: []byte("pay 10 to bob")}
		SignMessage(victim, &old)
		oldRPC := AppendRPC(nil, &RPC{Msgs: []WireMessage{old}})
		r.r.HandleRPC(peer.id, oldRPC)
		synctest.Wait()
		if m := <-sub.Messages(); string(m.Data) != "pay 10 to bob" {
			t.Fatalf("first delivery: %q", m.Data)
		}
		time.Sleep(time.Second)
		var batch []WireMessage
		for i, k := range keys {
			m := WireMessage{Seqno: 1, Timestamp: nowMs(), Topic: "t", Data: []byte("x")}
			SignMessage(k, &m)
			if batch = append(batch, m); len(batch) == DefaultLimits().MaxMsgs || i == len(keys)-1 {
				r.r.HandleRPC(peer.id, AppendRPC(nil, &RPC{Msgs: batch}))
				batch = nil
				synctest.Wait()
			}
			select { // keep the subscription from overflowing
			case <-sub.Messages():
			default:
			}
		}
		synctest.Wait()
		for len(sub.Messages()) > 0 {
			<-sub.Messages()
		}
		st := r.r.Stats()
		if st.Delivered != uint64(1+len(keys)) || st.DropSeenEvicted == 0 {
			t.Fatalf("delivered %d, seen windows evicted %d: the flood did not push the publisher out", st.Delivered, st.DropSeenEvicted)
		}
		r.r.HandleRPC(peer.id, oldRPC)
		synctest.Wait()
		select {
		case m := <-sub.Messages():
			t.Fatalf("replayed message delivered again after %d evictions: %q", st.DropSeenEvicted, m.Data)
		default:
		}
		if got := r.r.Stats().DropReplay; got != st.DropReplay+1 {
			t.Fatalf("replay counted %d times, want once", got-st.DropReplay)
		}
		// The victim publishes again, later: that message is new.
		time.Sleep(time.Millisecond)
		next := WireMessage{Seqno: 8, Timestamp: nowMs(), Topic: "t", Data: []byte("pay 5 to carol")}
		SignMessage(victim, &next)
		r.r.HandleRPC(peer.id, AppendRPC(nil, &RPC{Msgs: []WireMessage{next}}))
		synctest.Wait()
		select {
		case m := <-sub.Messages():
			if string(m.Data) != "pay 5 to carol" {
				t.Fatalf("got %q", m.Data)
			}
		default:
			t.Fatal("the evicted publisher's next message was refused")
		}
	})
}

// TestMessageAgeWindow: a message older than MaxMessageAge, or more than
// MaxClockSkew in the future, is refused and counted; one inside is
// delivered with its publish time. A changed time breaks the signature.
func TestMessageAgeWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, r, peer, sub := replayRig(t, Config{})
		k := testKey(t, 43)
		now := time.Now()
		send := func(seq uint64, at time.Time, forge bool) {
			m := WireMessage{Seqno: seq, Timestamp: unixMilli(at), Topic: "t", Data: []byte{byte(seq)}}
			SignMessage(k, &m)
			if forge {
				m.Timestamp = unixMilli(now)
			}
			r.r.HandleRPC(peer.id, AppendRPC(nil, &RPC{Msgs: []WireMessage{m}}))
			synctest.Wait()
		}
		send(1, now.Add(-2*time.Minute-time.Millisecond), false) // too old
		send(2, now.Add(5*time.Second+time.Millisecond), false)  // too far ahead
		send(3, now.Add(-3*time.Minute), true)                   // old, time rewritten
		send(4, now.Add(-2*time.Minute), false)                  // oldest accepted
		send(5, now.Add(5*time.Second), false)                   // furthest ahead accepted
		st := r.r.Stats()
		if st.DropTooOld != 1 || st.DropFuture != 1 || st.DropInvalidSignature != 1 || st.Delivered != 2 {
			t.Fatalf("too old %d, future %d, bad signature %d, delivered %d; want 1, 1, 1, 2",
				st.DropTooOld, st.DropFuture, st.DropInvalidSignature, st.Delivered)
		}
		for _, want := range []time.Time{now.Add(-2 * time.Minute), now.Add(5 * time.Second)} {
			if m := <-sub.Messages(); !m.Published.Equal(want) {
				t.Fatalf("published %v, want %v", m.Published, want)
			}
		}
	})
}

// TestRelaySignalReplay: a relay signal is delivered; 10,000 fresh signals
// (RelaySeen) push it out of the seen set; sent again it is refused. A
// signal older than RelayMaxAge (30 s) is refused.
func TestRelaySignalReplay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, r, peer, _ := replayRig(t, Config{})
		origin := testKey(t, 44)
		sig := RelaySignal{Target: r.id, Nonce: 1, Timestamp: nowMs(), Hops: 2, Payload: []byte("punch at 198.18.0.9:4000")}
		SignRelaySignal(origin, &sig)
		oldRPC := AppendRPC(nil, &RPC{Relay: []RelaySignal{sig}})
		r.r.HandleRPC(peer.id, oldRPC)
		synctest.Wait()
		if s := <-r.r.Signals(); string(s.Payload) != "punch at 198.18.0.9:4000" {
			t.Fatalf("first signal: %q", s.Payload)
		}
		time.Sleep(time.Second)
		n := DefaultConfig().RelaySeen
		var batch []RelaySignal
		for i := 0; i < n; i++ {
			s := RelaySignal{Target: r.id, Nonce: uint64(100 + i), Timestamp: nowMs(), Hops: 2, Payload: []byte("x")}
			SignRelaySignal(peer.key, &s)
			if batch = append(batch, s); len(batch) == DefaultLimits().MaxRelay || i == n-1 {
				r.r.HandleRPC(peer.id, AppendRPC(nil, &RPC{Relay: batch}))
				batch = nil
				synctest.Wait()
			}
		}
		st := r.r.Stats()
		if st.RelayDelivered != uint64(1+n) || st.DropRelaySeenEvicted == 0 {
			t.Fatalf("delivered %d, seen evicted %d", st.RelayDelivered, st.DropRelaySeenEvicted)
		}
		for len(r.r.Signals()) > 0 {
			<-r.r.Signals()
		}
		r.r.HandleRPC(peer.id, oldRPC)
		synctest.Wait()
		if got := r.r.Stats(); got.RelayDelivered != st.RelayDelivered || got.DropRelayDuplicate != st.DropRelayDuplicate+1 {
			t.Fatalf("replayed signal: delivered %d (was %d), duplicates %d (was %d)",
				got.RelayDelivered, st.RelayDelivered, got.DropRelayDuplicate, st.DropRelayDuplicate)
		}
		// A signal from 31 s ago, however new its nonce.
		stale := RelaySignal{Target: r.id, Nonce: 999999, Timestamp: unixMilli(time.Now().Add(-31 * time.Second)), Hops: 2, Payload: []byte("y")}
		SignRelaySignal(origin, &stale)
		r.r.HandleRPC(peer.id, AppendRPC(nil, &RPC{Relay: []RelaySignal{stale}}))
		synctest.Wait()
		if got := r.r.Stats(); got.DropRelayStale != 1 || got.RelayDelivered != st.RelayDelivered {
			t.Fatalf("stale signal: stale drops %d, delivered %d", got.DropRelayStale, got.RelayDelivered)
		}
		// The seen set forgets signals past their age: after a minute of
		// heartbeats it is empty again.
		time.Sleep(time.Minute)
		var left int
		r.r.do(func() { left = r.r.relaySeen.len() })
		if left != 0 {
			t.Fatalf("%d signals older than RelayMaxAge still remembered", left)
		}
	})
}
