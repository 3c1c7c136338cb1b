package dht

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/pki"
)

// fakeNet delivers requests instantly to handlers; a missing handler makes
// the call time out, as a dead host would.
type fakeNet struct {
	mu    sync.Mutex
	nodes map[pki.Identity]*fakeNode
}

type handler func(from pki.Identity, fromAddr netip.AddrPort, req []byte) ([]byte, error)

type fakeNode struct {
	addr netip.AddrPort
	h    handler
}

type fakeTransport struct {
	net  *fakeNet
	self pki.Identity
}

// Call answers from the callee's registered address, whatever the hints
// say (the transport authenticates the identity, not the hint).
func (t *fakeTransport) Call(ctx context.Context, to Contact, req []byte) ([]byte, netip.AddrPort, error) {
	t.net.mu.Lock()
	n := t.net.nodes[to.Identity]
	src := t.net.nodes[t.self]
	t.net.mu.Unlock()
	if n == nil || n.h == nil {
		<-ctx.Done()
		return nil, netip.AddrPort{}, ctx.Err()
	}
	var from netip.AddrPort
	if src != nil {
		from = src.addr
	}
	resp, err := n.h(t.self, from, req)
	return resp, n.addr, err
}

func (f *fakeNet) add(id pki.Identity, addr netip.AddrPort, h handler) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[id] = &fakeNode{addr: addr, h: h}
}

func newFakeNet() *fakeNet { return &fakeNet{nodes: make(map[pki.Identity]*fakeNode)} }

const testPoW = 6

func newTestDHT(t *testing.T, f *fakeNet, seed byte, addr string, cfg Config) *DHT {
	t.Helper()
	return newTestDHTOver(t, f, seed, addr, cfg, nil)
}

// newTestDHTOver is newTestDHT with its transport wrapped by wrap (nil:
// none).
func newTestDHTOver(t *testing.T, f *fakeNet, seed byte, addr string, cfg Config, wrap func(Transport) Transport) *DHT {
	t.Helper()
	kp := testKeypair(t, seed, testPoW)
	if cfg.PoWBits == 0 {
		cfg.PoWBits = testPoW
	}
	ap := netip.MustParseAddrPort(addr)
	var tr Transport = &fakeTransport{net: f, self: kp.Identity()}
	if wrap != nil {
		tr = wrap(tr)
	}
	d, err := New(kp, tr, []netip.AddrPort{ap}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	f.add(kp.Identity(), ap, func(from pki.Identity, fromAddr netip.AddrPort, req []byte) ([]byte, error) {
		return d.HandleRequest(from, fromAddr, req)
	})
	return d
}

// client is a hand-driven peer: it sends raw requests to a DHT.
type client struct {
	kp   *pki.Keypair
	addr netip.AddrPort
}

func (c *client) contact() Contact {
	return Contact{Identity: c.kp.Identity(), Nonce: c.kp.Nonce(), Addrs: []netip.AddrPort{c.addr}}
}

func (c *client) send(t *testing.T, d *DHT, m *message) (*message, error) {
	t.Helper()
	m.Sender = c.contact()
	raw, err := d.HandleRequest(c.kp.Identity(), c.addr, appendMessage(nil, m))
	if err != nil {
		return nil, err
	}
	return decodeMessage(raw, nil)
}

func drops(d *DHT, r DropReason) uint64 { return d.Stats().Drops[r.String()] }

func TestForgedExpiredOversizedRecordsRejected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d := newTestDHT(t, f, 1, "198.18.0.1:1", Config{})
		c := &client{kp: testKeypair(t, 2, testPoW), addr: netip.MustParseAddrPort("198.18.1.1:1")}
		now := time.Now()
		good := signedRecord(t, c.kp, 1, now.Add(time.Hour), c.addr)
		forged := *good
		forged.Addrs = []netip.AddrPort{netip.MustParseAddrPort("203.0.113.9:1")}
		expired := signedRecord(t, c.kp, 2, now.Add(-time.Minute), c.addr)
		future := signedRecord(t, c.kp, 3, now.Add(48*time.Hour), c.addr)
		weak := testKeypair(t, 3, 0)
		for pki.PoWBits(weak.Identity(), weak.Nonce()) >= testPoW {
			t.Fatal("seed 3 happens to have PoW; pick another")
		}
		noPoW := signedRecord(t, weak, 1, now.Add(time.Hour), c.addr)

		for _, tc := range []struct {
			name string
			r    *Record
		}{{"forged", &forged}, {"expired", expired}, {"far future", future}, {"no pow", noPoW}} {
			resp, err := c.send(t, d, &message{Type: msgStore, Record: tc.r})
			if err != nil || resp.Type != msgStoreAck || resp.Code != codeInvalid {
				t.Errorf("%s: got %+v, %v; want STORE_ACK invalid", tc.name, resp, err)
			}
		}
		if n := drops(d, dropBadRecord); n != 4 {
			t.Errorf("bad_record drops = %d, want 4", n)
		}
		if d.Stats().Records != 0 {
			t.Fatal("an invalid record was stored")
		}
		// Oversized: 17 addresses do not even decode.
		enc := appendMessage(nil, &message{Type: msgStore, Sender: c.contact(), Record: good})
		hdr := 2 + 32 + 8 + 1 + 7 // version, type, sender contact with one IPv4 address
		enc[hdr+32+8+8+8] = MaxAddrs + 1
		if _, err := d.HandleRequest(c.kp.Identity(), c.addr, enc); err == nil {
			t.Error("oversized record accepted")
		}
		if drops(d, dropMalformed) != 1 {
			t.Error("oversized record not counted as malformed")
		}
		// The genuine one is stored, then an older seq loses.
		if resp, _ := c.send(t, d, &message{Type: msgStore, Record: good}); resp.Code != codeOK {
			t.Fatalf("good record: code %d", resp.Code)
		}
		older := signedRecord(t, c.kp, 0, now.Add(time.Hour), c.addr)
		if resp, _ := c.send(t, d, &message{Type: msgStore, Record: older}); resp.Code != codeStale {
			t.Fatalf("older record: code %d, want stale", resp.Code)
		}
	})
}

func TestSenderWithoutPoWRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d := newTestDHT(t, f, 1, "198.18.0.1:1", Config{})
		weak := &client{kp: testKeypair(t, 3, 0), addr: netip.MustParseAddrPort("198.18.2.1:1")}
		f.add(weak.kp.Identity(), weak.addr, func(pki.Identity, netip.AddrPort, []byte) ([]byte, error) {
			return appendMessage(nil, &message{Type: msgPong}), nil
		})
		resp, err := weak.send(t, d, &message{Type: msgPing})
		if err != nil || resp.Type != msgError || resp.Code != codeRefused {
			t.Fatalf("got %+v, %v; want ERROR refused", resp, err)
		}
		// A lying sender field is refused too.
		liar := &client{kp: testKeypair(t, 4, testPoW), addr: weak.addr}
		m := &message{Type: msgPing, Sender: liar.contact()}
		if _, err := d.HandleRequest(weak.kp.Identity(), weak.addr, appendMessage(nil, m)); err == nil {
			t.Fatal("sender mismatch accepted")
		}
		// Even if it answers, a PoW-less contact never enters the table.
		if _, err := d.Ping(context.Background(), weak.contact()); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if d.Stats().TableSize != 0 {
			t.Fatal("contact without proof of work entered the table")
		}
		if drops(d, dropNoPoW) < 2 || drops(d, dropSenderMismatch) != 1 {
			t.Fatalf("drops %v", d.Stats().Drops)
		}
	})
}

func TestContactEntersOnlyAfterAnswering(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d := newTestDHT(t, f, 1, "198.18.0.1:1", Config{})
		silent := &client{kp: testKeypair(t, 5, testPoW), addr: netip.MustParseAddrPort("198.18.3.1:1")}
		f.add(silent.kp.Identity(), silent.addr, nil) // never answers
		if _, err := silent.send(t, d, &message{Type: msgPing}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // past QueryTimeout: the check ping timed out
		synctest.Wait()
		if d.Stats().TableSize != 0 {
			t.Fatal("a peer that never answered entered the table")
		}
		// One that answers enters.
		e := newTestDHT(t, f, 6, "198.18.4.1:1", Config{})
		raw := appendMessage(nil, &message{Type: msgPing, Sender: e.Self()})
		if _, err := d.HandleRequest(e.Self().Identity, e.Self().Addrs[0], raw); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if d.Stats().TableSize != 1 {
			t.Fatalf("table size %d after an answering peer asked us, want 1", d.Stats().TableSize)
		}
	})
}

// sybils returns n identities with proof of work whose node IDs all fall
// in bucket 0 or all in bucket 1 of self (whichever, chosen by first bit).
func sybils(t *testing.T, self NodeID, n int, start byte) []*pki.Keypair {
	var out []*pki.Keypair
	for s := int(start); len(out) < n && s < 256; s++ {
		kp := testKeypair(t, byte(s), testPoW)
		if CommonPrefixLen(self, IDOf(kp.Identity())) == 0 {
			out = append(out, kp)
		}
	}
	if len(out) < n {
		t.Fatalf("found %d sybils, want %d", len(out), n)
	}
	return out
}

