package smartsock

import (
	"testing"
	"time"
)

func TestSelect(t *testing.T) {
	ms := time.Millisecond
	direct := func(rtt time.Duration) Candidate { return Candidate{Validated: true, Alive: true, RTT: rtt} }
	relay := func(rtt time.Duration) Candidate {
		return Candidate{Relay: true, Validated: true, Alive: true, RTT: rtt}
	}
	dead := func(c Candidate) Candidate { c.Alive = false; return c }
	unproven := func(c Candidate) Candidate { c.Validated = false; return c }
	for _, tc := range []struct {
		name    string
		paths   []Candidate
		current int
		want    int
	}{
		{"nothing known", nil, -1, -1},
		{"first usable path", []Candidate{relay(20 * ms)}, -1, 0},
		{"unproven path never carries data", []Candidate{relay(30 * ms), unproven(direct(1 * ms))}, 0, 0},
		{"direct beats relay of equal RTT", []Candidate{relay(20 * ms), direct(20 * ms)}, 0, 1},
		{"direct beats a faster relay within the handicap", []Candidate{relay(5 * ms), direct(40 * ms)}, 0, 1},
		{"direct slower than relay+handicap-margin stays relayed", []Candidate{relay(5 * ms), direct(46 * ms)}, 0, 0},
		{"relay only wins when >60ms faster", []Candidate{direct(100 * ms), relay(39 * ms)}, 0, 1},
		{"relay 59ms faster: stay direct", []Candidate{direct(100 * ms), relay(41 * ms)}, 0, 0},
		{"direct 10ms better: switch", []Candidate{direct(30 * ms), direct(19 * ms)}, 0, 1},
		{"direct 9ms better: no flap", []Candidate{direct(30 * ms), direct(21 * ms)}, 0, 0},
		{"and no flap back", []Candidate{direct(21 * ms), direct(30 * ms)}, 0, 0},
		{"black hole falls back to relay", []Candidate{relay(20 * ms), dead(direct(1 * ms))}, 1, 0},
		{"black hole falls back to the best other", []Candidate{relay(20 * ms), dead(direct(1 * ms)), direct(9 * ms)}, 1, 2},
		{"nothing usable keeps current", []Candidate{dead(relay(20 * ms)), dead(direct(1 * ms))}, 1, 1},
		{"measured beats unmeasured handshake path", []Candidate{direct(0), direct(3 * ms)}, 0, 1},
		{"unmeasured current kept over unmeasured other", []Candidate{direct(0), direct(0)}, 0, 0},
		{"current out of range", []Candidate{direct(3 * ms)}, 5, 0},
	} {
		if got := Select(tc.paths, tc.current); got != tc.want {
			t.Errorf("%s: Select(%+v, %d) = %d, want %d", tc.name, tc.paths, tc.current, got, tc.want)
		}
	}
}
