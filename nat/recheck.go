package nat

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"
)

// How often configure_nat runs again. Every round asks up to maxHelpers
// bootstrap peers for an observation and a dial-back (three packets from a
// socket of its own, dialback.go), so a bootstrap node serves a round of every node that
// bootstrapped from it: at a fixed 60 s, 1,000 such nodes cost it 17
// dial-backs a second, forever. A verdict that held doubles the wait, up
// to natRecheckMax; a changed one, or a change of the addresses we
// advertise (a host that moved to another network), brings it back to
// natRecheck at once. Each wait is lengthened by up to a quarter at
// random: nodes that started together (a cluster booted at once, a host
// of in-process peers) would otherwise ask their bootstrap node in the
// same second at every round, a herd of dial-backs it answers at once.
const (
	natRecheck    = 60 * time.Second
	natRecheckMax = 16 * time.Minute
	// advertisedLook is how often the loop compares the addresses we
	// advertise with those of the last round, while it waits longer than
	// natRecheck (reading the host's addresses is a netlink dump).
	advertisedLook = 10 * time.Second
)

// sameVerdict reports whether two configure_nat rounds found the same: the
// host learns only of a changed one (OnChange), and only a changed one
// brings rechecks back to natRecheck.
// Observed addresses and relays are compared as sets: helpers answer in
// any order.
func sameVerdict(a, b *Status) bool {
	return a.Checked == b.Checked && a.Public == b.Public && sameSet(a.Observed, b.Observed) && sameSet(a.Relays, b.Relays)
}

// sameSet reports whether a and b hold the same elements, each list being
// without repeats (a verdict's lists are a few entries: quadratic is fine).
func sameSet[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// recheck is when configure_nat runs again. Owned by the loop.
type recheck struct {
	wait     time.Duration    // since the last round; 0 before the first
	next     time.Time        // the next round; zero: at once
	adv      []netip.AddrPort // what we advertised at the last round
	lastLook time.Time
	// jitter is what a wait of d is lengthened by; nil: up to d/4 at
	// random (tests set it).
	jitter func(d time.Duration) time.Duration
}

// checked takes a round's verdict v, prev the one before it, and adv the
// addresses we advertised then.
func (r *recheck) checked(prev, v *Status, adv []netip.AddrPort, now time.Time) {
	if r.wait != 0 && sameVerdict(prev, v) {
		r.wait = min(2*r.wait, natRecheckMax)
	} else {
		r.wait = natRecheck
	}
	j := r.jitter
	if j == nil {
		j = func(d time.Duration) time.Duration { return rand.N(d/4 + 1) }
	}
	r.next, r.adv, r.lastLook = now.Add(r.wait+j(r.wait)), adv, now
}

// due reports whether a round should start at now. advertised is called
// at most every advertisedLook, and only while the wait is longer than
// natRecheck: an address change then starts a round at once.
func (r *recheck) due(now time.Time, advertised func() []netip.AddrPort) bool {
	if !now.Before(r.next) {
		return true
	}
	if r.wait > natRecheck && now.Sub(r.lastLook) >= advertisedLook {
		r.lastLook = now
		if !slices.Equal(advertised(), r.adv) {
			r.wait, r.next = 0, now
			return true
		}
	}
	return false
}
