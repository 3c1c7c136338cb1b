package peers

import (
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

func TestPreferNew(t *testing.T) {
	lo, hi := pki.Identity{1}, pki.Identity{2}
	in, out := false, true
	cases := []struct {
		name      string
		self      pki.Identity
		old, new_ connInfo
		want      bool
	}{
		{"peer restarted", lo, connInfo{out, "1"}, connInfo{in, "2"}, true},
		{"redial same side", lo, connInfo{out, "1"}, connInfo{out, "1"}, true},
		{"lower self keeps own dial", lo, connInfo{out, "1"}, connInfo{in, "1"}, false},
		{"lower self takes own dial", lo, connInfo{in, "1"}, connInfo{out, "1"}, true},
		{"higher self keeps peer's dial", hi, connInfo{in, "1"}, connInfo{out, "1"}, false},
		{"higher self takes peer's dial", hi, connInfo{out, "1"}, connInfo{in, "1"}, true},
	}
	for _, c := range cases {
		peer := hi
		if c.self == hi {
			peer = lo
		}
		if got := preferNew(c.self, peer, c.old, c.new_); got != c.want {
			t.Errorf("%s: preferNew = %v, want %v", c.name, got, c.want)
		}
	}
}

// testPeers makes peers used at the given clock values (unix ns).
func testPeers(used ...int64) []*Peer {
	var out []*Peer
	for i, u := range used {
		p := &Peer{ID: pki.Identity{byte(i + 1)}}
		p.lastUsed.Store(u)
		out = append(out, p)
	}
	return out
}

func TestLeastRecentlyUsedSparesKept(t *testing.T) {
	ps := testPeers(30, 10, 20)
	m := map[pki.Identity]*Peer{}
	for _, p := range ps {
		m[p.ID] = p
	}
	for _, c := range []struct {
		name string
		kept []int
		want int // index into ps, -1 for none
	}{
		{"oldest", nil, 1},
		{"oldest is kept", []int{1}, 2},
		{"only one left", []int{1, 2}, 0},
		{"all kept", []int{0, 1, 2}, -1},
	} {
		kept := map[pki.Identity]bool{}
		for _, i := range c.kept {
			kept[ps[i].ID] = true
		}
		got := leastRecentlyUsed(m, func(id pki.Identity) bool { return kept[id] })
		if (c.want < 0 && got != nil) || (c.want >= 0 && got != ps[c.want]) {
			t.Errorf("%s: got %v", c.name, got)
		}
	}
}

func TestIdlePeers(t *testing.T) {
	ps := testPeers(10, 50, 20, 5)
	s := NewSnapshot(ps...)
	s.desired = map[pki.Identity]bool{ps[3].ID: true}
	got := idlePeers(s, 30, map[pki.Identity]bool{ps[2].ID: true})
	if len(got) != 1 || got[0] != ps[0] {
		t.Fatalf("idle %v, want only the first (the others are used, spared or kept)", got)
	}
}

func TestNextBackoff(t *testing.T) {
	b := time.Duration(0)
	var got []time.Duration
	for range 7 {
		b = nextBackoff(b)
		got = append(got, b)
	}
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 15 * time.Second, 15 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("backoffs %v, want %v", got, want)
		}
	}
}