func TestInsertionFloodFromOnePrefix(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d := newTestDHT(t, f, 1, "198.18.0.1:1", Config{MaxPerPrefixPerBucket: 2, InsertBurst: 5, InsertRefill: time.Minute})
		pong := func(pki.Identity, netip.AddrPort, []byte) ([]byte, error) {
			return appendMessage(nil, &message{Type: msgPong}), nil
		}
		// 12 identities on one /24 all in bucket 0: the per-bucket prefix
		// cap keeps 2.
		ids := sybils(t, d.ID(), 12, 10)
		for i, kp := range ids {
			c := &client{kp: kp, addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)}), 1)}
			f.add(kp.Identity(), c.addr, pong)
			if _, err := c.send(t, d, &message{Type: msgPing}); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
		}
		if got := len(d.Snapshot().Buckets[0].Contacts); got != 2 {
			t.Fatalf("bucket 0 holds %d contacts of one /24, want 2", got)
		}
		if drops(d, dropPrefixCap) == 0 {
			t.Fatal("prefix cap drops not counted")
		}
		// Across buckets, the insertion rate limit stops a flood from one
		// /24: 40 identities (spread over buckets) from 192.0.2.0/24.
		before := d.Stats().TableSize
		for s := 100; s < 140; s++ {
			kp := testKeypair(t, byte(s), testPoW)
			c := &client{kp: kp, addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(s)}), 1)}
			f.add(kp.Identity(), c.addr, pong)
			c.send(t, d, &message{Type: msgPing})
			synctest.Wait()
		}
		added := d.Stats().TableSize - before
		if added > 5 {
			t.Fatalf("one /24 inserted %d contacts, burst is 5", added)
		}
		if drops(d, dropRateLimited) == 0 {
			t.Fatal("rate-limit drops not counted")
		}
		// After the refill interval the prefix may insert again.
		time.Sleep(time.Minute)
		d.mu.Lock()
		ok := d.table.limiter.allow(netip.MustParsePrefix("192.0.2.0/24"), time.Now())
		d.mu.Unlock()
		if !ok {
			t.Fatal("no insertion allowed after the refill interval")
		}
	})
}

func TestPingOldestBeforeEvicting(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	self := IDOf(testKeypair(t, 1, 0).Identity())
	cfg := DefaultConfig()
	cfg.K = 10
	cfg.MaxPerPrefixPerBucket = 0
	tb := newTable(self, &cfg)
	var added []*pki.Keypair
	for s := 10; len(added) < 12; s++ {
		kp := testKeypair(t, byte(s), 0)
		if CommonPrefixLen(self, IDOf(kp.Identity())) == 0 {
			added = append(added, kp)
		}
	}
	contact := func(kp *pki.Keypair, i int) Contact {
		return Contact{Identity: kp.Identity(), Addrs: []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 1}), 1)}}
	}
	for i, kp := range added[:10] {
		if r, _ := tb.seen(contact(kp, i), IDOf(kp.Identity()), now); r != insAdded {
			t.Fatalf("entry %d: %v", i, r)
		}
	}
	later := now.Add(2 * time.Minute)
	r, ping := tb.seen(contact(added[10], 10), IDOf(added[10].Identity()), later)
	if r != insReplacement || ping == nil || ping.Identity != added[0].Identity() {
		t.Fatalf("full bucket: result %v ping %v; want replacement and a ping of the oldest", r, ping)
	}
	// The oldest answers: it stays and the newcomer waits.
	tb.pingResult(IDOf(added[0].Identity()), true, later)
	if !tb.contains(IDOf(added[0].Identity())) || tb.contains(IDOf(added[10].Identity())) {
		t.Fatal("an answering oldest entry was evicted")
	}
	// Next newcomer: the (new) oldest does not answer and is replaced.
	_, ping = tb.seen(contact(added[11], 11), IDOf(added[11].Identity()), later)
	if ping == nil || ping.Identity != added[1].Identity() {
		t.Fatalf("second ping %v, want the second oldest", ping)
	}
	tb.pingResult(IDOf(added[1].Identity()), false, later)
	if tb.contains(IDOf(added[1].Identity())) || !tb.contains(IDOf(added[11].Identity())) || tb.size != 10 {
		t.Fatal("a silent oldest entry was not replaced by the newest replacement")
	}
	// MaxFailures consecutive failures remove an entry.
	id := IDOf(added[2].Identity())
	for i := 0; i < cfg.MaxFailures; i++ {
		tb.failed(id)
	}
	if tb.contains(id) {
		t.Fatal("failing entry kept")
	}
}

