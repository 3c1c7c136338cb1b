//go:build linux && (amd64 || arm64)

package udpbatch

import (
	"bytes"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// gsoOOB is a UDP_SEGMENT control message for seg-byte segments.
func gsoOOB(seg int) []byte {
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = syscall.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(seg)
	return oob
}

// cmsg is one control message with body b, padded as the kernel pads it.
func cmsg(level, typ int32, b []byte) []byte {
	oob := make([]byte, unix.CmsgSpace(len(b)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(b)))
	copy(oob[unix.CmsgLen(0):], b)
	return oob
}

func groCmsg(v int32) []byte {
	return cmsg(syscall.IPPROTO_UDP, unix.UDP_GRO, unsafe.Slice((*byte)(unsafe.Pointer(&v)), 4))
}

func newGRO(t *testing.T, c *net.UDPConn) (Reader, *GROStats) {
	t.Helper()
	st := new(GROStats)
	r, gro, err := NewGRO(c, st)
	if err != nil {
		t.Fatal(err)
	}
	if !gro {
		t.Fatal("UDP_GRO not supported by this kernel")
	}
	return r, st
}

// segments is a GSO write of n segments of seg bytes (the last one short
// by 100), each starting with its sender and index.
func segments(tag string, n, seg int) ([]byte, [][]byte) {
	var all []byte
	var each [][]byte
	for i := range n {
		size := seg
		if i == n-1 {
			size -= 100
		}
		s := bytes.Repeat([]byte{byte(i)}, size)
		copy(s, fmt.Sprintf("%s %d", tag, i))
		all = append(all, s...)
		each = append(each, s)
	}
	return all, each
}

// TestGROSplitsCoalescedRead: two senders each write one GSO burst over
// loopback (the kernel keeps it whole for a UDP_GRO socket); the reader
// hands out every segment as its own datagram, in order, with its sender's
// address, across more ReadBatch calls than one batch holds.
func TestGROSplitsCoalescedRead(t *testing.T) {
	rc := listen(t, "udp4", "127.0.0.1:0")
	r, st := newGRO(t, rc)
	dst := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	const n, seg = 20, 1200
	senders := []*net.UDPConn{listen(t, "udp4", "127.0.0.1:0"), listen(t, "udp4", "127.0.0.1:0")}
	want := map[string][][]byte{}
	for j, s := range senders {
		all, each := segments(fmt.Sprint("s", j), n, seg)
		if _, _, err := s.WriteMsgUDPAddrPort(all, gsoOOB(seg), dst); err != nil {
			t.Fatalf("GSO write: %v", err)
		}
		want[s.LocalAddr().String()] = each
	}
	got := map[string][][]byte{}
	ms := messages(8, 1500)
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for total := 0; total < 2*n; {
		k, err := r.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", total, 2*n, err)
		}
		for _, m := range ms[:k] {
			if m.Flags != 0 {
				t.Errorf("flags %#x on a segment", m.Flags)
			}
			from := m.Addr.String()
			got[from] = append(got[from], bytes.Clone(m.Buffers[0][:m.N]))
		}
		total += k
	}
	for from, w := range want {
		g := got[from]
		if len(g) != len(w) {
			t.Fatalf("from %s: %d datagrams, want %d (got sources %d)", from, len(g), len(w), len(got))
		}
		for i := range w {
			if !bytes.Equal(g[i], w[i]) {
				t.Errorf("from %s: datagram %d differs (%d bytes, want %d)", from, i, len(g[i]), len(w[i]))
			}
		}
	}
	if c, s := st.Coalesced.Load(), st.Segments.Load(); c != 2 || s != 2*n {
		t.Errorf("coalesced reads %d with %d segments, want 2 with %d", c, s, 2*n)
	}
}

