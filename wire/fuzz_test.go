package wire

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/korium/korium-tun/pki"
)

func FuzzParseHello(f *testing.F) {
	kp := key(1)
	h := NewHello(kp, kp.Identity(), 1, 2)
	f.Add(AppendHello(nil, &h))
	f.Add([]byte("SMPR"))
	f.Add([]byte("SMPR\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHello(b)
		if err != nil {
			return
		}
		if string(AppendHello(nil, &h)) != string(b) {
			t.Fatal("re-encoding differs")
		}
		h.Verify(nil)
	})
}

func FuzzParseProbe(f *testing.F) {
	id := pki.Identity{1}
	req := Probe{ProbeHeader: ProbeHeader{Type: ProbeRequest, TxID: 9, Timestamp: 5}, From: id}
	rep := Probe{ProbeHeader: ProbeHeader{Type: ProbeReply, TxID: 9, Timestamp: 5}, From: id, Observed: netip.MustParseAddrPort("198.18.0.1:7")}
	rep6 := rep
	rep6.Observed = netip.MustParseAddrPort("[2001:db8::1]:7")
	none := rep
	none.Observed = netip.AddrPort{}
	for _, p := range []*Probe{&req, &rep, &rep6, &none} {
		f.Add(AppendProbe(nil, p))
	}
	f.Add(AppendDialBack(nil, 3, 4))
	f.Add([]byte("SMPR"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, err := ParseDialBack(b); err == nil {
			h, _, _ := ParseProbeHeader(b)
			if !bytes.Equal(AppendDialBack(nil, n, h.Timestamp), b) {
				t.Fatalf("dial-back %x does not re-encode", b)
			}
		}
		p, err := ParseProbe(b)
		if err != nil {
			return
		}
		if len(b) > MaxReplySize {
			t.Fatalf("a %d-byte probe parsed", len(b))
		}
		if out := AppendProbe(nil, &p); string(out) != string(b) {
			t.Fatalf("round trip changed %x to %x", b, out)
		}
		var k [32]byte
		p.CheckMAC(&k, id)
	})
}

func FuzzParseRelayHeader(f *testing.F) {
	f.Add(AppendRelayHeader(nil, RelayHeader{Session: [16]byte{1}}))
	f.Add([]byte("CRLY"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, payload, err := ParseRelayHeader(b)
		s, ok := RelaySession(b)
		if (err == nil) != ok || (ok && s != h.Session) {
			t.Fatal("RelaySession and ParseRelayHeader disagree")
		}
		if err != nil {
			return
		}
		if got := append(AppendRelayHeader(nil, h), payload...); string(got) != string(b) {
			t.Fatal("re-encoding differs")
		}
	})
}

// FuzzParseAddr: one encoding per address, and whatever parses encodes
// back to the same bytes.
func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"198.18.0.1:7400", "[2001:db8::1]:443"} {
		f.Add(AppendAddr(nil, netip.MustParseAddrPort(s)))
	}
	f.Add([]byte{6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, rest, err := ParseAddr(b)
		if err != nil {
			return
		}
		enc := AppendAddr(nil, a)
		if !bytes.Equal(append(enc, rest...), b) || AddrSize(a) != len(enc) {
			t.Fatalf("%x parsed as %v, which encodes as %x", b, a, enc)
		}
	})
}

// FuzzReader runs a program of reads (from the first bytes) over the rest:
// no panic, the error sticks, and no read returns more than was there.
func FuzzReader(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7}, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
	f.Add([]byte{5, 4}, []byte{3, 4, 1, 2, 3, 4, 0, 9})
	f.Fuzz(func(t *testing.T, prog, msg []byte) {
		r := NewReader(msg)
		failed := false
		for _, op := range prog {
			left := r.Len()
			switch op % 8 {
			case 0:
				r.U8()
			case 1:
				r.U16()
			case 2:
				r.U32()
			case 3:
				r.U64()
			case 4:
				if v := r.Bytes(int(op >> 3)); len(v) > left {
					t.Fatal("Bytes past the end")
				}
			case 5:
				if n := r.Count(int(op>>3), 16, 2); n*2 > left {
					t.Fatal("a count that does not fit")
				}
			case 6:
				r.Addr()
			case 7:
				r.SetRest(r.Rest())
			}
			if failed && r.Err() == nil {
				t.Fatal("an error did not stick")
			}
			failed = r.Err() != nil
			if r.Len() > left {
				t.Fatal("the reader grew")
			}
		}
	})
}
