package server

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// FuzzForward feeds arbitrary datagrams from arbitrary sources to a relay
// holding two sessions. Forward must never panic, must send only to a
// registered endpoint of the session named in the frame, only when the
// source is that session's other endpoint, and only the frame unchanged.
func FuzzForward(f *testing.F) {
	f.Add([]byte("CRLY"), []byte{198, 51, 100, 1}, uint16(1000), uint8(0), int64(0))
	f.Add([]byte("payload"), []byte{32, 1, 13, 184, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}, uint16(2000), uint8(1), int64(1))
	f.Add([]byte(""), []byte{203, 0, 113, 66}, uint16(1000), uint8(1), int64(-5))
	f.Add([]byte("x"), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 1}, uint16(1000), uint8(2), int64(1e12))
	f.Add([]byte("y"), []byte{192, 0, 2, 9}, uint16(9), uint8(3), int64(200e9))
	f.Add([]byte("z"), []byte{}, uint16(0), uint8(4|1|8), int64(0))
	f.Add(make([]byte, 20_000), []byte{}, uint16(0), uint8(4|2|16), int64(0))
	f.Fuzz(func(t *testing.T, data, ip []byte, port uint16, sel uint8, dt int64) {
		fs := &fakeSender{}
		s := New(Config{Rate: 10_000, MaxBytes: 50_000}, fs)
		id1, err := s.Open(idA, idB, addrA, addrB, t0)
		if err != nil {
			t.Fatal(err)
		}
		addrC, addrD := addr("192.0.2.9:9"), addr("192.0.2.10:9")
		id2, err := s.Open(ident(3), ident(4), addrC, addrD, t0)
		if err != nil {
			t.Fatal(err)
		}
		ends := map[[16]byte][2]netip.AddrPort{id1: {addrA, addrB}, id2: {addrC, addrD}}

		// sel chooses what the datagram claims to be: raw bytes, or a CRLY
		// frame for one of the sessions or for an unknown one.
		var frame []byte
		switch sel % 4 {
		case 0:
			frame = data
		case 1:
			frame = append([]byte("CRLY"), append(id1[:], data...)...)
		case 2:
			frame = append([]byte("CRLY"), append(id2[:], data...)...)
		case 3:
			other := id1
			other[15] ^= 0x55
			frame = append([]byte("CRLY"), append(other[:], data...)...)
		}
		src := netip.AddrPortFrom(netip.Addr{}, port)
		if a, ok := netip.AddrFromSlice(ip); ok {
			src = netip.AddrPortFrom(a, port)
		}
		// Half the time, send from a registered endpoint (of either
		// session), so the forwarding paths are reached, not just drops.
		if sel&4 != 0 {
			src = []netip.AddrPort{addrA, addrB, addrC, addrD}[sel>>3%4]
		}
		orig := bytes.Clone(frame)
		handled := s.Forward(frame, src, t0.Add(time.Duration(dt)))
		if !bytes.Equal(frame, orig) {
			t.Fatal("Forward modified the frame")
		}
		out := fs.take()
		if len(out) > 1 {
			t.Fatalf("one datagram sent %d times", len(out))
		}
		if len(out) == 0 {
			return
		}
		if !handled {
			t.Fatal("sent but returned false")
		}
		var sid [16]byte
		copy(sid[:], frame[4:20])
		e, ok := ends[sid]
		if !ok {
			t.Fatalf("forwarded a frame of unknown session %x", sid)
		}
		un := netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		switch {
		case un == e[0] && out[0].dst == e[1]:
		case un == e[1] && out[0].dst == e[0]:
		default:
			t.Fatalf("frame from %v sent to %v; endpoints %v", src, out[0].dst, e)
		}
		if !bytes.Equal(out[0].frame, orig) {
			t.Fatal("forwarded frame differs")
		}
	})
}
