package dht

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
)

// Tests that play a hostile peer against the address and identity rules:
// where a peer may make us send, what it may make us store and serve, and
// which keys name nobody.

// recordingTransport wraps a transport and keeps every hint it was given.
type recordingTransport struct {
	Transport
	mu    sync.Mutex
	hints []netip.AddrPort
	calls []pki.Identity
}

func (r *recordingTransport) Call(ctx context.Context, to Contact, req []byte) ([]byte, netip.AddrPort, error) {
	r.mu.Lock()
	r.hints = append(r.hints, to.Addrs...)
	r.calls = append(r.calls, to.Identity)
	r.mu.Unlock()
	return r.Transport.Call(ctx, to, req)
}

func (r *recordingTransport) hinted(a netip.AddrPort) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, h := range r.hints {
		if h == a {
			n++
		}
	}
	return n
}

// newRecordingDHT is newTestDHT with a recordingTransport.
func newRecordingDHT(t *testing.T, f *fakeNet, seed byte, addr string, cfg Config) (*DHT, *recordingTransport) {
	t.Helper()
	rt := &recordingTransport{}
	d := newTestDHTOver(t, f, seed, addr, cfg, func(tr Transport) Transport { rt.Transport = tr; return rt })
	return d, rt
}

// answering is a peer that answers PING and, to anything else, reply.
func answering(reply *message) handler {
	return func(_ pki.Identity, _ netip.AddrPort, req []byte) ([]byte, error) {
		m, err := decodeMessage(req, nil)
		if err != nil {
			return nil, err
		}
		if m.Type == msgPing {
			return appendMessage(nil, &message{Type: msgPong}), nil
		}
		return appendMessage(nil, reply), nil
	}
}

func pongHandler(pki.Identity, netip.AddrPort, []byte) ([]byte, error) {
	return appendMessage(nil, &message{Type: msgPong}), nil
}

// One host (one address) running 24 identities, each declaring a
// different /24, fills only its diversity cap of one bucket: the table
// keys the cap, the insertion limit and what it serves by the address the
// contact was heard from. Before, each declared /24 counted as its own
// prefix and the host held 24 slots.
func TestOneHostClaimingManyPrefixes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d := newTestDHT(t, f, 1, "198.18.0.1:1", Config{K: MaxK})
		host := netip.MustParseAddrPort("203.0.113.7:4433")
		ids := sybils(t, d.ID(), 24, 10)
		for i, kp := range ids {
			f.add(kp.Identity(), host, pongHandler)
			declared := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, byte(i), 1}), 4433)
			m := &message{Type: msgPing, Sender: Contact{Identity: kp.Identity(), Nonce: kp.Nonce(), Addrs: []netip.AddrPort{declared}}}
			if _, err := d.HandleRequest(kp.Identity(), host, appendMessage(nil, m)); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
		}
		st := d.Stats()
		t.Logf("one host claiming 24 /24s holds %d table slots (cap %d; 24 before)", st.TableSize, d.cfg.MaxPerPrefixPerBucket)
		if st.TableSize > d.cfg.MaxPerPrefixPerBucket || st.TableSize == 0 {
			t.Fatalf("one host holds %d slots, want 1..%d", st.TableSize, d.cfg.MaxPerPrefixPerBucket)
		}
		if drops(d, dropPrefixCap) == 0 {
			t.Fatal("prefix-cap refusals not counted")
		}
		// What we keep and serve is where it spoke from, never what it said.
		for _, b := range d.Snapshot().Buckets {
			for _, c := range b.Contacts {
				if !slices.Equal(c.Addrs, []netip.AddrPort{host}) {
					t.Fatalf("table holds %v, want only the observed %v", c.Addrs, host)
				}
			}
		}
		asker := &client{kp: testKeypair(t, 200, testPoW), addr: netip.MustParseAddrPort("198.18.5.5:1")}
		resp, err := asker.send(t, d, &message{Type: msgFindNode, Target: IDOf(ids[0].Identity())})
		if err != nil || len(resp.Contacts) == 0 {
			t.Fatalf("FIND_NODE: %+v, %v", resp, err)
		}
		for _, c := range resp.Contacts {
			if c.Identity != asker.kp.Identity() && !slices.Equal(c.Addrs, []netip.AddrPort{host}) {
				t.Fatalf("served contact at %v, want the observed %v", c.Addrs, host)
			}
		}
	})
}

