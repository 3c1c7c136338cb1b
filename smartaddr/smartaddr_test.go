package smartaddr

import (
	"encoding/hex"
	"net/netip"
	"testing"

	"github.com/korium/korium-tun/pki"
)

// Fixed vectors: identity -> SmartAddr, checked independently with
// `xxd -r -p | b3sum` (the reference BLAKE3 tool): take the first 12 bytes
// of the hash and prepend fd00:c0f1.
var vectors = []struct{ id, addr string }{
	{"0000000000000000000000000000000000000000000000000000000000000000", "fd00:c0f1:2ada:83c1:819a:5372:dae1:238f"},
	{"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "fd00:c0f1:6c31:412:68f4:7160:9c79:f5f2"},
	{"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "fd00:c0f1:9b34:f060:fbc0:f0aa:11f1:50e2"},
}

func TestVectors(t *testing.T) {
	for _, v := range vectors {
		// The derivation is a function of any 32 bytes; the all-zero and
		// all-FF vectors are not valid keys, so they skip ParseIdentity.
		var id pki.Identity
		if _, err := hex.Decode(id[:], []byte(v.id)); err != nil {
			t.Fatal(err)
		}
		got := FromIdentity(id)
		if got.String() != v.addr {
			t.Errorf("FromIdentity(%s) = %s, want %s", v.id, got, v.addr)
		}
		if !IsOverlay(got) || !Owns(id, got) || !MatchesHash(got, id.Hash()) {
			t.Errorf("%s: IsOverlay/Owns/MatchesHash false for own address", got)
		}
	}
}

func TestOwnsAndOverlay(t *testing.T) {
	var a, b pki.Identity
	a[0], b[0] = 1, 2
	if Owns(a, FromIdentity(b)) {
		t.Fatal("identity owns another's address")
	}
	for _, s := range []string{"fd00:c0f2::1", "fe80::1", "::ffff:1.2.3.4", "198.18.0.1", "fd00:c0f0:ffff::1"} {
		if IsOverlay(netip.MustParseAddr(s)) {
			t.Errorf("IsOverlay(%s) = true", s)
		}
	}
	if !IsOverlay(netip.MustParseAddr("fd00:c0f1::1")) {
		t.Error("IsOverlay(fd00:c0f1::1) = false")
	}
	if !IsVirtual(Virtual(a)) || IsVirtual(netip.MustParseAddrPort("[fd00:c0f1::1]:443")) {
		t.Error("IsVirtual wrong")
	}
}
