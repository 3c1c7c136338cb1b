//go:build linux && (amd64 || arm64)

package udpbatch

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// With UDP_GRO set, the kernel hands a socket a run of same-sized datagrams
// from one source as one read, up to the largest UDP datagram, with the
// segment size in a control message. A GSO write that crossed loopback or a
// veth arrives that way whole instead of being split in the kernel and queued
// packet by packet.
const (
	groBufSize = 1 << 16 // the largest datagram a coalesced read can hold
	// groMsgs coalesced reads per recvmmsg: up to ~180 packets of 1452
	// bytes, more than quic-go takes in the many batches (of 8) it reads
	// them in, in 256 KiB per socket.
	groMsgs    = 4
	groOOBSize = 128 // room for TOS/TCLASS, PKTINFO and UDP_GRO together
)

// groReader splits coalesced reads into the caller's messages, one segment
// each (copied: quic-go ties a pooled buffer to each message).
type groReader struct {
	inner *mmsgReader
	st    *GROStats
	big   []ipv4.Message

	// The read being split: messages cur..n-1 of big are unread, the
	// current one from off on, in seg-byte segments; oob is its control
	// messages without UDP_GRO, copied to every segment.
	n, cur, off, seg int
	oob              []byte
	scratch          [groOOBSize]byte
}

func newGROReader(c *net.UDPConn, st *GROStats) (Reader, error) {
	r, err := newMmsgReader(c)
	if err != nil {
		return nil, err
	}
	var serr error
	if err := r.(*mmsgReader).rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, nil // an older kernel: read datagram by datagram
	}
	g := &groReader{inner: r.(*mmsgReader), st: st, big: make([]ipv4.Message, groMsgs)}
	for i := range g.big {
		g.big[i].Buffers = [][]byte{make([]byte, groBufSize)}
		g.big[i].OOB = make([]byte, groOOBSize)
	}
	return g, nil
}

// ReadBatch fills ms with the segments of what is left of the last read,
// reading again when nothing is: each message gets one datagram in its
// first buffer, its source and its control messages.
func (r *groReader) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	for {
		if k := r.fill(ms); k > 0 {
			return k, nil
		}
		n, err := r.inner.ReadBatch(r.big, flags)
		if err != nil {
			return 0, err
		}
		r.n, r.cur = n, -1
		r.advance()
	}
}

// advance moves to the next read in big that can be split, dropping (and
// counting) those that cannot.
func (r *groReader) advance() {
	for r.cur++; r.cur < r.n; r.cur++ {
		m := &r.big[r.cur]
		seg, oob, ok := splitGROCmsg(m.OOB[:m.NN], r.scratch[:0])
		switch {
		case m.Flags&unix.MSG_CTRUNC != 0 || !ok:
			r.st.DropCmsg.Add(1)
		case m.Flags&unix.MSG_TRUNC != 0:
			r.st.DropTrunc.Add(1)
		case m.N == 0:
			r.st.DropEmpty.Add(1)
		default:
			if seg == 0 || seg >= m.N {
				seg = m.N
			} else {
				r.st.Coalesced.Add(1)
				r.st.Segments.Add(uint64((m.N + seg - 1) / seg))
			}
			r.off, r.seg, r.oob = 0, seg, oob
			return
		}
	}
}

// fill copies segments into ms until it is full or the read is used up.
func (r *groReader) fill(ms []ipv4.Message) int {
	k := 0
	for k < len(ms) && r.cur < r.n {
		m := &r.big[r.cur]
		end := min(r.off+r.seg, m.N)
		d := &ms[k]
		d.N = copy(d.Buffers[0], m.Buffers[0][r.off:end])
		d.NN = copy(d.OOB, r.oob)
		d.Flags = 0
		if d.N < end-r.off {
			d.Flags |= unix.MSG_TRUNC
		}
		if d.NN < len(r.oob) {
			d.Flags |= unix.MSG_CTRUNC
		}
		d.Addr = m.Addr
		k++
		if r.off = end; r.off >= m.N {
			r.advance()
		}
	}
	return k
}

// splitGROCmsg walks the control messages in oob. It returns the segment
// size of a UDP_GRO message (0 when there is none) and the other messages,
// appended to rest; ok is false when oob is malformed (a length that runs
// past the end or is shorter than a header, a UDP_GRO message that is not
// one int of 1..65535, two of them).
func splitGROCmsg(oob, rest []byte) (seg int, out []byte, ok bool) {
	out = rest
	seen := false
	for len(oob) > 0 {
		if len(oob) < unix.SizeofCmsghdr {
			return 0, rest, false
		}
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return 0, rest, false
		}
		space := min(unix.CmsgSpace(l-unix.SizeofCmsghdr), len(oob))
		if h.Level == syscall.IPPROTO_UDP && h.Type == unix.UDP_GRO {
			if seen || l != unix.CmsgLen(4) {
				return 0, rest, false
			}
			v := *(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			if v < 1 || v > 0xffff {
				return 0, rest, false
			}
			seg, seen = int(v), true
		} else {
			out = append(out, oob[:space]...)
		}
		oob = oob[space:]
	}
	return seg, out, true
}
