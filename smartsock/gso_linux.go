//go:build linux

package smartsock

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// gsoCmsg returns the offset of the UDP_SEGMENT value in oob, or -1.
func gsoCmsg(oob []byte) int {
	for i := 0; i+unix.SizeofCmsghdr <= len(oob); {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[i]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || i+l > len(oob) {
			return -1
		}
		if h.Level == syscall.IPPROTO_UDP && h.Type == unix.UDP_SEGMENT && l >= unix.CmsgLen(2) {
			return i + unix.CmsgSpace(0)
		}
		i += unix.CmsgSpace(l - unix.SizeofCmsghdr)
	}
	return -1
}

// gsoSize returns the GSO segment size carried in oob, or 0.
func gsoSize(oob []byte) int {
	if i := gsoCmsg(oob); i >= 0 {
		return int(*(*uint16)(unsafe.Pointer(&oob[i])))
	}
	return 0
}

// setGSOSize rewrites the GSO segment size in oob, if it carries one.
func setGSOSize(oob []byte, size int) {
	if i := gsoCmsg(oob); i >= 0 {
		*(*uint16)(unsafe.Pointer(&oob[i])) = uint16(size)
	}
}

// putGSOCmsg writes a UDP_SEGMENT control message for seg-byte segments into
// oob (which has room for gsoOOBSpace bytes) and returns its length, or 0
// where the platform has no UDP GSO.
func putGSOCmsg(oob []byte, seg int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = syscall.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[unix.CmsgSpace(0)])) = uint16(seg)
	return unix.CmsgSpace(2)
}
