//go:build linux

package smartsock

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func appendCmsg(b []byte, level, typ int32, data []byte) []byte {
	start := len(b)
	b = append(b, make([]byte, unix.CmsgSpace(len(data)))...)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[start]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[start+unix.CmsgSpace(0):], data)
	return b
}

func TestGSOSegmentPatch(t *testing.T) {
	// quic-go's control message: ECN (IPV6_TCLASS) then UDP_SEGMENT.
	oob := appendCmsg(nil, 41, 67, []byte{2, 0, 0, 0})
	oob = appendCmsg(oob, 17, 103, []byte{0x98, 0x05}) // 1432 little endian
	if got := gsoSize(oob); got != 1432 {
		t.Fatalf("gsoSize = %d", got)
	}
	setGSOSize(oob, 1452)
	if got := gsoSize(oob); got != 1452 {
		t.Fatalf("after patch gsoSize = %d", got)
	}
	if gsoSize(oob[:10]) != 0 || gsoSize(nil) != 0 {
		t.Fatal("truncated control messages must read as no GSO")
	}
}
