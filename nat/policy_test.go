package nat

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestDecide(t *testing.T) {
	h1, h2, h3 := pki.Identity{1}, pki.Identity{2}, pki.Identity{3}
	o1, o2 := ap("198.18.0.1:7400"), ap("198.18.0.2:7400")
	for _, c := range []struct {
		name    string
		answers []answer
		want    verdict
		ok      bool
	}{
		{"nobody answered", []answer{{id: h1}, {id: h2}}, verdict{}, false},
		{"one dial-back: public, no relays", []answer{{id: h1, observed: o1, relays: true}, {id: h2, observed: o1, relays: true, dialBack: true}},
			verdict{public: true, observed: []netip.AddrPort{o1}}, true},
		{"behind NAT: relaying helpers become relays", []answer{{id: h1, observed: o1, relays: true}, {id: h2, observed: o2}, {id: h3, observed: o1, relays: true}},
			verdict{observed: []netip.AddrPort{o1, o2}, relays: []pki.Identity{h1, h3}}, true},
		{"at most two relays", []answer{{id: h1, observed: o1, relays: true}, {id: h2, observed: o1, relays: true}, {id: h3, observed: o1, relays: true}},
			verdict{observed: []netip.AddrPort{o1}, relays: []pki.Identity{h1, h2}}, true},
		{"a silent helper counts for nothing", []answer{{id: h1, relays: true, dialBack: true}, {id: h2, observed: o2}},
			verdict{observed: []netip.AddrPort{o2}}, true},
		{"a busy helper (no dial-back sent) says nothing of reachability", []answer{{id: h1, observed: o1, relays: true, busy: true}},
			verdict{observed: []netip.AddrPort{o1}, relays: []pki.Identity{h1}}, false},
		{"a busy helper beside one whose dial-back came: public", []answer{{id: h1, observed: o1, busy: true}, {id: h2, observed: o1, dialBack: true}},
			verdict{public: true, observed: []netip.AddrPort{o1}}, true},
	} {
		got, ok := decide(c.answers)
		if ok != c.ok || got.public != c.want.public || !slices.Equal(got.observed, c.want.observed) || !slices.Equal(got.relays, c.want.relays) {
			t.Errorf("%s: decide = %+v, %v; want %+v, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

// A peer's punch candidates never make us probe our own host or link,
// broadcast, multicast or unspecified addresses; loopback only when we
// listen on loopback ourselves.
func TestPunchable(t *testing.T) {
	mk := func() []netip.AddrPort {
		return []netip.AddrPort{ap("127.0.0.1:22"), ap("[fe80::1]:7400"), ap("198.18.3.1:7400"), ap("255.255.255.255:7400"),
			ap("198.18.255.255:0"), ap("[ff02::1]:7400"), ap("[::ffff:127.0.0.1]:7400"), ap("0.0.0.0:7400")}
	}
	got, refused := punchable(mk(), false)
	if !slices.Equal(got, []netip.AddrPort{ap("198.18.3.1:7400")}) || refused != 7 {
		t.Fatalf("kept %v, refused %d", got, refused)
	}
	got, refused = punchable(mk(), true)
	if !slices.Equal(got, []netip.AddrPort{ap("127.0.0.1:22"), ap("198.18.3.1:7400"), ap("[::ffff:127.0.0.1]:7400")}) || refused != 5 {
		t.Fatalf("on loopback: kept %v, refused %d", got, refused)
	}
}

func TestCandidates(t *testing.T) {
	obs := []netip.AddrPort{ap("198.18.0.1:1"), ap("198.18.0.2:1")}
	var adv []netip.AddrPort
	for i := range 10 {
		adv = append(adv, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), 1))
	}
	adv = append([]netip.AddrPort{obs[1]}, adv...)
	got := candidates(obs, adv)
	if len(got) != relay.MaxCandidates || got[0] != obs[0] || got[1] != obs[1] || got[2] != adv[1] {
		t.Fatalf("candidates %v: want the observed first, no repeats, at most %d", got, relay.MaxCandidates)
	}
	if len(obs) != 2 {
		t.Fatal("candidates changed its argument")
	}
}

func TestDialAddrs(t *testing.T) {
	addrs := []netip.AddrPort{ap("127.0.0.1:7400"), ap("198.18.0.1:7400"), ap("[fe80::1]:7400"), ap("198.18.0.2:7400"), ap("198.18.0.3:7400")}
	ok, refused, why := dialAddrs(addrs, false)
	if !slices.Equal(ok, []netip.AddrPort{ap("198.18.0.1:7400"), ap("198.18.0.2:7400")}) || refused != 2 || why == nil {
		t.Fatalf("network's word: %v, %d refused (%v); want 2 of the first %d", ok, refused, why, MaxDialAddrs)
	}
	ok, refused, _ = dialAddrs(addrs, true)
	if !slices.Equal(ok, []netip.AddrPort{ap("127.0.0.1:7400"), ap("198.18.0.1:7400"), ap("198.18.0.2:7400")}) || refused != 1 {
		t.Fatalf("user's choice: %v, %d refused", ok, refused)
	}
}

func TestRelaysToAsk(t *testing.T) {
	self, target, r1, r2 := pki.Identity{1}, pki.Identity{2}, pki.Identity{3}, pki.Identity{4}
	for _, c := range []struct {
		in, want []pki.Identity
	}{
		{nil, nil},
		{[]pki.Identity{r1, r2}, []pki.Identity{r1, r2}},
		{[]pki.Identity{self, r1}, []pki.Identity{r1}},
		{[]pki.Identity{target, target}, nil},
		{[]pki.Identity{r1, r2, pki.Identity{5}}, []pki.Identity{r1, r2}}, // at most two asked
	} {
		if got := relaysToAsk(c.in, self, target); !slices.Equal(got, c.want) {
			t.Errorf("relaysToAsk(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestObserveFlags(t *testing.T) {
	for _, c := range []struct {
		relaying, public, want bool
	}{{false, false, false}, {true, false, false}, {false, true, false}, {true, true, true}} {
		if got := observeRelays(observeFlags(c.relaying, c.public)); got != c.want {
			t.Errorf("relaying %v public %v: relays %v", c.relaying, c.public, got)
		}
	}
}
