package relay

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/korium/korium-tun/pki"
)

var (
	v4     = netip.MustParseAddrPort("203.0.113.7:4433")
	v6     = netip.MustParseAddrPort("[2001:db8::1]:65535")
	mapped = netip.MustParseAddrPort("[::ffff:198.51.100.2]:9")
)

func ident(b byte) pki.Identity {
	var id pki.Identity
	for i := range id {
		id[i] = b + byte(i)
	}
	return id
}

func TestAddrRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		in, want netip.AddrPort
	}{
		{v4, v4},
		{v6, v6},
		{mapped, netip.MustParseAddrPort("198.51.100.2:9")},
		{netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:1")},
	} {
		b, err := AppendAddr(nil, tc.in)
		if err != nil {
			t.Fatalf("AppendAddr(%v): %v", tc.in, err)
		}
		wantLen := 7
		if tc.want.Addr().Is6() {
			wantLen = 19
		}
		if len(b) != wantLen {
			t.Errorf("AppendAddr(%v) = %d bytes, want %d", tc.in, len(b), wantLen)
		}
		got, rest, err := ParseAddr(b)
		if err != nil || got != tc.want || len(rest) != 0 {
			t.Errorf("ParseAddr(AppendAddr(%v)) = %v, %d left, %v; want %v", tc.in, got, len(rest), err, tc.want)
		}
	}
}

