package smartsock

import (
	"net/netip"
	"sync"
)

// A relay forwards many frames per read batch, mostly full-size ones to the
// same endpoint. While the read loop runs the relay server, SendRelay
// gathers consecutive equal-size frames to one destination into a GSO
// write (one sendmsg for up to maxFwdSegs frames) instead of a syscall per
// frame; the read loop flushes at the end of every batch.
const (
	maxFwdSegs  = 32
	fwdBufSize  = maxFwdSegs * 1500
	fwdOOBSpace = 32
)

// fwdBatch is the gathered frames. mu guards all its fields; it is taken
// by SendRelay (the relay server's sender, called from Forward on the read
// path) and by the read path around a batch, and held across the socket
// write of the frames it guards, with no other lock of ours ever taken
// under it.
type fwdBatch struct {
	mu     sync.Mutex
	active bool // the read loop is dispatching a batch: gather, flush later
	noGSO  bool // the kernel refused a GSO write once: send one by one
	buf    []byte
	dst    netip.AddrPort
	seg    int  // size of every segment but possibly the last
	short  bool // the last segment is shorter: nothing may follow it
	n      int
	oob    [fwdOOBSpace]byte
}

// SendRelay writes a relay frame as is to dst (the relay server's sender).
func (c *Conn) SendRelay(frame []byte, dst netip.AddrPort) error {
	f := &c.fwd
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.active || f.noGSO || len(frame) > 1500 {
		return c.udp.WriteTo(frame, nil, dst)
	}
	if f.n > 0 && (dst != f.dst || len(frame) > f.seg || f.short || f.n == maxFwdSegs) {
		c.flushFwdLocked()
	}
	if f.n == 0 {
		if f.buf == nil {
			f.buf = make([]byte, 0, fwdBufSize)
		}
		f.dst, f.seg, f.short = dst, len(frame), false
	}
	f.short = len(frame) < f.seg
	f.buf = append(f.buf, frame...)
	f.n++
	return nil
}

// startForwarding and endForwarding bracket the dispatch of one read batch.
func (c *Conn) startForwarding() {
	c.fwd.mu.Lock()
	c.fwd.active = true
	c.fwd.mu.Unlock()
}

func (c *Conn) endForwarding() {
	f := &c.fwd
	f.mu.Lock()
	if f.n > 0 {
		c.flushFwdLocked()
	}
	f.active = false
	f.mu.Unlock()
}

func (c *Conn) flushFwdLocked() {
	f := &c.fwd
	defer func() { f.buf, f.n = f.buf[:0], 0 }()
	if f.n == 1 {
		c.udp.WriteTo(f.buf, nil, f.dst)
		return
	}
	oobLen := putGSOCmsg(f.oob[:], f.seg)
	if oobLen == 0 {
		f.noGSO = true
	}
	var err error
	if !f.noGSO {
		c.stats.TxForwardGSO.Add(1)
		err = c.udp.WriteTo(f.buf, f.oob[:oobLen], f.dst)
	}
	if f.noGSO || err != nil {
		// No GSO here (or this destination refused it): from now on one
		// frame per write, and this batch too.
		f.noGSO = true
		for off := 0; off < len(f.buf); off += f.seg {
			c.udp.WriteTo(f.buf[off:min(off+f.seg, len(f.buf))], nil, f.dst)
		}
	}
}
