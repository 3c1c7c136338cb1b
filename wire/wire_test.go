package wire

import (
	"bytes"
	"errors"
	"go/build"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/korium/korium-tun/pki"
)

func key(b byte) *pki.Keypair {
	seed := make([]byte, 32)
	seed[0] = b
	kp, err := pki.NewKeypair(seed, 0)
	if err != nil {
		panic(err)
	}
	return kp
}

func TestAddrCodec(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		size     int
	}{
		{"198.18.0.1:7400", "198.18.0.1:7400", MinAddrSize},
		{"[::ffff:198.18.0.1]:7400", "198.18.0.1:7400", MinAddrSize}, // one form: family 4
		{"[2001:db8::1]:443", "[2001:db8::1]:443", MaxAddrSize},
		{"[fe80::1%eth0]:1", "[fe80::1]:1", MaxAddrSize}, // zones are not encoded
		{"0.0.0.0:0", "0.0.0.0:0", MinAddrSize},          // policy is the caller's
	} {
		ap := netip.MustParseAddrPort(tc.in)
		b := AppendAddr([]byte{0xaa}, ap)
		if len(b)-1 != tc.size || AddrSize(ap) != tc.size {
			t.Errorf("%s: %d bytes (AddrSize %d), want %d", tc.in, len(b)-1, AddrSize(ap), tc.size)
		}
		got, rest, err := ParseAddr(append(b[1:], 9))
		if err != nil || got.String() != tc.want || !bytes.Equal(rest, []byte{9}) {
			t.Errorf("%s: ParseAddr = %v, %x, %v", tc.in, got, rest, err)
		}
	}
	if b := AppendAddr(nil, netip.AddrPort{}); !bytes.Equal(b, []byte{0}) {
		t.Fatalf("invalid address encoded as %x", b)
	}
	mapped := append([]byte{6}, netip.MustParseAddr("::ffff:1.2.3.4").AsSlice()...)
	for _, tc := range []struct {
		b    []byte
		want error
	}{
		{nil, ErrTruncated},
		{[]byte{0}, ErrAddrFamily},
		{[]byte{5, 1, 2, 3, 4, 0, 1}, ErrAddrFamily},
		{[]byte{4, 1, 2, 3, 4, 0}, ErrTruncated},
		{[]byte{6, 1, 2, 3}, ErrTruncated},
		{append(mapped, 0, 1), ErrMappedAddr},
	} {
		if _, _, err := ParseAddr(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("ParseAddr(%x) = %v, want %v", tc.b, err, tc.want)
		}
	}
}

func TestReader(t *testing.T) {
	b := []byte{1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 2, 0xaa, 0xbb, 4, 198, 18, 0, 1, 0x1c, 0xe8}
	r := NewReader(b)
	if r.U8() != 1 || r.U16() != 2 || r.U32() != 3 || r.U64() != 4 {
		t.Fatal("integers")
	}
	n := r.Count(int(r.U8()), 2, 1)
	if n != 2 || !bytes.Equal(r.Bytes(n), []byte{0xaa, 0xbb}) {
		t.Fatal("count and bytes")
	}
	if a := r.Addr(); a.String() != "198.18.0.1:7400" || r.Err() != nil || r.Len() != 0 {
		t.Fatalf("addr %v, err %v, left %d", a, r.Err(), r.Len())
	}
	// Errors stick, and later reads return zero values.
	r = NewReader([]byte{3, 1, 2})
	if r.Count(int(r.U8()), 2, 1) != 0 || !errors.Is(r.Err(), ErrTooMany) || r.U8() != 0 || r.Len() != 0 {
		t.Fatal("count over its limit")
	}
	r = NewReader([]byte{200, 1, 2})
	if r.Count(int(r.U8()), 1000, 8) != 0 || !errors.Is(r.Err(), ErrTruncated) {
		t.Fatal("count that cannot fit in the bytes left")
	}
	r = NewReader([]byte{1})
	if r.Bytes(2) != nil || r.Bytes(-1) != nil || !errors.Is(r.Err(), ErrTruncated) {
		t.Fatal("short read")
	}
	r = NewReader([]byte{1, 2, 3})
	if v := r.Bytes(1); cap(v) != 1 {
		t.Fatal("Bytes lets an append overwrite the message")
	}
	r.SetRest(r.Rest()[1:])
	if r.U8() != 3 {
		t.Fatal("SetRest")
	}
}