func TestAddrRejects(t *testing.T) {
	for _, ap := range []netip.AddrPort{
		{},
		netip.MustParseAddrPort("1.2.3.4:0"),
		netip.MustParseAddrPort("0.0.0.0:80"),
		netip.MustParseAddrPort("[::]:80"),
		netip.MustParseAddrPort("[::ffff:0.0.0.0]:80"),
		netip.MustParseAddrPort("224.0.0.1:80"),
		netip.MustParseAddrPort("[ff02::1]:80"),
		netip.MustParseAddrPort("[fe80::1%eth0]:80"),
	} {
		if _, err := AppendAddr(nil, ap); !errors.Is(err, ErrAddr) {
			t.Errorf("AppendAddr(%v) err = %v, want ErrAddr", ap, err)
		}
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"family 5", []byte{5, 1, 2, 3, 4, 0, 80}, ErrAddr},
		{"short v4", []byte{4, 1, 2, 3, 4, 0}, ErrTruncated},
		{"short v6", append([]byte{6}, make([]byte, 17)...), ErrTruncated},
		{"port 0", []byte{4, 1, 2, 3, 4, 0, 0}, ErrAddr},
		{"unspecified", []byte{4, 0, 0, 0, 0, 0, 80}, ErrAddr},
		{"v6 unspecified", append(append([]byte{6}, make([]byte, 16)...), 0, 80), ErrAddr},
		{"mapped unspecified", append(append([]byte{6}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0), 0, 80), ErrAddr},
	} {
		if _, _, err := ParseAddr(tc.in); !errors.Is(err, tc.want) {
			t.Errorf("%s: ParseAddr err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestParseStrict(t *testing.T) {
	obs := AppendObserveReq(nil, 42)
	con := AppendConnectReq(nil, ident(1))
	conResp := AppendConnectResp(nil, [16]byte{9})
	inc := AppendIncomingReq(nil, Incoming{Session: [16]byte{7}, From: ident(3)})
	incResp := AppendIncomingResp(nil)
	obsResp, err := AppendObserveResp(nil, ObserveResp{Addr: v6, Flags: FlagRelays})
	if err != nil {
		t.Fatal(err)
	}
	punch, err := AppendPunch(nil, []netip.AddrPort{v4, v6})
	if err != nil {
		t.Fatal(err)
	}
	parsers := []struct {
		name  string
		good  []byte
		parse func([]byte) error
	}{
		{"ObserveReq", obs, func(b []byte) error { _, err := ParseObserveReq(b); return err }},
		{"ObserveResp", obsResp, func(b []byte) error { _, err := ParseObserveResp(b); return err }},
		{"ConnectReq", con, func(b []byte) error { _, err := ParseConnectReq(b); return err }},
		{"ConnectResp", conResp, func(b []byte) error { _, err := ParseConnectResp(b); return err }},
		{"IncomingReq", inc, func(b []byte) error { _, err := ParseIncomingReq(b); return err }},
		{"IncomingResp", incResp, ParseIncomingResp},
		{"Punch", punch, func(b []byte) error { _, err := ParsePunch(nil, b); return err }},
	}
	for _, p := range parsers {
		if err := p.parse(p.good); err != nil {
			t.Errorf("%s: good message: %v", p.name, err)
		}
		if err := p.parse(nil); !errors.Is(err, ErrTruncated) {
			t.Errorf("%s: empty: %v, want ErrTruncated", p.name, err)
		}
		if err := p.parse(append(slices.Clone(p.good), 0)); !errors.Is(err, ErrTrailing) {
			t.Errorf("%s: trailing byte: %v, want ErrTrailing", p.name, err)
		}
		if len(p.good) > 1 {
			if err := p.parse(p.good[:len(p.good)-1]); !errors.Is(err, ErrTruncated) {
				t.Errorf("%s: one byte short: %v, want ErrTruncated", p.name, err)
			}
		}
		bad := slices.Clone(p.good)
		bad[0] = 99
		if err := p.parse(bad); !errors.Is(err, ErrType) {
			t.Errorf("%s: wrong type: %v, want ErrType", p.name, err)
		}
	}
}

func TestMessagesRoundTrip(t *testing.T) {
	if n, err := ParseObserveReq(AppendObserveReq(nil, 0xdeadbeefcafe)); err != nil || n != 0xdeadbeefcafe {
		t.Errorf("observe req: %x, %v", n, err)
	}
	b, _ := AppendObserveResp([]byte("prefix"), ObserveResp{Addr: mapped, Flags: FlagRelays})
	if !bytes.HasPrefix(b, []byte("prefix")) {
		t.Fatal("AppendObserveResp dropped the prefix")
	}
	r, err := ParseObserveResp(b[6:])
	if err != nil || r.Addr != netip.MustParseAddrPort("198.51.100.2:9") || r.Flags != FlagRelays {
		t.Errorf("observe resp: %+v, %v", r, err)
	}
	if id, err := ParseConnectReq(AppendConnectReq(nil, ident(5))); err != nil || id != ident(5) {
		t.Errorf("connect req: %v, %v", id, err)
	}
	sess := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	if s, err := ParseConnectResp(AppendConnectResp(nil, sess)); err != nil || s != sess {
		t.Errorf("connect resp: %v, %v", s, err)
	}
	in := Incoming{Session: sess, From: ident(200)}
	if got, err := ParseIncomingReq(AppendIncomingReq(nil, in)); err != nil || got != in {
		t.Errorf("incoming req: %+v, %v", got, err)
	}
	if err := ParseIncomingResp(AppendIncomingResp(nil)); err != nil {
		t.Errorf("incoming resp: %v", err)
	}
	if typ, err := Type(AppendConnectReq(nil, ident(1))); err != nil || typ != MsgConnect {
		t.Errorf("Type = %d, %v", typ, err)
	}
}

func TestPunch(t *testing.T) {
	eight := make([]netip.AddrPort, MaxCandidates)
	for i := range eight {
		eight[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), uint16(1000+i))
	}
	for _, addrs := range [][]netip.AddrPort{nil, {v4}, {v4, v6, mapped}, eight} {
		b, err := AppendPunch(nil, addrs)
		if err != nil {
			t.Fatalf("AppendPunch(%v): %v", addrs, err)
		}
		got, err := ParsePunch(nil, b)
		if err != nil || len(got) != len(addrs) {
			t.Fatalf("ParsePunch: %v, %v", got, err)
		}
		for i := range addrs {
			if got[i] != Unmap(addrs[i]) {
				t.Errorf("candidate %d = %v, want %v", i, got[i], Unmap(addrs[i]))
			}
		}
	}
	if _, err := AppendPunch(nil, append(eight, v4)); !errors.Is(err, ErrTooMany) {
		t.Errorf("nine candidates: %v, want ErrTooMany", err)
	}
	if _, err := AppendPunch(nil, []netip.AddrPort{v4, {}}); !errors.Is(err, ErrAddr) {
		t.Errorf("invalid candidate: %v, want ErrAddr", err)
	}
	// A count above the limit is refused before the body is looked at.
	if _, err := ParsePunch(nil, []byte{MsgPunch, 255}); !errors.Is(err, ErrTooMany) {
		t.Errorf("count 255: %v, want ErrTooMany", err)
	}
	// A count the body cannot hold is refused before anything is allocated.
	if _, err := ParsePunch(nil, []byte{MsgPunch, 8, 4, 1, 2, 3, 4, 0, 1}); !errors.Is(err, ErrTruncated) {
		t.Errorf("count 8 with one address: %v, want ErrTruncated", err)
	}
	// ParsePunch appends to dst and leaves it unchanged on error.
	dst := []netip.AddrPort{v6}
	b, _ := AppendPunch(nil, []netip.AddrPort{v4})
	if got, err := ParsePunch(dst, b); err != nil || !slices.Equal(got, []netip.AddrPort{v6, v4}) {
		t.Errorf("ParsePunch(dst) = %v, %v", got, err)
	}
	b = []byte{MsgPunch, 2, 4, 1, 2, 3, 4, 0, 1, 4, 0, 0, 0, 0, 0, 1}
	if got, err := ParsePunch(dst, b); !errors.Is(err, ErrAddr) || len(got) != 1 {
		t.Errorf("bad second candidate: %v, %v", got, err)
	}
}

func TestParsePunchAllocs(t *testing.T) {
	b, _ := AppendPunch(nil, []netip.AddrPort{v4, v6})
	dst := make([]netip.AddrPort, 0, MaxCandidates)
	if n := testing.AllocsPerRun(100, func() { _, _ = ParsePunch(dst, b) }); n != 0 {
		t.Errorf("ParsePunch into a slice with room: %v allocs, want 0", n)
	}
}
