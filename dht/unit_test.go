package dht

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

func testKeypair(t testing.TB, seedByte byte, powBits int) *pki.Keypair {
	t.Helper()
	seed := bytes.Repeat([]byte{seedByte}, 32)
	kp, err := pki.NewKeypair(seed, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := uint64(0)
	for pki.PoWBits(kp.Identity(), n) < powBits {
		n++
	}
	kp, _ = pki.NewKeypair(seed, n)
	return kp
}

func TestTargetAndNextK(t *testing.T) {
	for _, tc := range []struct {
		churn     float64
		congested bool
		want      int
	}{
		{0, false, DefaultK}, {-1, false, DefaultK}, {0.01, false, 25}, {0.004, false, 22},
		{0.02, false, MaxK}, {0.5, false, MaxK}, {0, true, MinK}, {0.5, true, MinK},
	} {
		if got := TargetK(tc.churn, tc.congested); got != tc.want {
			t.Errorf("TargetK(%v, %v) = %d, want %d", tc.churn, tc.congested, got, tc.want)
		}
	}
	for _, tc := range []struct {
		cur       int
		churn     float64
		congested bool
		want      int
	}{
		{20, 0, false, 20},     // quiet: stay
		{26, 0, false, 24},     // churn gone: shrink by 2
		{20, 0.01, false, 22},  // moderate churn: grow by 2
		{25, 0.01, false, 25},  // at target
		{20, 0.5, false, 24},   // severe churn: grow by 4
		{28, 0.5, false, 30},   // capped
		{50, 0.5, false, 30},   // out-of-range input clamped
		{20, 0, true, 18},      // congested: shed by 2
		{11, 0.5, true, 10},    // never below MinK
		{10, 0, false, 12},     // congestion over: back up
		{21, 0.002, false, 21}, // target 21
	} {
		if got := NextK(tc.cur, tc.churn, tc.congested); got != tc.want {
			t.Errorf("NextK(%d, %v, %v) = %d, want %d", tc.cur, tc.churn, tc.congested, got, tc.want)
		}
	}
}

func TestNextAlpha(t *testing.T) {
	for _, tc := range []struct {
		cur       int
		timeouts  float64
		congested bool
		want      int
	}{
		{3, 0, false, 3},
		{3, 0.3, false, 4},
		{4, 0.3, false, 5},
		{5, 0.3, false, 5},
		{5, 0.15, false, 4},
		{4, 0.15, false, 4},
		{5, 0, false, 4},
		{3, 0.3, true, 2}, // congestion wins over timeouts
		{2, 0, true, 2},
		{2, 0, false, 3},
		{9, 0, false, 4}, // clamped first
	} {
		if got := NextAlpha(tc.cur, tc.timeouts, tc.congested); got != tc.want {
			t.Errorf("NextAlpha(%d, %v, %v) = %d, want %d", tc.cur, tc.timeouts, tc.congested, got, tc.want)
		}
	}
}

func TestKMeansTiers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		vals      []float64
		wantTiers int
		sameTier  [][2]int // index pairs that must share a tier
		diffTier  [][2]int // index pairs that must not
	}{
		{"empty", nil, 0, nil, nil},
		{"one", []float64{40}, 1, nil, nil},
		{"identical", []float64{5, 5, 5, 5.5}, 1, [][2]int{{0, 3}}, nil},
		{"two regions", []float64{3, 4, 5, 120, 130, 125}, 2, [][2]int{{0, 2}, {3, 4}}, [][2]int{{0, 3}}},
		{"three regions", []float64{2, 3, 60, 65, 180, 190}, 3, [][2]int{{0, 1}, {2, 3}, {4, 5}}, [][2]int{{1, 2}, {3, 4}}},
		{"even spread: smallest k leaving 5% variance", []float64{1, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200}, 5, nil, [][2]int{{0, 10}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, a := KMeansTiers(tc.vals, MaxTiers)
			if len(c) != tc.wantTiers {
				t.Fatalf("got %d tiers %v, want %d", len(c), c, tc.wantTiers)
			}
			for i := 1; i < len(c); i++ {
				if c[i] <= c[i-1] {
					t.Fatalf("centroids not ascending: %v", c)
				}
			}
			for _, p := range tc.sameTier {
				if a[p[0]] != a[p[1]] {
					t.Errorf("values %v and %v in tiers %d and %d", tc.vals[p[0]], tc.vals[p[1]], a[p[0]], a[p[1]])
				}
			}
			for _, p := range tc.diffTier {
				if a[p[0]] >= a[p[1]] {
					t.Errorf("value %v tier %d not faster than %v tier %d", tc.vals[p[0]], a[p[0]], tc.vals[p[1]], a[p[1]])
				}
			}
		})
	}
}