func TestClosestMatchesBruteForce(t *testing.T) {
	self := IDOf(testKeypair(t, 1, 0).Identity())
	cfg := DefaultConfig()
	cfg.MaxPerPrefixPerBucket = 0
	cfg.InsertBurst = 0
	tb := newTable(self, &cfg)
	var all []NodeID
	now := time.Now()
	for s := 2; s < 250; s++ {
		kp := testKeypair(t, byte(s), 0)
		id := IDOf(kp.Identity())
		if r, _ := tb.seen(Contact{Identity: kp.Identity()}, id, now); r == insAdded {
			all = append(all, id)
		}
	}
	for s := 0; s < 20; s++ {
		target := IDOf(testKeypair(t, byte(s*13+1), 0).Identity())
		got := tb.closest(target, 20, NodeID{})
		want := append([]NodeID(nil), all...)
		sortByDistance(target, want)
		for i := range got {
			if got[i].id != want[i] {
				t.Fatalf("target %d: position %d differs", s, i)
			}
		}
	}
}

func sortByDistance(target NodeID, ids []NodeID) {
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && Closer(target, ids[j], ids[j-1]); j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
}

func TestForgedRecordInLookupIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d := newTestDHT(t, f, 1, "198.18.0.1:1", Config{})
		victim := testKeypair(t, 2, testPoW)
		evil := testKeypair(t, 3, testPoW)
		for pki.PoWBits(evil.Identity(), evil.Nonce()) < testPoW {
			t.Fatal("no pow")
		}
		// The evil node answers FIND_VALUE with a record for the victim that
		// it signed itself, and one with the victim's identity but a forged
		// address; and to FIND_NODE, contacts without proof of work.
		forged := signedRecord(t, victim, 1, time.Now().Add(time.Hour))
		forged.Addrs = []netip.AddrPort{netip.MustParseAddrPort("203.0.113.1:1")}
		ownSigned := signedRecord(t, evil, 1, time.Now().Add(time.Hour))
		ownSigned.Identity = victim.Identity()
		weak := testKeypair(t, 4, 0)
		evilAddr := netip.MustParseAddrPort("198.18.9.9:1")
		f.add(evil.Identity(), evilAddr, func(_ pki.Identity, _ netip.AddrPort, req []byte) ([]byte, error) {
			m, err := decodeMessage(req, nil)
			if err != nil {
				return nil, err
			}
			switch m.Type {
			case msgPing:
				return appendMessage(nil, &message{Type: msgPong}), nil
			case msgFindNode:
				return appendMessage(nil, &message{Type: msgNodes,
					Contacts: []Contact{{Identity: weak.Identity(), Nonce: weak.Nonce(), Addrs: []netip.AddrPort{evilAddr}}}}), nil
			}
			return appendMessage(nil, &message{Type: msgValue, Records: []Record{*forged, *ownSigned}}), nil
		})
		if _, err := d.Ping(context.Background(), Contact{Identity: evil.Identity(), Nonce: evil.Nonce(), Addrs: []netip.AddrPort{evilAddr}}); err != nil {
			t.Fatal(err)
		}
		rec, err := d.Resolve(context.Background(), victim.Identity())
		if rec != nil || !errors.Is(err, ErrNotFound) {
			t.Fatalf("Resolve = %v, %v; want not found", rec, err)
		}
		d.FindPeers(context.Background(), IDOf(victim.Identity()))
		if drops(d, dropBadRecord) != 2 || drops(d, dropNoPoW) != 1 {
			t.Fatalf("drops %v", d.Stats().Drops)
		}
	})
}

// A client (SetClient: behind NAT) is answered but never enters the tables
// of the nodes it asks, so lookups never wait on it; its record, with its
// addresses, is still stored and found.
func TestClientModeStaysOutOfTables(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		server := newTestDHT(t, f, 1, "198.18.0.1:1", Config{})
		cl := newTestDHT(t, f, 6, "198.18.4.1:1", Config{})
		cl.SetClient(true)
		ctx := context.Background()
		if err := cl.Bootstrap(ctx, []Contact{server.Self()}); err != nil {
			t.Fatal(err)
		}
		if err := cl.Publish(ctx); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := server.Stats().TableSize; n != 0 {
			t.Fatalf("the server's table has %d contacts after a client asked it, want 0", n)
		}
		if n := cl.Stats().TableSize; n != 1 {
			t.Fatalf("the client's table has %d contacts, want the server", n)
		}
		rec, err := server.Resolve(ctx, cl.Self().Identity)
		if err != nil || len(rec.Addrs) != 1 || rec.Addrs[0] != cl.Self().Addrs[0] {
			t.Fatalf("the client's record at the server: %+v, %v", rec, err)
		}
		// Out of client mode it enters once it answers.
		cl.SetClient(false)
		if _, err := cl.FindPeers(ctx, server.ID()); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := server.Stats().TableSize; n != 1 {
			t.Fatalf("the server's table has %d contacts after a server asked it, want 1", n)
		}
	})
}
