package overlay

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

// newCacheNode starts a node with the DHT on, a memory device and, when
// cache is set, a peer cache at that path.
func newCacheNode(t *testing.T, kp *pki.Keypair, cache string, log *slog.Logger, boot ...Contact) *testNode {
	t.Helper()
	if kp == nil {
		var err error
		if kp, err = pki.GenerateKeypair(context.Background(), testPoW); err != nil {
			t.Fatal(err)
		}
	}
	if log == nil {
		log = testLogger(t)
	}
	dev := newMemDevice()
	nd, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Bootstrap: boot,
		Logger: log, DHT: dhtConfigForOneHost(), PeerCache: cache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Close() })
	return &testNode{nd, dev}
}

// reach sends UDP packets from a's device to b's SmartAddr (one a second:
// the first may be answered with Destination Unreachable while a resolves
// b) until b's device gets one, within d.
func reach(a, b *testNode, d time.Duration) error {
	payload := []byte(fmt.Sprintf("from %s to %s", a.id.Short(), b.id.Short()))
	pkt := udp6(a.addr, b.addr, payload)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		a.dev.Send(pkt)
		tm := time.NewTimer(time.Second)
	wait:
		for {
			select {
			case got := <-b.dev.Got:
				if bytes.Equal(got, pkt) {
					tm.Stop()
					return nil
				}
			case <-tm.C:
				break wait
			}
		}
	}
	return fmt.Errorf("%s did not reach %s by SmartAddr within %v", a.id.Short(), b.id.Short(), d)
}

