package ip6

import "testing"

func FuzzIPv6Addrs(f *testing.F) {
	f.Add(append([]byte{0x60, 0, 0, 0, 0, 1, 17, 64}, make([]byte, 33)...))
	f.Add([]byte{0x60})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, _, ok := Addrs(b); ok && len(b) < 40 {
			t.Fatal("accepted a short packet")
		}
		if len(b) >= 40 {
			AppendPacketTooBig(nil, b, 1280)
		}
	})
}
