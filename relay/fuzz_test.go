package relay

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"
)

// Every parser is fuzzed: it must never panic, and whatever it accepts must
// come back unchanged through its encoder and the parser again. For the
// fixed-size messages the encoding is canonical, so the bytes must match too.

func seedAll(f *testing.F) {
	obsResp, _ := AppendObserveResp(nil, ObserveResp{Addr: v6, Flags: FlagRelays})
	obsResp4, _ := AppendObserveResp(nil, ObserveResp{Addr: v4})
	punch, _ := AppendPunch(nil, []netip.AddrPort{v4, v6, mapped})
	for _, s := range [][]byte{
		nil,
		{0},
		AppendObserveReq(nil, 7),
		obsResp,
		obsResp4,
		AppendConnectReq(nil, ident(1)),
		AppendConnectResp(nil, [16]byte{1}),
		AppendIncomingReq(nil, Incoming{Session: [16]byte{2}, From: ident(3)}),
		AppendIncomingResp(nil),
		punch,
		{MsgPunch, 0},
		{MsgPunch, 9},
		{MsgPunch, 1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4, 0, 80},
		{MsgObserve, 4, 127, 0, 0, 1, 0, 1, 0, 0},
	} {
		f.Add(s)
	}
}

func FuzzParseObserveReq(f *testing.F) {
	seedAll(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ParseObserveReq(b)
		if err != nil {
			return
		}
		if enc := AppendObserveReq(nil, n); !bytes.Equal(enc, b) {
			t.Fatalf("re-encoded %x, want %x", enc, b)
		}
	})
}

func FuzzParseObserveResp(f *testing.F) {
	seedAll(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseObserveResp(b)
		if err != nil {
			return
		}
		enc, err := AppendObserveResp(nil, r)
		if err != nil {
			t.Fatalf("parsed %+v does not encode: %v", r, err)
		}
		r2, err := ParseObserveResp(enc)
		if err != nil || r2 != r {
			t.Fatalf("round trip %+v -> %+v, %v", r, r2, err)
		}
	})
}

func FuzzParseConnectReq(f *testing.F) {
	seedAll(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseConnectReq(b)
		if err != nil {
			return
		}
		if enc := AppendConnectReq(nil, id); !bytes.Equal(enc, b) {
			t.Fatalf("re-encoded %x, want %x", enc, b)
		}
	})
}

func FuzzParseConnectResp(f *testing.F) {
	seedAll(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseConnectResp(b)
		if err != nil {
			return
		}
		if enc := AppendConnectResp(nil, s); !bytes.Equal(enc, b) {
			t.Fatalf("re-encoded %x, want %x", enc, b)
		}
	})
}

func FuzzParseIncomingReq(f *testing.F) {
	seedAll(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := ParseIncomingReq(b)
		if err != nil {
			return
		}
		if enc := AppendIncomingReq(nil, in); !bytes.Equal(enc, b) {
			t.Fatalf("re-encoded %x, want %x", enc, b)
		}
	})
}

func FuzzParseIncomingResp(f *testing.F) {
	seedAll(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if ParseIncomingResp(b) != nil {
			return
		}
		if enc := AppendIncomingResp(nil); !bytes.Equal(enc, b) {
			t.Fatalf("re-encoded %x, want %x", enc, b)
		}
	})
}

func FuzzParsePunch(f *testing.F) {
	seedAll(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		addrs, err := ParsePunch(nil, b)
		if err != nil {
			if len(addrs) != 0 {
				t.Fatalf("error %v but %d addresses", err, len(addrs))
			}
			return
		}
		if len(addrs) > MaxCandidates {
			t.Fatalf("%d candidates accepted", len(addrs))
		}
		for _, ap := range addrs {
			if !ValidAddr(ap) || ap.Addr().Is4In6() {
				t.Fatalf("accepted %v", ap)
			}
		}
		enc, err := AppendPunch(nil, addrs)
		if err != nil {
			t.Fatalf("parsed %v does not encode: %v", addrs, err)
		}
		again, err := ParsePunch(nil, enc)
		if err != nil || !slices.Equal(again, addrs) {
			t.Fatalf("round trip %v -> %v, %v", addrs, again, err)
		}
	})
}
