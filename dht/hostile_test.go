package dht

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Records: at least one address, each one someone may be sent to; signed at
// most MaxClockSkew ahead of our clock.
func TestRecordRules(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	kp := testKeypair(t, 1, 0)
	good := netip.MustParseAddrPort("198.18.0.1:4433")
	// Sign refuses.
	for _, addrs := range [][]netip.AddrPort{
		nil,
		{netip.MustParseAddrPort("0.0.0.0:1")},
		{good, netip.MustParseAddrPort("[ff02::1]:1")},
		{netip.MustParseAddrPort("[fe80::1%eth0]:1")},
		{netip.MustParseAddrPort("198.18.0.1:0")},
		{{}},
	} {
		r := &Record{Addrs: addrs, Seq: 1, Expires: now.Add(time.Hour)}
		if err := r.Sign(kp); err == nil {
			t.Errorf("Sign(%v) succeeded", addrs)
		}
	}
	// The decoder refuses the same, even correctly signed.
	forceSign := func(addrs ...netip.AddrPort) []byte {
		r := &Record{Identity: kp.Identity(), Nonce: kp.Nonce(), Addrs: addrs, Seq: 1, Expires: now.Add(time.Hour)}
		copy(r.Sig[:], kp.Sign(r.SigningBytes()))
		return r.AppendBinary(nil)
	}
	for _, tc := range []struct {
		name  string
		addrs []netip.AddrPort
		want  string
	}{
		{"no address", nil, "without addresses"},
		{"unspecified", []netip.AddrPort{netip.MustParseAddrPort("[::]:4433")}, "unspecified"},
		{"multicast", []netip.AddrPort{good, netip.MustParseAddrPort("239.1.1.1:1")}, "multicast"},
		{"port 0", []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:0")}, "port 0"},
	} {
		_, err := DecodeRecord(forceSign(tc.addrs...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: DecodeRecord = %v, want an error about %q", tc.name, err, tc.want)
		}
	}
	// Loopback decodes (whether to dial it is the reader's call).
	if _, err := DecodeRecord(forceSign(netip.MustParseAddrPort("127.0.0.1:4433"))); err != nil {
		t.Fatalf("loopback record: %v", err)
	}
	// Freshness: Seq is the signing time.
	for _, tc := range []struct {
		ahead time.Duration
		ok    bool
	}{{-time.Hour, true}, {0, true}, {4 * time.Second, true}, {MaxClockSkew, true}, {6 * time.Second, false}, {time.Hour, false}} {
		r := signedRecord(t, kp, uint64(now.Add(tc.ahead).UnixNano()), now.Add(time.Hour), good)
		err := r.Verify(now, 0, 24*time.Hour)
		if tc.ok != (err == nil) || !tc.ok && !errors.Is(err, ErrFuture) {
			t.Errorf("signed %v ahead: Verify = %v", tc.ahead, err)
		}
	}
}
