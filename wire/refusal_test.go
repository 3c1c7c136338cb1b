package wire

import (
	"testing"
	"time"
)

func TestRefusalWire(t *testing.T) {
	kp, peer := key(1), key(2)
	r := NewRefusal(kp, peer.Identity(), RefuseLowPoW, 24, 77, time.Now().UnixNano())
	b := AppendRefusal(nil, &r)
	if len(b) != RefusalSize || RefusalSize >= HelloSize || RefusalSize > MaxProbeSize {
		t.Fatalf("refusal of %d bytes (hello %d): it must be smaller than what it answers", len(b), HelloSize)
	}
	got, err := ParseRefusal(b)
	if err != nil || got != r || !got.Verify(nil) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	b[len(b)-65] ^= 1 // the bits byte
	if got, _ := ParseRefusal(b); got.Verify(nil) {
		t.Fatal("a tampered refusal verifies")
	}
	b[ProbeHeaderSize+64] = 9 // unknown reason
	if _, err := ParseRefusal(b); err == nil {
		t.Fatal("unknown reason parsed")
	}
	scratch := make([]byte, 0, RefusalSignedSize)
	if n := testing.AllocsPerRun(20, func() { r.Verify(scratch) }); n != 0 {
		t.Fatalf("Verify allocates %v times", n)
	}
}

func FuzzParseRefusal(f *testing.F) {
	kp := key(3)
	r1 := NewRefusal(kp, kp.Identity(), RefuseWrongIdentity, 0, 1, 1)
	r2 := NewRefusal(kp, kp.Identity(), RefuseSameIdentity, 8, 1, 1)
	f.Add(AppendRefusal(nil, &r1))
	f.Add(AppendRefusal(nil, &r2)[:RefusalSize-1])
	f.Add([]byte("SMPR\x05"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRefusal(b)
		if err != nil {
			return
		}
		if len(b) != RefusalSize || r.Reason < RefuseWrongIdentity || r.Reason > RefuseSameIdentity {
			t.Fatalf("accepted %d bytes, reason %d", len(b), r.Reason)
		}
		if got := AppendRefusal(nil, &r); string(got) != string(b) {
			t.Fatal("re-encoding differs")
		}
		r.Verify(nil)
	})
}