// A PING declaring a third party's address makes us send nothing there:
// the check ping goes to the address the request came from, and the table
// never holds the declared one. A sender heard only at an address we may
// not send to (or through a relay) stays out of the table and costs no
// check ping at all.
func TestPingDeclaringAnotherAddress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d, rt := newRecordingDHT(t, f, 1, "198.18.0.1:1", Config{})
		evil := testKeypair(t, 2, testPoW)
		heard := netip.MustParseAddrPort("198.18.9.9:4433")
		victim := netip.MustParseAddrPort("192.0.2.53:53")
		f.add(evil.Identity(), heard, pongHandler)
		ping := &message{Type: msgPing, Sender: Contact{Identity: evil.Identity(), Nonce: evil.Nonce(), Addrs: []netip.AddrPort{victim}}}
		if _, err := d.HandleRequest(evil.Identity(), heard, appendMessage(nil, ping)); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := rt.hinted(victim); n != 0 {
			t.Fatalf("a PING declaring %v made us hand it to the transport %d times", victim, n)
		}
		if rt.hinted(heard) != 1 {
			t.Fatalf("check ping hints %v, want one to %v", rt.hints, heard)
		}
		snap := d.Snapshot()
		if len(snap.Buckets) != 1 || !slices.Equal(snap.Buckets[0].Contacts[0].Addrs, []netip.AddrPort{heard}) {
			t.Fatalf("table %+v, want the sender at %v", snap.Buckets, heard)
		}
		t.Logf("PING declaring %v: %d calls hinted there (1 before)", victim, rt.hinted(victim))

		// Heard at loopback (we do not listen there), or through a relay
		// (no address): answered, never pinged, never added.
		calls := len(rt.calls)
		for i, from := range []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:4433"), {}} {
			kp := testKeypair(t, byte(3+i), testPoW)
			f.add(kp.Identity(), from, pongHandler)
			m := &message{Type: msgPing, Sender: Contact{Identity: kp.Identity(), Nonce: kp.Nonce(), Addrs: []netip.AddrPort{heard}}}
			raw, err := d.HandleRequest(kp.Identity(), from, appendMessage(nil, m))
			if err != nil {
				t.Fatal(err)
			}
			if resp, _ := decodeMessage(raw, nil); resp == nil || resp.Type != msgPong {
				t.Fatalf("heard at %v: answer %v, want PONG", from, resp)
			}
			synctest.Wait()
		}
		if len(rt.calls) != calls || d.Stats().TableSize != 1 {
			t.Fatalf("senders heard at refused addresses: %d calls, table %d", len(rt.calls)-calls, d.Stats().TableSize)
		}
		if drops(d, dropBadAddr) != 2 {
			t.Fatalf("bad_addr drops %d, want 2", drops(d, dropBadAddr))
		}
	})
}

// When we call a contact, it enters the table at the address the transport
// says it answered from, not at the hint that named it: a reply that names
// an honest node at a third party's address does not put that address in
// our table.
func TestContactKeptWhereItAnswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d := newTestDHT(t, f, 1, "198.18.0.1:1", Config{})
		honest := testKeypair(t, 2, testPoW)
		real := netip.MustParseAddrPort("198.18.2.2:4433")
		f.add(honest.Identity(), real, pongHandler)
		hint := netip.MustParseAddrPort("192.0.2.80:80")
		if _, err := d.Ping(context.Background(), Contact{Identity: honest.Identity(), Nonce: honest.Nonce(), Addrs: []netip.AddrPort{hint}}); err != nil {
			t.Fatal(err)
		}
		snap := d.Snapshot()
		if len(snap.Buckets) != 1 || !slices.Equal(snap.Buckets[0].Contacts[0].Addrs, []netip.AddrPort{real}) {
			t.Fatalf("table %+v, want the contact at %v", snap.Buckets, real)
		}
	})
}

// Contacts in lookup replies whose hints we may not send to lose those
// hints before any dial; a contact left with none is dropped and counted.
func TestLookupHintsFiltered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d, rt := newRecordingDHT(t, f, 1, "198.18.0.1:1", Config{})
		evil := testKeypair(t, 2, testPoW)
		evilAddr := netip.MustParseAddrPort("198.18.9.9:1")
		bad := []netip.AddrPort{
			netip.MustParseAddrPort("127.0.0.1:53"),
			netip.MustParseAddrPort("[::1]:53"),
			netip.MustParseAddrPort("0.0.0.0:53"),
			netip.MustParseAddrPort("224.0.0.251:5353"),
			netip.MustParseAddrPort("[fe80::1]:53"),
			netip.MustParseAddrPort("255.255.255.255:53"),
			netip.MustParseAddrPort("198.18.7.7:0"),
		}
		good := netip.MustParseAddrPort("198.18.3.3:4433")
		var named []Contact
		for i := range 4 {
			kp := testKeypair(t, byte(20+i), testPoW)
			c := Contact{Identity: kp.Identity(), Nonce: kp.Nonce(), Addrs: bad}
			if i == 0 {
				c.Addrs = append(slices.Clone(bad), good) // one usable hint
				f.add(kp.Identity(), good, pongHandler)
			}
			named = append(named, c)
		}
		f.add(evil.Identity(), evilAddr, answering(&message{Type: msgNodes, Contacts: named}))
		if _, err := d.Ping(context.Background(), Contact{Identity: evil.Identity(), Nonce: evil.Nonce(), Addrs: []netip.AddrPort{evilAddr}}); err != nil {
			t.Fatal(err)
		}
		d.FindPeers(context.Background(), IDOf(named[1].Identity))
		for _, a := range bad {
			if n := rt.hinted(a); n != 0 {
				t.Errorf("%v handed to the transport %d times", a, n)
			}
		}
		if rt.hinted(good) == 0 {
			t.Error("the one usable hint was never tried")
		}
		if n := drops(d, dropBadAddr); n != 3 {
			t.Errorf("bad_addr drops %d, want 3 (the contacts without a usable hint)", n)
		}
	})
}