// TestRejoinFromPeerCache: a node reaches five peers (and the seed) by
// SmartAddr, caches their signed records and saves them at Close; it is
// restarted with the same key while its only bootstrap peer (the seed) is
// gone, rejoins through the cache and reaches 5 of 5 earlier peers by
// SmartAddr.
func TestRejoinFromPeerCache(t *testing.T) {
	seed := newCacheNode(t, nil, "", nil)
	var others []*testNode
	for range 5 {
		others = append(others, newCacheNode(t, nil, "", nil, seed.contact()))
	}
	dir := t.TempDir()
	cachePath := filepath.Join(dir, "key.peers")
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	x := newCacheNode(t, kp, cachePath, nil, seed.contact())
	started := time.Now()
	// Everyone has joined the DHT before x looks them up.
	waitFor(t, "DHT joins", 30*time.Second, func() bool {
		for _, nd := range append([]*testNode{x}, others...) {
			if s := nd.Status().DHT; s == nil || s.TableSize < 1 {
				return false
			}
		}
		return true
	})
	for _, o := range others {
		if err := reach(x, o, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "x caches the seed and the five peers", 30*time.Second, func() bool {
		return x.PeerCache().Count == 6
	})
	// Six peers came one by one, but the file is written at most every
	// peerCacheSaveEvery (and once more at Close).
	if saves, most := x.PeerCache().Saves, 1+uint64(time.Since(started)/peerCacheSaveEvery); saves > most {
		t.Fatalf("%d saves in %v, at most %d allowed", saves, time.Since(started), most)
	}
	x.Close()
	if got := x.PeerCache().Saves; got == 0 {
		t.Fatal("nothing saved at Close")
	}
	fi, err := os.Stat(cachePath)
	if err != nil {
		t.Fatalf("no peer cache file after Close: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("peer cache mode %v, want 0600", fi.Mode().Perm())
	}
	seed.Close() // the only bootstrap peer is gone

	t0 := time.Now()
	x2 := newCacheNode(t, kp, cachePath, nil, seed.contact())
	if st := x2.PeerCache(); st.Loaded != 6 || st.Count != 6 || st.LoadError != "" {
		t.Fatalf("restarted node's cache: %+v, want 6 loaded", st)
	}
	reached := 0
	for _, o := range others {
		if err := reach(x2, o, 30*time.Second); err != nil {
			t.Error(err)
			continue
		}
		reached++
	}
	st := x2.PeerCache()
	t.Logf("rejoin: reached %d of 5 earlier peers by SmartAddr in %v without a bootstrap peer (%d rejoin rounds, %d cached peers dialed)",
		reached, time.Since(t0).Round(time.Millisecond), st.Rejoins, st.Rejoined)
	if reached != 5 {
		t.Fatalf("reached %d of 5 earlier peers", reached)
	}
	if st.Rejoins == 0 || st.Rejoined == 0 {
		t.Fatalf("the peers were not reached through the cache: %+v", st)
	}
}

// warnCounter counts warnings that mention the peer cache.
type warnCounter struct {
	mu sync.Mutex
	n  int
}

func (w *warnCounter) Enabled(context.Context, slog.Level) bool { return true }
func (w *warnCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn && strings.Contains(r.Message, "peer cache") {
		w.mu.Lock()
		w.n++
		w.mu.Unlock()
	}
	return nil
}
func (w *warnCounter) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnCounter) WithGroup(string) slog.Handler      { return w }
func (w *warnCounter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// TestPeerCacheBadFile: a corrupt or truncated cache file costs exactly one
// warning; the node starts without it, still works, rewrites the cache
// once it reached peers, and never touches the key file beside it.
func TestPeerCacheBadFile(t *testing.T) {
	seed := newCacheNode(t, nil, "", nil)
	peer := newCacheNode(t, nil, "", nil, seed.contact())
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "key")
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.SaveKeyFile(keyPath, kp); err != nil {
		t.Fatal(err)
	}
	keyBytes, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	cachePath := keyPath + ".peers"

	// A good file first, to truncate.
	x := newCacheNode(t, kp, cachePath, nil, seed.contact())
	waitFor(t, "x caches two peers", 30*time.Second, func() bool {
		if x.Status().DHT.TableSize < 1 {
			return false
		}
		x.ConnectIdentity(context.Background(), peer.id)
		return x.PeerCache().Count == 2
	})
	x.Close()
	good, err := os.ReadFile(cachePath)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"garbage", []byte("\x00\x01not a peer cache at all")},
		{"truncated", good[:len(good)-7]},
		{"bad header", append([]byte("korium-tun-peers v9\n"), good[20:]...)},
		{"huge length", append(append([]byte(nil), good[:20]...), 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(cachePath, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			wc := &warnCounter{}
			nd := newCacheNode(t, kp, cachePath, slog.New(wc), seed.contact())
			// Nothing loaded from it. The node may already have cached
			// the seed it bootstrapped from (a live entry, Count 1), not
			// the file's two.
			st := nd.PeerCache()
			if st.LoadError == "" || st.Loaded != 0 || st.Count > 1 {
				t.Fatalf("a %s cache file was used: %+v", tc.name, st)
			}
			if got := wc.count(); got != 1 {
				t.Fatalf("%d peer-cache warnings for a %s file, want 1", got, tc.name)
			}
			// The node works without it, and saves a good cache at Close.
			if err := reach(nd, peer, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the peer is cached again", 30*time.Second, func() bool { return nd.PeerCache().Count >= 1 })
			nd.Close()
			if got := wc.count(); got != 1 {
				t.Fatalf("%d peer-cache warnings by the end, want 1", got)
			}
			back, err := os.ReadFile(keyPath)
			if err != nil || !bytes.Equal(back, keyBytes) {
				t.Fatalf("the key file changed (%v)", err)
			}
			nd3 := newCacheNode(t, kp, cachePath, nil, seed.contact())
			if st := nd3.PeerCache(); st.LoadError != "" || st.Loaded < 1 {
				t.Fatalf("the rewritten cache does not load: %+v", st)
			}
			nd3.Close()
		})
	}
}

// A peer whose record cannot be fetched (it runs no DHT, or its record
// does not reach us) is asked again 5, 10, 20 and 40 s after each failure
// and then left alone while connected; its next connection tries once
// more. Before, every failure was retried 5 s later for as long as the
// peer stayed: with a thousand such peers the sweep ran its 8 lookups
// every 5 s forever (852 lookups, 844 failed, in 12 minutes of an idle
// node at 1,000 peers; most of its packets).
func TestPeerCacheFetchBacksOff(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	var f fetchState
	if !f.mayFetch(t0, false) {
		t.Fatal("a peer never asked is not due")
	}
	now := t0
	for i, want := range []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second} {
		f = f.failed(now)
		if f.gaveUp() || f.next.Sub(now) != want {
			t.Fatalf("after %d failures: next in %v (given up %v), want %v", i+1, f.next.Sub(now), f.gaveUp(), want)
		}
		if f.mayFetch(now.Add(want-time.Millisecond), false) || !f.mayFetch(now.Add(want), false) {
			t.Fatalf("after %d failures: due before %v, or not at it", i+1, want)
		}
		now = now.Add(want)
	}
	f = f.failed(now)
	if !f.gaveUp() {
		t.Fatalf("after %d failures: not given up (%+v)", peerCacheMaxFails, f)
	}
	if f.mayFetch(now.Add(24*time.Hour), false) {
		t.Fatal("a peer given up on is swept again")
	}
	if !f.mayFetch(now, true) {
		t.Fatal("a peer given up on is not tried again when it connects again")
	}
	if f = f.failed(now); !f.gaveUp() || f.mayFetch(now.Add(time.Hour), false) {
		t.Fatalf("the new connection's failed try: %+v, want given up again", f)
	}
}

// A sweep whose every fetch failed waits twice as long before the next
// (5 s up to 10 minutes), one that got a record goes back to 5 s, one
// with nothing to fetch leaves it: with a thousand connected peers that
// publish no record, the per-peer backoff alone left the sweep's budget
// (8 lookups per 5 s) as the rate for the better part of an hour (1,049
// failed fetches 8 minutes after the peers joined, 1.15 lookups/s).
func TestPeerCacheSweepBacksOff(t *testing.T) {
	d := peerCacheSweep
	var seen []time.Duration
	for range 10 {
		d = nextSweep(d, peerCacheSweepMax, 0)
		seen = append(seen, d)
	}
	if seen[0] != 2*peerCacheSweep || seen[len(seen)-1] != peerCacheRefresh {
		t.Fatalf("waits after failed sweeps: %v; want doubling from %v to %v", seen, 2*peerCacheSweep, peerCacheRefresh)
	}
	if got := nextSweep(d, 0, 0); got != d {
		t.Errorf("a sweep with nothing to fetch changed the wait %v to %v", d, got)
	}
	if got := nextSweep(d, 3, 1); got != peerCacheSweep {
		t.Errorf("a sweep that got a record: wait %v, want %v", got, peerCacheSweep)
	}
}
