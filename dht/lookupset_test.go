package dht

import (
	"testing"

	"github.com/korium/korium-tun/pki"
)

// idWithCPL returns an ID sharing exactly cpl leading bits with target.
func idWithCPL(target NodeID, cpl int, salt byte) NodeID {
	var r [32]byte
	for i := range r {
		r[i] = salt + byte(i)
	}
	return randomIDInBucket(target, cpl, r)
}

func TestLookupSetNext(t *testing.T) {
	var target NodeID
	target[0] = 0x42
	type peer struct {
		cpl, tier int
		state     peerState
	}
	for _, tc := range []struct {
		name    string
		tiering bool
		slack   int
		peers   []peer
		want    int // index into peers, -1 for nil
	}{
		{"nearest without tiering", false, 2, []peer{{10, 3, psHeard}, {12, 5, psHeard}, {11, 0, psHeard}}, 1},
		{"faster tier within slack", true, 2, []peer{{10, 3, psHeard}, {12, 5, psHeard}, {11, 0, psHeard}}, 2},
		{"faster tier beyond slack loses", true, 1, []peer{{9, 0, psHeard}, {12, 5, psHeard}}, 1},
		{"equal tiers: nearest", true, 2, []peer{{11, 1, psHeard}, {12, 1, psHeard}}, 1},
		{"skips asked peers", true, 2, []peer{{12, 0, psWaiting}, {11, 4, psHeard}}, 1},
		{"nothing left", true, 2, []peer{{12, 0, psQueried}, {11, 0, psUnreachable}}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newLookupSet(target, tc.tiering, tc.slack)
			var ps []*lookupPeer
			for i, p := range tc.peers {
				var id pki.Identity
				id[0] = byte(i + 1)
				nid := idWithCPL(target, p.cpl, byte(i))
				s.add(Contact{Identity: id}, nid, 1, p.tier)
				lp := s.index[id]
				lp.state = p.state
				ps = append(ps, lp)
			}
			got := s.next(20)
			if tc.want < 0 {
				if got != nil {
					t.Fatalf("got peer with cpl %d, want none", got.cpl)
				}
				return
			}
			if got != ps[tc.want] {
				t.Fatalf("picked cpl %d tier %d, want cpl %d tier %d", got.cpl, got.tier, ps[tc.want].cpl, ps[tc.want].tier)
			}
		})
	}
}

func TestLookupSetDoneAndWindow(t *testing.T) {
	var target NodeID
	s := newLookupSet(target, false, 0)
	var ids []pki.Identity
	for i := 0; i < 5; i++ {
		var id pki.Identity
		id[0] = byte(i + 1)
		ids = append(ids, id)
		s.add(Contact{Identity: id}, idWithCPL(target, 20-i, byte(i)), 1, 0)
	}
	if s.add(Contact{Identity: ids[0]}, idWithCPL(target, 3, 9), 1, 0) {
		t.Fatal("duplicate added")
	}
	// k=3: done once the 3 nearest reachable peers answered.
	s.index[ids[0]].state = psQueried
	s.index[ids[1]].state = psUnreachable
	s.index[ids[2]].state = psQueried
	if s.done(3) {
		t.Fatal("done with the third-nearest reachable peer unasked")
	}
	s.index[ids[3]].state = psQueried
	if !s.done(3) {
		t.Fatal("not done with the 3 nearest reachable peers answered")
	}
	if got := s.closest(3); len(got) != 3 || got[0].c.Identity != ids[0] || got[1].c.Identity != ids[2] {
		t.Fatalf("closest = %v", got)
	}
}
