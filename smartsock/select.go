package smartsock

import "time"

// Path selection constants, from the reference's algorithm.
const (
	// SwitchMargin is how much better (in RTT) another path must be before
	// traffic moves to it: no flapping between two similar paths.
	SwitchMargin = 10 * time.Millisecond
	// RelayHandicap is added to a relayed path's RTT when comparing: a
	// direct path is preferred unless the relay is far faster.
	RelayHandicap = 50 * time.Millisecond
	// unmeasured stands in for the RTT of a path that is proven (a
	// handshake completed over it) but not yet probed: usable, but any
	// measured path beats it.
	unmeasured = 10 * time.Second
)

// Candidate is what Select knows of one path.
type Candidate struct {
	Relay     bool
	Validated bool          // the peer proved its identity on this path
	Alive     bool          // it answers (fewer than MaxMissed probes lost, not stale)
	RTT       time.Duration // smoothed; 0 = not measured yet
}

func (c Candidate) usable() bool { return c.Validated && c.Alive }

func (c Candidate) score() time.Duration {
	s := c.RTT
	if s <= 0 {
		s = unmeasured
	}
	if c.Relay {
		s += RelayHandicap
	}
	return s
}

// Select returns the index of the path traffic should use, given the one it
// uses now (-1 for none). It is a pure function:
//   - only validated paths that answer are chosen;
//   - a usable current path is left only for one whose RTT (plus
//     RelayHandicap if relayed) is more than SwitchMargin lower, so a direct
//     path wins as soon as its RTT + 10 ms beats the current one, and a relay
//     wins over a direct path only when it is more than 60 ms faster;
//   - a current path that stopped answering (a black hole) is replaced by
//     the best usable one at once;
//   - with nothing usable, the current path is kept.
func Select(paths []Candidate, current int) int {
	best := -1
	for i, c := range paths {
		if !c.usable() {
			continue
		}
		if best < 0 || c.score() < paths[best].score() {
			best = i
		}
	}
	if best < 0 {
		return current
	}
	if current < 0 || current >= len(paths) || !paths[current].usable() {
		return best
	}
	if paths[best].score()+SwitchMargin < paths[current].score() {
		return best
	}
	return current
}
