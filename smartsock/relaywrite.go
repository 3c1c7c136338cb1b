package smartsock

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// relayBufSize holds the largest GSO batch quic-go writes (64 KiB) plus a
// CRLY header per segment.
const relayBufSize = 64<<10 + 64*RelayHeaderSize

// maxOOB bounds the control messages we copy to patch the GSO segment size.
const maxOOB = 128

// writeRelay sends b to a relay in CRLY frames. A GSO batch stays a GSO
// batch: every segment gets its header and the segment size in oob grows by
// the header size, so the relay receives one frame per QUIC packet.
func (c *Conn) writeRelay(d dest, b, oob []byte) error {
	seg := gsoSize(oob)
	if seg <= 0 || seg >= len(b) {
		seg = len(b)
	}
	bp := c.relayBuf.Get().(*[]byte)
	out := (*bp)[:0]
	for off := 0; off < len(b); off += seg {
		end := min(off+seg, len(b))
		if len(out)+RelayHeaderSize+end-off > cap(out) {
			break // cannot happen with quic-go's batches; drop the rest like loss
		}
		out = AppendRelayHeader(out, RelayHeader{Session: d.session})
		out = append(out, b[off:end]...)
	}
	var ob [maxOOB]byte
	o := oob
	if len(oob) > 0 && len(oob) <= maxOOB {
		o = ob[:copy(ob[:], oob)]
		setGSOSize(o, seg+RelayHeaderSize)
	} else if len(oob) > maxOOB {
		o = nil
	}
	_, _, err := c.udp.WriteMsgUDPAddrPort(out, o, d.addr)
	*bp = out[:0]
	c.relayBuf.Put(bp)
	c.stats.TxRelayed.Add(1)
	return err
}

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
