package nat

import (
	"net/netip"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

// A verdict that holds doubles the wait up to natRecheckMax; a changed
// one, or a change of the advertised addresses, brings the next round at
// once and the wait back to natRecheck. The host's addresses are read at
// most every advertisedLook, and not at all while rounds are natRecheck
// apart.
func TestRecheckBacksOffWhileTheVerdictHolds(t *testing.T) {
	a := netip.MustParseAddrPort("198.18.0.1:7400")
	b := netip.MustParseAddrPort("198.18.0.2:7400")
	adv := []netip.AddrPort{a}
	looks := 0
	advertised := func() []netip.AddrPort { looks++; return adv }
	now := time.Unix(1_000_000, 0)
	r := recheck{jitter: func(time.Duration) time.Duration { return 0 }}
	none := &Status{}
	v := &Status{Checked: true, Public: true, Observed: []netip.AddrPort{a}}

	// rounds runs rounds until d has passed, and returns the gaps between them.
	rounds := func(d time.Duration, verdict func(i int) *Status) []time.Duration {
		var gaps []time.Duration
		end, last, prev := now.Add(d), now, none
		for i := 0; now.Before(end); i++ {
			if r.due(now, advertised) {
				if i > 0 {
					gaps = append(gaps, now.Sub(last))
				}
				nv := verdict(len(gaps))
				r.checked(prev, nv, adv, now)
				prev, last = nv, now
			}
			now = now.Add(time.Second)
		}
		return gaps
	}
	same := func(int) *Status { return v }
	gaps := rounds(2*time.Hour, same)
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute, 16 * time.Minute, 16 * time.Minute}
	if len(gaps) < len(want) {
		t.Fatalf("gaps %v, want %v...", gaps, want)
	}
	for i, w := range want {
		if gaps[i] != w {
			t.Fatalf("gap %d is %v, want %v (all: %v)", i, gaps[i], w, gaps)
		}
	}
	// Looks at the host's addresses: not during the first minute-apart
	// round, then one per advertisedLook at most.
	if max := int(2*time.Hour/advertisedLook) + 1; looks == 0 || looks > max {
		t.Fatalf("%d looks at the advertised addresses in 2 h, want 1..%d", looks, max)
	}

	// The addresses change in the middle of a 16-minute wait: a round
	// within advertisedLook, and the next one a minute later.
	r.next = now.Add(10 * time.Minute)
	adv = []netip.AddrPort{b}
	start := now
	for !r.due(now, advertised) {
		now = now.Add(time.Second)
		if now.Sub(start) > time.Minute {
			t.Fatal("no round within a minute of the advertised addresses changing")
		}
	}
	if d := now.Sub(start); d > advertisedLook {
		t.Fatalf("a round %v after the addresses changed, want <= %v", d, advertisedLook)
	}
	r.checked(v, v, adv, now)
	if r.wait != natRecheck {
		t.Fatalf("after an address change the wait is %v, want %v", r.wait, natRecheck)
	}

	// A changed verdict (behind a NAT now) resets the wait too.
	r.wait = natRecheckMax
	natted := &Status{Checked: true, Observed: []netip.AddrPort{b}}
	r.checked(v, natted, adv, now)
	if r.wait != natRecheck {
		t.Fatalf("after a changed verdict the wait is %v, want %v", r.wait, natRecheck)
	}
}

func TestSameVerdict(t *testing.T) {
	a := netip.MustParseAddrPort("198.18.0.1:7400")
	b := netip.MustParseAddrPort("198.18.0.2:7400")
	base := Status{Checked: true, Public: true, Observed: []netip.AddrPort{a}}
	for name, c := range map[string]struct {
		s    Status
		same bool
	}{
		"same":           {base, true},
		"unchecked":      {Status{Public: true, Observed: []netip.AddrPort{a}}, false},
		"not public":     {Status{Checked: true, Observed: []netip.AddrPort{a}}, false},
		"other observed": {Status{Checked: true, Public: true}, false},
		"relays":         {Status{Checked: true, Public: true, Observed: []netip.AddrPort{a}, Relays: make([]pki.Identity, 1)}, false},
		"other relayers": {Status{Checked: true, Public: true, Observed: []netip.AddrPort{a}, Relayers: make([]pki.Identity, 1)}, true},
		"two observed":   {Status{Checked: true, Public: true, Observed: []netip.AddrPort{a, b}}, false},
	} {
		if got := sameVerdict(&base, &c.s); got != c.same {
			t.Errorf("%s: sameVerdict %v, want %v", name, got, c.same)
		}
	}
}

// Helpers answer in any order: the same addresses and relays in another
// order are the same verdict (else every round could look changed and
// bring the wait back to a minute).
func TestSameVerdictIgnoresOrder(t *testing.T) {
	a := netip.MustParseAddrPort("198.18.0.1:7400")
	b := netip.MustParseAddrPort("198.18.0.2:7400")
	var p, q pki.Identity
	p[0], q[0] = 1, 2
	x := Status{Checked: true, Observed: []netip.AddrPort{a, b}, Relays: []pki.Identity{p, q}}
	y := Status{Checked: true, Observed: []netip.AddrPort{b, a}, Relays: []pki.Identity{q, p}}
	if !sameVerdict(&x, &y) {
		t.Fatal("the same verdict in another order counts as changed")
	}
	y.Relays = []pki.Identity{q, q}
	if sameVerdict(&x, &y) {
		t.Fatal("other relays count as the same")
	}
}

// Nodes that started together do not recheck together: the waits of 1,000
// nodes from the same verdict spread over a quarter of the wait, and none
// is shorter than the wait.
func TestRecheckWaitsSpread(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	v := &Status{Checked: true, Public: true}
	var first, last time.Time
	for i := range 1000 {
		var r recheck
		r.checked(v, v, nil, now) // first round: natRecheck
		r.checked(v, v, nil, now) // held: 2 x natRecheck
		w := r.next.Sub(now)
		if w < 2*natRecheck || w > 2*natRecheck+2*natRecheck/4 {
			t.Fatalf("a wait of %v, want %v..%v", w, 2*natRecheck, 2*natRecheck*5/4)
		}
		if i == 0 || r.next.Before(first) {
			first = r.next
		}
		if r.next.After(last) {
			last = r.next
		}
	}
	if spread := last.Sub(first); spread < 2*natRecheck/8 {
		t.Fatalf("1,000 nodes' next rounds spread over %v, want >= %v", spread, 2*natRecheck/8)
	}
}
