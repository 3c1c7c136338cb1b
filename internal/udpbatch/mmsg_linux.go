//go:build linux && (amd64 || arm64)

package udpbatch

import (
	"encoding/binary"
	"net"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// addrCacheLen is how many distinct sources keep their *net.UDPAddr. A
// batch usually comes from one or two peers; a source that is not cached
// costs one allocation.
const addrCacheLen = 8

// addrKey identifies a source address as the kernel reported it.
type addrKey struct {
	ip    [16]byte
	port  uint16
	v6    bool
	scope uint32
}

type mmsgReader struct {
	conn  *net.UDPConn
	rc    syscall.RawConn
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // big enough for IPv4 and IPv6 sources

	// in and out of read, which runs inside rc.Read
	count, flags, got int
	errno             syscall.Errno
	readFn            func(fd uintptr) bool

	keys  [addrCacheLen]addrKey
	addrs [addrCacheLen]*net.UDPAddr
	next  int // cache slot to replace next
}

func newMmsgReader(c *net.UDPConn) (Reader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &mmsgReader{conn: c, rc: rc}
	r.readFn = r.read // bound once: a method value per call would allocate
	return r, nil
}

func (r *mmsgReader) read(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])),
			uintptr(r.count), uintptr(r.flags), 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait until readable
		}
		r.got, r.errno = int(n), e
		return true
	}
}

func (r *mmsgReader) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	r.pack(ms)
	r.count, r.flags = len(ms), flags
	err := r.rc.Read(r.readFn)
	if err == nil && r.errno != 0 {
		err = os.NewSyscallError("recvmmsg", r.errno)
	}
	if err != nil {
		return 0, &net.OpError{Op: "read", Net: r.conn.LocalAddr().Network(), Source: r.conn.LocalAddr(), Err: err}
	}
	for i := range r.got {
		h := &r.hdrs[i]
		m := &ms[i]
		m.N = int(h.Len)
		m.NN = int(h.Hdr.Controllen)
		m.Flags = int(h.Hdr.Flags)
		m.Addr = r.addr(&r.names[i])
	}
	return r.got, nil
}

// pack points the kernel's message headers at ms's buffers; they grow to
// the largest batch and are reused.
func (r *mmsgReader) pack(ms []ipv4.Message) {
	if len(ms) > len(r.hdrs) {
		r.hdrs = make([]unix.Mmsghdr, len(ms))
		r.names = make([]unix.RawSockaddrInet6, len(ms))
	}
	nb := 0
	for i := range ms {
		nb += len(ms[i].Buffers)
	}
	if nb > len(r.iovs) {
		r.iovs = make([]unix.Iovec, nb)
	}
	iov := r.iovs[:0]
	for i := range ms {
		m := &ms[i]
		h := &r.hdrs[i]
		*h = unix.Mmsghdr{}
		start := len(iov)
		for _, b := range m.Buffers {
			v := unix.Iovec{}
			if len(b) > 0 {
				v.Base = &b[0]
				v.SetLen(len(b))
			}
			iov = append(iov, v)
		}
		if len(iov) > start {
			h.Hdr.Iov = &iov[start]
			h.Hdr.SetIovlen(len(iov) - start)
		}
		if len(m.OOB) > 0 {
			h.Hdr.Control = &m.OOB[0]
			h.Hdr.SetControllen(len(m.OOB))
		}
		h.Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet6
	}
}

// addr returns the source address in sa, from the cache if it is there.
func (r *mmsgReader) addr(sa *unix.RawSockaddrInet6) *net.UDPAddr {
	var k addrKey
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		copy(k.ip[:], sa4.Addr[:])
		k.port = portOf(sa4.Port)
	case unix.AF_INET6:
		k.ip, k.v6, k.scope = sa.Addr, true, sa.Scope_id
		k.port = portOf(sa.Port)
	default:
		return nil
	}
	for i := range r.keys {
		if r.addrs[i] != nil && r.keys[i] == k {
			return r.addrs[i]
		}
	}
	a := &net.UDPAddr{Port: int(k.port)}
	if k.v6 {
		a.IP = append(net.IP(nil), k.ip[:]...)
		if k.scope != 0 {
			// as x/net names it: the interface, or its index
			if ifi, err := net.InterfaceByIndex(int(k.scope)); err == nil {
				a.Zone = ifi.Name
			} else {
				a.Zone = strconv.FormatUint(uint64(k.scope), 10)
			}
		}
	} else {
		a.IP = append(net.IP(nil), k.ip[:4]...)
	}
	r.keys[r.next], r.addrs[r.next] = k, a
	r.next = (r.next + 1) % addrCacheLen
	return a
}

// portOf converts a port in network byte order as the kernel stores it.
func portOf(p uint16) uint16 {
	var b [2]byte
	*(*uint16)(unsafe.Pointer(&b[0])) = p
	return binary.BigEndian.Uint16(b[:])
}
