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
	var r recheck
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
	} {
		if got := sameVerdict(&base, &c.s); got != c.same {
			t.Errorf("%s: sameVerdict %v, want %v", name, got, c.same)
		}
	}
}