// TestGROKeepsOtherCmsgs: the control messages quic-go reads (TOS for ECN)
// reach every segment, without the UDP_GRO one.
func TestGROKeepsOtherCmsgs(t *testing.T) {
	rc := listen(t, "udp4", "127.0.0.1:0")
	r, _ := newGRO(t, rc)
	sc, _ := rc.SyscallConn()
	sc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) })
	s := listen(t, "udp4", "127.0.0.1:0")
	ssc, _ := s.SyscallConn()
	ssc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, 2) }) // ECT(0)
	all, _ := segments("tos", 3, 1000)
	if _, _, err := s.WriteMsgUDPAddrPort(all, gsoOOB(1000), rc.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	ms := messages(8, 1500)
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for got := 0; got < 3; {
		k, err := r.ReadBatch(ms, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms[:k] {
			oob := m.OOB[:m.NN]
			if seg, _, ok := splitGROCmsg(oob, nil); !ok || seg != 0 {
				t.Errorf("segment's control messages: UDP_GRO %d, well-formed %v", seg, ok)
			}
			hdr, body, _, err := unix.ParseOneSocketControlMessage(oob)
			if err != nil || hdr.Level != unix.IPPROTO_IP || hdr.Type != unix.IP_TOS || len(body) != 1 || body[0]&3 != 2 {
				t.Errorf("segment's control message: %+v %x %v, want IP_TOS with ECT(0)", hdr, body, err)
			}
		}
		got += k
	}
}

// TestGRODropsBadCmsg: a read whose control messages are malformed, carry an
// odd UDP_GRO message or were cut short, whose data was cut short, or that is
// empty, is dropped whole and counted, and the reads after it still come
// through with their other control messages.
func TestGRODropsBadCmsg(t *testing.T) {
	st := new(GROStats)
	r := &groReader{st: st, big: make([]ipv4.Message, 8)}
	payload := bytes.Repeat([]byte("p"), 3000)
	set := func(i int, oob []byte, flags int) {
		r.big[i] = ipv4.Message{Buffers: [][]byte{payload}, N: len(payload), OOB: oob, NN: len(oob), Flags: flags,
			Addr: &net.UDPAddr{IP: net.IPv4(198, 18, 0, byte(i)), Port: 1}}
	}
	short := groCmsg(1000)[:unix.SizeofCmsghdr+2]
	set(0, groCmsg(0), 0)                                            // segment size 0
	set(1, append(groCmsg(1000), groCmsg(1000)...), 0)               // two of them
	set(2, short, 0)                                                 // runs past the end
	set(3, cmsg(syscall.IPPROTO_UDP, unix.UDP_GRO, []byte{1, 2}), 0) // not an int
	set(4, groCmsg(1000), unix.MSG_CTRUNC)                           // cut short
	set(5, groCmsg(1000), unix.MSG_TRUNC)                            // data cut short
	set(6, nil, 0)                                                   // empty
	r.big[6].N = 0
	set(7, append(cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{2}), groCmsg(1000)...), 0) // good
	r.n, r.cur = len(r.big), -1
	r.advance()
	ms := messages(8, 1500)
	k := r.fill(ms)
	if k != 3 {
		t.Fatalf("got %d datagrams, want the 3 segments of the good read", k)
	}
	for i, m := range ms[:k] {
		if m.Addr.(*net.UDPAddr).IP[15] != 7 || m.N != min(1000, 3000-1000*i) || m.NN != unix.CmsgSpace(1) {
			t.Errorf("datagram %d: %d bytes from %v", i, m.N, m.Addr)
		}
	}
	if d, tr, e := st.DropCmsg.Load(), st.DropTrunc.Load(), st.DropEmpty.Load(); d != 5 || tr != 1 || e != 1 {
		t.Errorf("dropped %d for control messages, %d truncated, %d empty; want 5, 1, 1", d, tr, e)
	}
	if k := r.fill(ms); k != 0 {
		t.Errorf("%d more datagrams after the read was used up", k)
	}
}

func TestSplitGROCmsg(t *testing.T) {
	tos := cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{2})
	for _, tc := range []struct {
		name string
		oob  []byte
		seg  int
		rest []byte
		ok   bool
	}{
		{"none", nil, 0, nil, true},
		{"tos only", tos, 0, tos, true},
		{"gro only", groCmsg(1452), 1452, nil, true},
		{"tos and gro", append(append([]byte{}, tos...), groCmsg(1200)...), 1200, tos, true},
		{"gro and tos", append(groCmsg(1200), tos...), 1200, tos, true},
		{"largest", groCmsg(0xffff), 0xffff, nil, true},
		{"too large", groCmsg(0x10000), 0, nil, false},
		{"negative", groCmsg(-1), 0, nil, false},
		{"short header", make([]byte, unix.SizeofCmsghdr-1), 0, nil, false},
		{"zero length", make([]byte, unix.SizeofCmsghdr), 0, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seg, rest, ok := splitGROCmsg(tc.oob, nil)
			if seg != tc.seg || ok != tc.ok || !bytes.Equal(rest, tc.rest) {
				t.Errorf("got %d %x %v, want %d %x %v", seg, rest, ok, tc.seg, tc.rest, tc.ok)
			}
		})
	}
}

func FuzzSplitGROCmsg(f *testing.F) {
	f.Add(groCmsg(1200))
	f.Add(append(cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{2}), groCmsg(1200)...))
	f.Add(cmsg(unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, make([]byte, 20)))
	f.Fuzz(func(t *testing.T, oob []byte) {
		seg, rest, ok := splitGROCmsg(oob, nil)
		if !ok {
			return
		}
		if seg < 0 || seg > 0xffff || len(rest) > len(oob) {
			t.Fatalf("segment %d, %d bytes kept of %d", seg, len(rest), len(oob))
		}
		if seg2, rest2, ok2 := splitGROCmsg(rest, nil); !ok2 || seg2 != 0 || !bytes.Equal(rest2, rest) {
			t.Fatalf("what was kept does not parse to itself without UDP_GRO: %d %v", seg2, ok2)
		}
	})
}

// TestGRODoesNotAllocate: reading and splitting GSO bursts from a known
// source allocates nothing.
func TestGRODoesNotAllocate(t *testing.T) {
	rc := listen(t, "udp4", "127.0.0.1:0")
	r, st := newGRO(t, rc)
	s := listen(t, "udp4", "127.0.0.1:0")
	dst := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	all, _ := segments("a", 10, 1200)
	oob := gsoOOB(1200)
	ms := messages(8, 1500)
	rc.SetReadDeadline(time.Now().Add(30 * time.Second))
	burst := func() {
		if _, _, err := s.WriteMsgUDPAddrPort(all, oob, dst); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < 10; {
			n, err := r.ReadBatch(ms, 0)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}
	burst()
	if a := testing.AllocsPerRun(200, burst); a != 0 {
		t.Fatalf("%.2f allocations per burst of 10, want 0", a)
	}
	if st.Coalesced.Load() == 0 {
		t.Fatal("no burst was coalesced")
	}
}
