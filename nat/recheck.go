package nat

import (
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
// natRecheck at once.
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
func sameVerdict(a, b *Status) bool {
	return a.Checked == b.Checked && a.Public == b.Public && slices.Equal(a.Observed, b.Observed) && slices.Equal(a.Relays, b.Relays)
}

// recheck is when configure_nat runs again. Owned by the loop.
type recheck struct {
	wait     time.Duration    // since the last round; 0 before the first
	next     time.Time        // the next round; zero: at once
	adv      []netip.AddrPort // what we advertised at the last round
	lastLook time.Time
}

// checked takes a round's verdict v, prev the one before it, and adv the
// addresses we advertised then.
func (r *recheck) checked(prev, v *Status, adv []netip.AddrPort, now time.Time) {
	if r.wait != 0 && sameVerdict(prev, v) {
		r.wait = min(2*r.wait, natRecheckMax)
	} else {
		r.wait = natRecheck
	}
	r.next, r.adv, r.lastLook = now.Add(r.wait), adv, now
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