func TestProbeRoundTrips(t *testing.T) {
	a, b := key(1), key(2)
	k := [32]byte{7}
	for _, obs := range []netip.AddrPort{{}, netip.MustParseAddrPort("198.18.0.1:9"), netip.MustParseAddrPort("[2001:db8::7]:7400")} {
		rep := Probe{ProbeHeader: ProbeHeader{Type: ProbeReply, TxID: 1, Timestamp: 2}, From: a.Identity(), Observed: obs}
		rep.Seal(&k, b.Identity())
		enc := AppendProbe(nil, &rep)
		if len(enc) < MinReplySize || len(enc) > MaxReplySize {
			t.Fatalf("reply of %d bytes, bounds %d..%d", len(enc), MinReplySize, MaxReplySize)
		}
		got, err := ParseProbe(enc)
		if err != nil || got != rep || !got.CheckMAC(&k, b.Identity()) {
			t.Fatalf("reply %v: %+v, %v", obs, got, err)
		}
		// The MAC covers the observed address: an on-path attacker who
		// rewrites it (to make us believe in another address) is caught.
		got.Observed = netip.MustParseAddrPort("198.18.9.9:9")
		if got.CheckMAC(&k, b.Identity()) {
			t.Fatal("a rewritten observed address kept its MAC")
		}
	}
	req := Probe{ProbeHeader: ProbeHeader{Type: ProbeRequest, TxID: 3, Timestamp: 4}, From: a.Identity()}
	req.Seal(&k, b.Identity())
	if enc := AppendProbe(nil, &req); len(enc) != RequestSize {
		t.Fatalf("request of %d bytes", len(enc))
	} else if got, err := ParseProbe(enc); err != nil || got != req || got.CheckMAC(&k, a.Identity()) {
		t.Fatal("request round trip, or a MAC for the wrong receiver")
	}
	h := NewHello(a, b.Identity(), 5, 6)
	enc := AppendHello(nil, &h)
	got, err := ParseHello(enc)
	var scratch [HelloSignedSize]byte
	if err != nil || got != h || len(enc) != HelloSize || !got.Verify(scratch[:0]) {
		t.Fatal("hello round trip")
	}
	if allocs := testing.AllocsPerRun(10, func() { got.Verify(scratch[:0]) }); allocs != 0 {
		t.Errorf("Verify allocates %v times with a scratch buffer", allocs)
	}
	got.To = a.Identity()
	if got.Verify(nil) {
		t.Fatal("a hello readdressed kept its signature")
	}
	if n, err := ParseDialBack(AppendDialBack(nil, 42, 7)); err != nil || n != 42 {
		t.Fatalf("dial-back: %d, %v", n, err)
	}
	if _, err := ParseDialBack(append(AppendDialBack(nil, 42, 7), 0)); err == nil {
		t.Fatal("a dial-back with trailing bytes")
	}
}

func TestRelayHeader(t *testing.T) {
	s := [SessionSize]byte{1, 2, 3}
	b := append(AppendRelayHeader(nil, RelayHeader{Session: s}), 0x40, 1)
	h, p, err := ParseRelayHeader(b)
	if err != nil || h.Session != s || !bytes.Equal(p, []byte{0x40, 1}) {
		t.Fatal("round trip")
	}
	if got, ok := RelaySession(b); !ok || got != s {
		t.Fatal("RelaySession")
	}
	// A frame with the magic but no whole header is no frame (FuzzDemux
	// found 4-19 byte "CRLY" frames reaching the relay forwarder).
	for n := 4; n < RelayHeaderSize; n++ {
		if _, _, err := ParseRelayHeader(b[:n]); err == nil {
			t.Fatalf("a %d-byte frame parsed", n)
		}
		if _, ok := RelaySession(b[:n]); ok {
			t.Fatalf("RelaySession took a %d-byte frame", n)
		}
	}
}

// TestImports: wire is a leaf under pki.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	allowed := []string{"github.com/korium/korium-tun/pki", "lukechampine.com/blake3"}
	for _, imp := range pkg.Imports {
		if strings.Contains(strings.Split(imp, "/")[0], ".") && !slices.Contains(allowed, imp) {
			t.Errorf("wire imports %s; allowed: standard library and %v", imp, allowed)
		}
	}
}
