package nat

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"slices"
	"testing"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartsock"
)

func testIdentity(t testing.TB, b byte) pki.Identity {
	t.Helper()
	seed := bytes.Repeat([]byte{b}, ed25519.SeedSize)
	id, err := pki.IdentityFromBytes(ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestSignalRoundTrip(t *testing.T) {
	r1, r2 := testIdentity(t, 1), testIdentity(t, 2)
	in := []SignalRelay{
		{ID: r1, Addrs: []netip.AddrPort{ap("198.18.0.1:7400"), ap("[2001:db8::1]:7400")}},
		{ID: r2},
	}
	b := AppendSignal(nil, in)
	if !IsSignal(b) || len(b) > MaxSignalSize {
		t.Fatalf("encoding %x", b)
	}
	out, err := ParseSignal(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].ID != r1 || !slices.Equal(out[0].Addrs, in[0].Addrs) || out[1].ID != r2 || len(out[1].Addrs) != 0 {
		t.Fatalf("round trip: %+v", out)
	}
	// Too many relays and addresses, and addresses naming no peer, are
	// left out by the encoder.
	many := SignalRelay{ID: r1, Addrs: []netip.AddrPort{ap("0.0.0.0:1"), ap("198.18.0.1:1"), ap("198.18.0.1:2"), ap("198.18.0.1:3"), ap("198.18.0.1:4"), ap("198.18.0.1:5")}}
	out, err = ParseSignal(AppendSignal(nil, []SignalRelay{many, many, many, many}))
	if err != nil || len(out) != MaxSignalRelays || len(out[0].Addrs) != MaxSignalAddrs || out[0].Addrs[0] != ap("198.18.0.1:1") {
		t.Fatalf("bounded encoding: %+v, %v", out, err)
	}
}

func TestParseSignalRefuses(t *testing.T) {
	good := AppendSignal(nil, []SignalRelay{{ID: testIdentity(t, 1), Addrs: []netip.AddrPort{ap("198.18.0.1:7400")}}})
	var notPoint [32]byte
	notPoint[0] = 2 // y = 2 is not on the curve
	for _, c := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"other magic", []byte("KMRX\x01")},
		{"no count", []byte("KMRS")},
		{"zero relays", []byte("KMRS\x00")},
		{"too many relays", []byte("KMRS\x04")},
		{"truncated identity", good[:20]},
		{"truncated address", good[:len(good)-1]},
		{"trailing", append(slices.Clone(good), 0)},
		{"too many addresses", append(append([]byte("KMRS\x01"), good[5:37]...), 5)},
		{"invalid identity", append(append([]byte("KMRS\x01"), notPoint[:]...), 0)},
		{"bad address family", append(append([]byte("KMRS\x01"), good[5:37]...), 1, 9, 0, 0, 0, 0, 0, 0)},
		{"oversized", append([]byte("KMRS\x01"), make([]byte, MaxSignalSize)...)},
	} {
		if _, err := ParseSignal(c.b); err == nil {
			t.Errorf("%s: accepted %x", c.name, c.b)
		}
	}
}

func FuzzParseSignal(f *testing.F) {
	r1 := testIdentity(f, 1)
	f.Add(AppendSignal(nil, []SignalRelay{{ID: r1, Addrs: []netip.AddrPort{ap("198.18.0.1:7400")}}}))
	f.Add(AppendSignal(nil, []SignalRelay{{ID: r1}, {ID: r1, Addrs: []netip.AddrPort{ap("[2001:db8::1]:1")}}}))
	f.Add([]byte("KMRS\x03"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, err := ParseSignal(b)
		if err != nil {
			return
		}
		if len(rs) < 1 || len(rs) > MaxSignalRelays {
			t.Fatalf("%d relays", len(rs))
		}
		for _, r := range rs {
			if len(r.Addrs) > MaxSignalAddrs {
				t.Fatalf("%d addresses", len(r.Addrs))
			}
		}
		// What parses re-encodes to what parses the same (an IPv4-mapped
		// address comes back as IPv4, so the bytes may differ).
		again, err := ParseSignal(AppendSignal(nil, rs))
		if err != nil || len(again) != len(rs) {
			t.Fatalf("re-encoding %x: %v", b, err)
		}
		for i := range rs {
			if again[i].ID != rs[i].ID || !slices.Equal(again[i].Addrs, rs[i].Addrs) {
				t.Fatalf("re-encoding %x changed relay %d", b, i)
			}
		}
	})
}

func TestDeadRelays(t *testing.T) {
	p, q := testIdentity(t, 1), testIdentity(t, 2)
	up := map[pki.Identity]bool{q: true}
	connected := func(id pki.Identity) bool { return up[id] }
	relay := func(id pki.Identity, validated, alive bool, missed int) smartsock.PathStatus {
		return smartsock.PathStatus{Kind: "relay", Relay: id.String(), Validated: validated, Alive: alive, Missed: missed}
	}
	for _, c := range []struct {
		name      string
		paths     []smartsock.PathStatus
		dead      []pki.Identity
		wantAlive bool
	}{
		{"relay left", []smartsock.PathStatus{relay(p, true, true, 0)}, []pki.Identity{p}, false},
		{"relay silent", []smartsock.PathStatus{relay(q, true, false, 2)}, []pki.Identity{q}, false},
		{"one missed probe is not dead", []smartsock.PathStatus{relay(q, true, true, 1)}, nil, true},
		{"another relay path alive", []smartsock.PathStatus{relay(p, true, true, 0), relay(q, true, true, 0)}, []pki.Identity{p}, true},
		{"a new relay path on probation", []smartsock.PathStatus{relay(p, true, true, 0), relay(q, false, false, 0)}, []pki.Identity{p}, true},
		{"a direct path alive", []smartsock.PathStatus{relay(p, true, true, 0), {Kind: "direct", Validated: true, Alive: true}}, []pki.Identity{p}, true},
		{"garbage relay name skipped", []smartsock.PathStatus{{Kind: "relay", Relay: "zz"}}, nil, false},
	} {
		dead, alive := deadRelays(c.paths, connected)
		if !slices.Equal(dead, c.dead) || alive != c.wantAlive {
			t.Errorf("%s: deadRelays = %v, %v; want %v, %v", c.name, dead, alive, c.dead, c.wantAlive)
		}
	}
}

func TestMergeRelays(t *testing.T) {
	a, b, c := testIdentity(t, 1), testIdentity(t, 2), testIdentity(t, 3)
	for _, tc := range []struct {
		keep, found, want []pki.Identity
	}{
		{nil, []pki.Identity{a, b, c}, []pki.Identity{a, b}},
		{[]pki.Identity{b}, []pki.Identity{b, c}, []pki.Identity{b, c}},
		{[]pki.Identity{a, b}, []pki.Identity{c}, []pki.Identity{a, b}},
		{nil, nil, nil},
	} {
		if got := mergeRelays(tc.keep, tc.found); !slices.Equal(got, tc.want) {
			t.Errorf("mergeRelays(%v, %v) = %v, want %v", tc.keep, tc.found, got, tc.want)
		}
	}
}