func TestRTTTableBounded(t *testing.T) {
	rt := newRTTTable(100)
	for i := 0; i < 1000; i++ {
		a := netip.AddrFrom4([4]byte{byte(i >> 8), byte(i), 1, 1})
		rt.observe(a, time.Duration(i)*time.Millisecond+time.Millisecond)
	}
	if rt.ll.Len() != 100 || len(rt.index) != 100 {
		t.Fatalf("LRU holds %d/%d entries, want 100", rt.ll.Len(), len(rt.index))
	}
	// Same /16 shares one entry.
	rt2 := newRTTTable(10)
	rt2.observe(netip.MustParseAddr("192.0.2.1"), 10*time.Millisecond)
	rt2.observe(netip.MustParseAddr("192.0.99.7"), 10*time.Millisecond)
	rt2.observe(netip.MustParseAddr("2001:db8:1::1"), 100*time.Millisecond)
	rt2.observe(netip.MustParseAddr("2001:db8:ffff::1"), 100*time.Millisecond)
	if rt2.ll.Len() != 2 {
		t.Fatalf("got %d prefixes, want 2 (one /16, one /32)", rt2.ll.Len())
	}
	rt2.recluster()
	if rt2.tier(netip.MustParseAddr("192.0.5.5")) != 0 || rt2.tier(netip.MustParseAddr("2001:db8::9")) != 1 {
		t.Fatalf("tiers wrong: %v %v", rt2.centroids, rt2.tierOf)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero config invalid: %v", err)
	}
	for _, tc := range []struct {
		c     Config
		field string
	}{
		{Config{K: 5}, "Config.K"},
		{Config{Alpha: 9}, "Config.Alpha"},
		{Config{PoWBits: 40}, "Config.PoWBits"},
		{Config{QueryTimeout: -1}, "Config.QueryTimeout"},
		{Config{RecordTTL: 48 * time.Hour}, "Config.RecordTTL"},
		{Config{RecordTTL: time.Hour, RepublishInterval: 2 * time.Hour}, "Config.RepublishInterval"},
		{Config{MaxPerPrefixPerBucket: 99}, "Config.MaxPerPrefixPerBucket"},
	} {
		err := tc.c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", tc.c, err, tc.field)
		}
	}
	d := DefaultConfig()
	if d.K != DefaultK || d.Alpha != DefaultAlpha || d.PoWBits != pki.DefaultPoWBits || d.Logger == nil {
		t.Fatalf("DefaultConfig = %+v", d)
	}
}

