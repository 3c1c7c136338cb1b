package nat

import (
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

// The allowed table: a pair is allowed for meshAllowTTL, marked used when a
// session comes, never grows past maxAllowed (the pair expiring first
// goes, counted), and expires.
func TestAllowTable(t *testing.T) {
	tr := &Traversal{mesh: newMesh()}
	now := time.Now()
	peer, relay, other := testIdentity(t, 1), testIdentity(t, 2), testIdentity(t, 3)
	if tr.takeAllowed(peer, relay, now) {
		t.Fatal("allowed before anything allowed it")
	}
	tr.allow(peer, relay, now)
	if tr.takeAllowed(peer, other, now) || tr.takeAllowed(other, relay, now) {
		t.Fatal("allowed another pair")
	}
	if tr.usedAllowance(peer, []SignalRelay{{ID: relay}}) {
		t.Fatal("used before a session came")
	}
	if !tr.takeAllowed(peer, relay, now.Add(meshAllowTTL-time.Second)) {
		t.Fatal("not allowed within its TTL")
	}
	if !tr.usedAllowance(peer, []SignalRelay{{ID: other}, {ID: relay}}) {
		t.Fatal("a taken allowance is not marked used")
	}
	if tr.takeAllowed(peer, relay, now.Add(meshAllowTTL+time.Second)) {
		t.Fatal("allowed after its TTL")
	}
	tr.expireAllowed(now.Add(meshAllowTTL + time.Second))
	if tr.Allowed() != 0 {
		t.Fatalf("%d pairs after expiry", tr.Allowed())
	}

	// Flood: maxAllowed+100 distinct pairs.
	for i := range maxAllowed + 100 {
		var id pki.Identity
		id[0], id[1] = byte(i), byte(i>>8)
		tr.allow(id, relay, now.Add(time.Duration(i)*time.Millisecond))
	}
	if tr.Allowed() != maxAllowed || tr.Mesh.AllowEvicted.Load() != 100 {
		t.Fatalf("table %d (cap %d), evicted %d", tr.Allowed(), maxAllowed, tr.Mesh.AllowEvicted.Load())
	}
	// The oldest went: the first pair is gone, the last is there.
	var first, last pki.Identity
	n := maxAllowed + 99
	last[0], last[1] = byte(n), byte(n>>8)
	if tr.takeAllowed(first, relay, now) || !tr.takeAllowed(last, relay, now) {
		t.Fatal("eviction did not drop the pair expiring first")
	}
}