// Our own addresses: New and SetAddrs refuse what nobody may be sent to,
// loopback unless AllowLoopback, with an error that names the address.
func TestOwnAddressesChecked(t *testing.T) {
	kp := testKeypair(t, 1, 0)
	tr := &fakeTransport{net: newFakeNet(), self: kp.Identity()}
	loop := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:4433")}
	if _, err := New(kp, tr, loop, Config{PoWBits: NoPoW}); err == nil || !strings.Contains(err.Error(), "127.0.0.1:4433") {
		t.Fatalf("New with a loopback address: %v", err)
	}
	d, err := New(kp, tr, loop, Config{PoWBits: NoPoW, AllowLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, a := range []string{"0.0.0.0:1", "224.0.0.1:1", "[fe80::1]:1", "198.18.0.1:0"} {
		err := d.SetAddrs([]netip.AddrPort{netip.MustParseAddrPort(a)})
		if err == nil || !strings.Contains(err.Error(), "refusing to advertise") {
			t.Errorf("SetAddrs(%s) = %v, want refused", a, err)
		}
	}
	if !slices.Equal(d.Self().Addrs, loop) {
		t.Fatalf("a refused SetAddrs changed our addresses to %v", d.Self().Addrs)
	}
}

// Records: at least one address, each one someone may be sent to; signed at
// most MaxClockSkew ahead of our clock.
func TestRecordRules(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	kp := testKeypair(t, 1, 0)
	good := netip.MustParseAddrPort("198.18.0.1:4433")
	// Sign refuses.
	for _, addrs := range [][]netip.AddrPort{
		nil,
		{netip.MustParseAddrPort("0.0.0.0:1")},
		{good, netip.MustParseAddrPort("[ff02::1]:1")},
		{netip.MustParseAddrPort("[fe80::1%eth0]:1")},
		{netip.MustParseAddrPort("198.18.0.1:0")},
		{{}},
	} {
		r := &Record{Addrs: addrs, Seq: 1, Expires: now.Add(time.Hour)}
		if err := r.Sign(kp); err == nil {
			t.Errorf("Sign(%v) succeeded", addrs)
		}
	}
	// The decoder refuses the same, even correctly signed.
	forceSign := func(addrs ...netip.AddrPort) []byte {
		r := &Record{Identity: kp.Identity(), Nonce: kp.Nonce(), Addrs: addrs, Seq: 1, Expires: now.Add(time.Hour)}
		copy(r.Sig[:], kp.Sign(r.SigningBytes()))
		return r.AppendBinary(nil)
	}
	for _, tc := range []struct {
		name  string
		addrs []netip.AddrPort
		want  string
	}{
		{"no address", nil, "without addresses"},
		{"unspecified", []netip.AddrPort{netip.MustParseAddrPort("[::]:4433")}, "unspecified"},
		{"multicast", []netip.AddrPort{good, netip.MustParseAddrPort("239.1.1.1:1")}, "multicast"},
		{"port 0", []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:0")}, "port 0"},
	} {
		_, err := DecodeRecord(forceSign(tc.addrs...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: DecodeRecord = %v, want an error about %q", tc.name, err, tc.want)
		}
	}
	// Loopback decodes (whether to dial it is the reader's call).
	if _, err := DecodeRecord(forceSign(netip.MustParseAddrPort("127.0.0.1:4433"))); err != nil {
		t.Fatalf("loopback record: %v", err)
	}
	// Freshness: Seq is the signing time.
	for _, tc := range []struct {
		ahead time.Duration
		ok    bool
	}{{-time.Hour, true}, {0, true}, {4 * time.Second, true}, {MaxClockSkew, true}, {6 * time.Second, false}, {time.Hour, false}} {
		r := signedRecord(t, kp, uint64(now.Add(tc.ahead).UnixNano()), now.Add(time.Hour), good)
		err := r.Verify(now, 0, 24*time.Hour)
		if tc.ok != (err == nil) || !tc.ok && !errors.Is(err, ErrFuture) {
			t.Errorf("signed %v ahead: Verify = %v", tc.ahead, err)
		}
	}
}

// STORE applies the same: a record from the future or with a loopback
// address (to a node not on loopback) is refused and counted; one 4 s ahead
// is stored.
func TestStoreRefusesFutureAndLoopbackRecords(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d := newTestDHT(t, f, 1, "198.18.0.1:1", Config{})
		c := &client{kp: testKeypair(t, 2, testPoW), addr: netip.MustParseAddrPort("198.18.1.1:1")}
		now := time.Now()
		store := func(r *Record) uint8 {
			t.Helper()
			resp, err := c.send(t, d, &message{Type: msgStore, Record: r})
			if err != nil {
				t.Fatal(err)
			}
			return resp.Code
		}
		seqAt := func(d time.Duration) uint64 { return uint64(now.Add(d).UnixNano()) }
		if code := store(signedRecord(t, c.kp, seqAt(6*time.Second), now.Add(time.Hour), c.addr)); code != codeInvalid {
			t.Errorf("record signed 6 s ahead: code %d, want invalid", code)
		}
		if code := store(signedRecord(t, c.kp, seqAt(-time.Second), now.Add(time.Hour), netip.MustParseAddrPort("127.0.0.1:5353"))); code != codeInvalid {
			t.Errorf("loopback record: code %d, want invalid", code)
		}
		if drops(d, dropBadRecord) != 1 || drops(d, dropBadAddr) != 1 {
			t.Errorf("drops %v, want one bad_record and one bad_addr", d.Stats().Drops)
		}
		if code := store(signedRecord(t, c.kp, seqAt(4*time.Second), now.Add(time.Hour), c.addr)); code != codeOK {
			t.Errorf("record signed 4 s ahead: code %d, want OK", code)
		}
		// A node that listens on loopback keeps loopback records.
		lo := newTestDHT(t, f, 3, "127.0.0.1:1", Config{AllowLoopback: true})
		resp, err := c.send(t, lo, &message{Type: msgStore, Record: signedRecord(t, c.kp, 1, now.Add(time.Hour), netip.MustParseAddrPort("127.0.0.1:5353"))})
		if err != nil || resp.Code != codeOK {
			t.Fatalf("loopback node storing a loopback record: %+v, %v", resp, err)
		}
	})
}

// A lookup answer carrying a loopback record is refused by a node that does
// not listen on loopback: Resolve never returns it.
func TestLookupRefusesLoopbackRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d := newTestDHT(t, f, 1, "198.18.0.1:1", Config{})
		owner := testKeypair(t, 2, testPoW)
		rec := signedRecord(t, owner, 1, time.Now().Add(time.Hour), netip.MustParseAddrPort("127.0.0.1:5353"))
		holder := testKeypair(t, 3, testPoW)
		holderAddr := netip.MustParseAddrPort("198.18.9.9:1")
		f.add(holder.Identity(), holderAddr, answering(&message{Type: msgValue, Records: []Record{*rec}}))
		if _, err := d.Ping(context.Background(), Contact{Identity: holder.Identity(), Nonce: holder.Nonce(), Addrs: []netip.AddrPort{holderAddr}}); err != nil {
			t.Fatal(err)
		}
		if got, err := d.Resolve(context.Background(), owner.Identity()); got != nil || !errors.Is(err, ErrNotFound) {
			t.Fatalf("Resolve = %+v, %v; want not found", got, err)
		}
		if drops(d, dropBadAddr) != 1 {
			t.Fatalf("drops %v, want one bad_addr", d.Stats().Drops)
		}
	})
}

// Transport hints the DHT hands over pass addrpolicy, whoever supplied
// them (here: a seed given with a loopback and a link-local hint).
func TestRequestDropsRefusedHints(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeNet()
		d, rt := newRecordingDHT(t, f, 1, "198.18.0.1:1", Config{})
		seed := testKeypair(t, 2, testPoW)
		at := netip.MustParseAddrPort("198.18.4.4:4433")
		f.add(seed.Identity(), at, pongHandler)
		hints := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("[fe80::2]:1"), at}
		if _, err := d.Ping(context.Background(), Contact{Identity: seed.Identity(), Nonce: seed.Nonce(), Addrs: hints}); err != nil {
			t.Fatal(err)
		}
		for _, h := range rt.hints {
			if !addrpolicy.Dialable(h, false) {
				t.Fatalf("transport got hint %v", h)
			}
		}
	})
}
