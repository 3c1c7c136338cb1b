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

// fwdBatch is the frames gathered. mu guards every field; it is taken by
// SendRelay (the relay server's sender, called from Forward on the read
// path) and by the read path around a batch, never with another lock of
// ours under it, and never across a write: a full batch is detached
// (fwdOut) and written after mu is released, into the spare buffer's place.
type fwdBatch struct {
	mu     sync.Mutex
	active bool // the read loop is dispatching a batch: gather, flush later
	noGSO  bool // the kernel refused a GSO write once: send one by one
	buf    []byte
	spare  []byte // the other buffer, while no write holds it
	dst    netip.AddrPort
	seg    int  // size of every segment but possibly the last
	short  bool // the last segment is shorter: nothing may follow it
	n      int
}

// fwdOut is a detached batch on its way to the socket.
type fwdOut struct {
	buf []byte
	dst netip.AddrPort
	seg int
	n   int
}

// SendRelay writes a relay frame as is to dst (the relay server's sender).
func (c *Conn) SendRelay(frame []byte, dst netip.AddrPort) error {
	f := &c.fwd
	f.mu.Lock()
	if !f.active || f.noGSO || len(frame) > 1500 {
		f.mu.Unlock()
		return c.udp.WriteTo(frame, nil, dst)
	}
	var out fwdOut
	if f.n > 0 && (dst != f.dst || len(frame) > f.seg || f.short || f.n == maxFwdSegs) {
		out = f.detachLocked()
	}
	if f.n == 0 {
		if f.buf == nil {
			f.buf, f.spare = f.spare, nil
			if f.buf == nil {
				f.buf = make([]byte, 0, fwdBufSize)
			}
		}
		f.dst, f.seg, f.short = dst, len(frame), false
	}
	f.short = len(frame) < f.seg
	f.buf = append(f.buf, frame...)
	f.n++
	f.mu.Unlock()
	c.writeFwd(out)
	return nil
}

// detachLocked takes the gathered frames out of f.
func (f *fwdBatch) detachLocked() fwdOut {
	out := fwdOut{buf: f.buf, dst: f.dst, seg: f.seg, n: f.n}
	f.buf, f.n = nil, 0
	return out
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
	out := f.detachLocked()
	f.active = false
	f.mu.Unlock()
	c.writeFwd(out)
}

// writeFwd writes a detached batch: one GSO write where the kernel takes
// it, else frame by frame; then its buffer becomes the spare again.
func (c *Conn) writeFwd(out fwdOut) {
	if out.n == 0 {
		return
	}
	f := &c.fwd
	f.mu.Lock()
	noGSO := f.noGSO
	f.mu.Unlock()
	var oob [fwdOOBSpace]byte
	oobLen := 0
	if out.n > 1 && !noGSO {
		oobLen = putGSOCmsg(oob[:], out.seg)
	}
	var err error
	switch {
	case out.n == 1:
		c.udp.WriteTo(out.buf, nil, out.dst)
	case oobLen > 0:
		c.stats.TxForwardGSO.Add(1)
		err = c.udp.WriteTo(out.buf, oob[:oobLen], out.dst)
	}
	if out.n > 1 && (oobLen == 0 || err != nil) {
		// No GSO here (or this destination refused it): from now on one
		// frame per write, and this batch too.
		noGSO = true
		for off := 0; off < len(out.buf); off += out.seg {
			c.udp.WriteTo(out.buf[off:min(off+out.seg, len(out.buf))], nil, out.dst)
		}
	}
	f.mu.Lock()
	f.noGSO = f.noGSO || noGSO
	if f.spare == nil {
		f.spare = out.buf[:0]
	}
	f.mu.Unlock()
}