// signedRecord signs a record of kp (at 198.18.0.9:1 when no address is
// given: a record must have one).
func signedRecord(t testing.TB, kp *pki.Keypair, seq uint64, exp time.Time, addrs ...netip.AddrPort) *Record {
	t.Helper()
	if len(addrs) == 0 {
		addrs = []netip.AddrPort{netip.MustParseAddrPort("198.18.0.9:1")}
	}
	r := &Record{Addrs: addrs, Seq: seq, Expires: exp}
	if err := r.Sign(kp); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRecordVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	kp := testKeypair(t, 1, 8)
	other := testKeypair(t, 2, 8)
	addr := netip.MustParseAddrPort("198.18.0.1:4433")
	good := signedRecord(t, kp, 1, now.Add(time.Hour), addr)
	if err := good.Verify(now, 8, 24*time.Hour); err != nil {
		t.Fatalf("good record: %v", err)
	}
	// Round trip keeps the signature valid.
	dec, err := DecodeRecord(good.AppendBinary(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := dec.Verify(now, 8, 24*time.Hour); err != nil {
		t.Fatalf("decoded record: %v", err)
	}

	forgedAddr := *good
	forgedAddr.Addrs = []netip.AddrPort{netip.MustParseAddrPort("203.0.113.66:1")}
	forgedSeq := *good
	forgedSeq.Seq = 99
	stolen := *good
	stolen.Identity = other.Identity() // someone else's identity, our signature
	stolen.Nonce = other.Nonce()
	for _, tc := range []struct {
		name string
		r    *Record
		pow  int
		want error
	}{
		{"forged address", &forgedAddr, 8, ErrBadSignature},
		{"forged seq", &forgedSeq, 8, ErrBadSignature},
		{"signature of another key", &stolen, 8, ErrBadSignature},
		{"expired", signedRecord(t, kp, 1, now.Add(-time.Second), addr), 8, ErrExpired},
		{"expires now", signedRecord(t, kp, 1, now, addr), 8, ErrExpired},
		{"far future", signedRecord(t, kp, 1, now.Add(25*time.Hour), addr), 8, ErrFarFuture},
		{"weak pow", good, 30, ErrBadPoW},
	} {
		if err := tc.r.Verify(now, tc.pow, 24*time.Hour); !errors.Is(err, tc.want) {
			t.Errorf("%s: Verify = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Oversized records cannot be built or decoded.
	big := &Record{Addrs: make([]netip.AddrPort, MaxAddrs+1), Expires: now}
	if err := big.Sign(kp); err == nil {
		t.Error("Sign accepted 17 addresses")
	}
	enc := good.AppendBinary(nil)
	enc[32+8+8+8] = MaxAddrs + 1 // address count
	if _, err := DecodeRecord(enc); err == nil {
		t.Error("decoded a record claiming 17 addresses")
	}
}

func TestStoreQuotasAndOrdering(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := newRecordStore(150)
	kp := testKeypair(t, 3, 0)
	r1 := signedRecord(t, kp, 5, now.Add(time.Hour))
	if c := s.put(kp.Identity(), r1, now); c != codeOK {
		t.Fatalf("put = %d", c)
	}
	if c := s.put(kp.Identity(), signedRecord(t, kp, 4, now.Add(time.Hour)), now); c != codeStale {
		t.Fatalf("older seq: code %d, want stale", c)
	}
	if c := s.put(kp.Identity(), signedRecord(t, kp, 6, now.Add(time.Hour)), now); c != codeOK {
		t.Fatalf("newer seq: code %d", c)
	}
	if got := s.get(r1.ID(), 0, now); len(got) != 1 || got[0].Seq != 6 {
		t.Fatalf("get = %+v", got)
	}
	if got := s.get(r1.ID(), 0, now.Add(2*time.Hour)); len(got) != 0 {
		t.Fatal("expired record returned")
	}
	// One peer storing 101 distinct records hits the entry quota.
	flooder := testKeypair(t, 4, 0).Identity()
	var codes []uint8
	for i := 0; i < PerPeerEntryLimit+1; i++ {
		k := testKeypair(t, byte(10+i), 0)
		codes = append(codes, s.put(flooder, signedRecord(t, k, 1, now.Add(time.Hour)), now))
	}
	for i, c := range codes[:PerPeerEntryLimit] {
		if c != codeOK {
			t.Fatalf("record %d: code %d", i, c)
		}
	}
	if codes[PerPeerEntryLimit] != codeQuota {
		t.Fatalf("record 101 from one peer: code %d, want quota", codes[PerPeerEntryLimit])
	}
	// Total cap (150 here): other peers fill it, then it refuses.
	full := 0
	for i := 0; i < 60; i++ {
		k := testKeypair(t, byte(120+i), 0)
		if s.put(k.Identity(), signedRecord(t, k, 1, now.Add(time.Hour)), now) == codeQuota {
			full++
		}
	}
	if len(s.byID) != 150 || full == 0 {
		t.Fatalf("store holds %d records, %d refused; want cap 150", len(s.byID), full)
	}
	// Expiry frees room.
	if n := s.expire(now.Add(2 * time.Hour)); n != 150 || len(s.byID) != 0 || len(s.perPeer) != 0 || len(s.byPrefix) != 0 {
		t.Fatalf("expire removed %d, left %d/%d/%d", n, len(s.byID), len(s.perPeer), len(s.byPrefix))
	}
}

func TestRandomIDInBucket(t *testing.T) {
	self := IDOf(testKeypair(t, 5, 0).Identity())
	for cpl := 0; cpl < 256; cpl += 7 {
		var r [32]byte
		for i := range r {
			r[i] = byte(i*31 + cpl)
		}
		if got := CommonPrefixLen(self, randomIDInBucket(self, cpl, r)); got != cpl {
			t.Fatalf("cpl %d: got %d", cpl, got)
		}
	}
}
