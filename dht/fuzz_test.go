package dht

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
)

// policeTransport answers every call with a PONG from the first hint, and
// counts hints addrpolicy refuses (for a node not on loopback): the DHT
// must never hand it one, whatever a peer sent.
type policeTransport struct {
	calls   atomic.Int64
	refused atomic.Int64
	mu      sync.Mutex
	first   string // the first refused hint, for the failure message
}

func (p *policeTransport) Call(_ context.Context, to Contact, _ []byte) ([]byte, netip.AddrPort, error) {
	p.calls.Add(1)
	for _, a := range to.Addrs {
		if !addrpolicy.Dialable(a, false) {
			if p.refused.Add(1) == 1 {
				p.mu.Lock()
				p.first = fmt.Sprintf("%v (to %s)", a, to.Identity.Short())
				p.mu.Unlock()
			}
		}
	}
	var at netip.AddrPort
	if len(to.Addrs) > 0 {
		at = to.Addrs[0]
	}
	return appendMessage(nil, &message{Type: msgPong}), at, nil
}

// fuzzAddr turns fuzz bytes into an address: 6 bytes IPv4 and port, 18
// bytes IPv6 and port, anything else none (a relayed peer).
func fuzzAddr(b []byte) netip.AddrPort {
	switch len(b) {
	case 6:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(b[4])<<8|uint16(b[5]))
	case 18:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[:16])), uint16(b[16])<<8|uint16(b[17]))
	}
	return netip.AddrPort{}
}

// fuzzFrames splits fuzz input into up to 16 requests, each
//
//	who u8 | [32 identity bytes if who == 255] | addrLen u8 | addr | len u16 | request
//
// who picks one of keys (or the given identity: any 32 bytes), addr is
// where the request came from (see fuzzAddr).
type fuzzFrame struct {
	who  int
	id   pki.Identity
	addr netip.AddrPort
	req  []byte
}

func fuzzFrames(b []byte) []fuzzFrame {
	var out []fuzzFrame
	r := newReader(b, nil)
	for r.Len() > 0 && r.Err() == nil && len(out) < 16 {
		var f fuzzFrame
		f.who = int(r.U8())
		if f.who == 255 {
			copy(f.id[:], r.Bytes(32))
		}
		f.addr = fuzzAddr(r.Bytes(int(r.U8())))
		f.req = r.Bytes(int(r.U16()))
		if r.Err() == nil {
			out = append(out, f)
		}
	}
	return out
}

func appendFrame(b []byte, who int, addr []byte, req []byte) []byte {
	b = append(b, byte(who), byte(len(addr)))
	b = append(b, addr...)
	b = append(b, byte(len(req)>>8), byte(len(req)))
	return append(b, req...)
}

// FuzzHandleRequest feeds the request handler a sequence of arbitrary
// requests from arbitrary identities at arbitrary addresses (inside a
// synctest bubble, so the check pings they cause have finished before the
// checks): it must never panic, answer only well-formed responses within
// MaxMessageSize, keep its table and store within their caps, keep table
// contacts at one address it may send to, and never hand the transport an
// address addrpolicy refuses.
func FuzzHandleRequest(f *testing.F) {
	var keys []*pki.Keypair
	for i := range 4 {
		keys = append(keys, testKeypair(f, byte(40+i), 0))
	}
	self := testKeypair(f, 39, 0)
	pub := netip.MustParseAddrPort("198.18.0.7:4433")
	enc4 := func(a netip.AddrPort) []byte {
		v := a.Addr().As4()
		return append(v[:], byte(a.Port()>>8), byte(a.Port()))
	}
	// Records expire in 2100: the bubble's clock starts in 2000.
	rec := signedRecord(f, keys[1], 1, time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), pub)
	var target NodeID
	target[0] = 0x80
	var all []byte
	for i, kp := range keys {
		me := Contact{Identity: kp.Identity(), Nonce: kp.Nonce(), Addrs: []netip.AddrPort{pub}}
		at := enc4(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 9}), 4433))
		for _, m := range []*message{
			{Type: msgPing, Sender: me},
			{Type: msgFindNode, Sender: me, Target: target},
			{Type: msgFindValue, Sender: me, Target: rec.ID()},
			{Type: msgFindValue, Sender: me, Target: rec.ID(), PrefixBits: 96},
			{Type: msgStore, Sender: me, Record: rec},
			{Type: msgPing, Sender: Contact{Identity: kp.Identity(), Addrs: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}}},
		} {
			raw := appendMessage(nil, m)
			f.Add(appendFrame(nil, i, at, raw))
			f.Add(appendFrame(nil, i, enc4(netip.MustParseAddrPort("127.0.0.1:4433")), raw))
			f.Add(appendFrame(nil, i, nil, raw))
			all = appendFrame(all, i, at, raw)
		}
	}
	f.Add(all)
	f.Add(append(append([]byte{255}, make([]byte, 32)...), 0, 0, 2, wireVersion, byte(msgPing)))

	f.Fuzz(func(t *testing.T, b []byte) {
		frames := fuzzFrames(b)
		synctest.Test(t, func(t *testing.T) {
			tr := &policeTransport{}
			d, err := New(self, tr, []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:4433")},
				Config{PoWBits: NoPoW, InsertBurst: 1000, MaxPerPrefixPerBucket: MaxK, Identities: fuzzIDs})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for _, fr := range frames {
				from := fr.id
				if fr.who != 255 {
					from = keys[fr.who%len(keys)].Identity()
				}
				resp, err := d.HandleRequest(from, fr.addr, fr.req)
				if err != nil {
					continue
				}
				if len(resp) > MaxMessageSize {
					t.Fatalf("%d-byte response", len(resp))
				}
				if m, err := decodeMessage(resp, nil); err != nil || m.Type.isRequest() {
					t.Fatalf("response %x does not decode as a response: %v", resp, err)
				}
			}
			synctest.Wait() // the check pings are done
			if n := tr.refused.Load(); n > 0 {
				t.Fatalf("%d hints the policy refuses reached the transport, first %s", n, tr.first)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.table.size > len(frames) || len(d.store.byID) > len(frames) {
				t.Fatalf("%d requests grew the table to %d, the store to %d", len(frames), d.table.size, len(d.store.byID))
			}
			for _, u := range d.store.perPeer {
				if u.entries > PerPeerEntryLimit || u.bytes > PerPeerStorageQuota {
					t.Fatalf("one peer stores %d records, %d bytes", u.entries, u.bytes)
				}
			}
			for i := range d.table.buckets {
				for _, e := range d.table.buckets[i].entries {
					if len(e.c.Addrs) != 1 || !addrpolicy.Dialable(e.c.Addrs[0], false) {
						t.Fatalf("table contact at %v", e.c.Addrs)
					}
				}
			}
		})
	})
}

// fuzzIDs is shared by the fuzz iterations' DHTs (a memo of a pure check).
var fuzzIDs = NewIdentityCache(DefaultIdentityCacheSize)
