package smartsock

import (
	"crypto/rand"
	"crypto/sha256"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/korium/korium-tun/wire"
)

// The read path: quic-go's read goroutine runs it, reading the published
// indexes and routes and the paths' atomics only. It tells the loop what
// it saw through the event queue and waits for it only where the next
// packets depend on the answer: after a hello or probe that may make a
// source a peer's (the handshake behind the hello must find its path), and
// after the first long-header packet on a path (quic-go's answer to it
// must be routed there). Those come at handshake and path-change rates,
// and the wait is bounded (loopWait); everything else goes on at once.

// ReadBatch implements quic-go's batch reader: it reads with recvmmsg into
// quic-go's buffers, unwraps frames of our relay sessions, hands probes and
// other relay frames to their handlers, drops packets from unknown sources,
// and rewrites the source of every remaining QUIC packet to its peer's
// virtual address. It never returns 0 packets without an error. Calls are
// serialized.
func (c *Conn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	for {
		n, err := c.udp.ReadBatch(ms, flags)
		if err != nil {
			return 0, err
		}
		if n = c.demuxLocked(ms, n, time.Now()); n > 0 {
			return n, nil
		}
	}
}

// demux is demuxLocked for callers without readMu (tests).
func (c *Conn) demux(ms []ipv4.Message, n int, now time.Time) int {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	return c.demuxLocked(ms, n, now)
}

// demuxLocked dispatches the first n messages of a read batch, as they
// came off the socket: relay frames of our sessions are unwrapped, probes
// and other relay frames go to their handlers, packets from unknown sources
// are dropped (and may be answered with a stateless reset), and the source
// of every QUIC packet left is rewritten to its peer's virtual address. It
// returns how many are left in ms[:n] for quic-go. Its fast path (QUIC from
// a known source) allocates nothing and takes no lock. readMu is held.
func (c *Conn) demuxLocked(ms []ipv4.Message, n int, now time.Time) int {
	nowNS := now.UnixNano()
	forwarding := false // relay frames of others gathered: flush before returning
	var lastReal netip.AddrPort
	var lastPath *path
	for i := 0; i < n; {
		m := &ms[i]
		b := m.Buffers[0][:m.N]
		ua, _ := m.Addr.(*net.UDPAddr)
		if ua == nil {
			n = removeMsg(ms, i, n)
			continue
		}
		real := unmap(ua.AddrPort())
		var pa *path
		if wire.IsRelay(b) {
			c.stats.RxRelay.Add(1)
			pa = c.ourSession(b, real)
			if pa == nil {
				if !forwarding {
					forwarding = true
					c.startForwarding()
				}
				c.handleForeignRelay(b, real, now)
				n = removeMsg(ms, i, n)
				continue
			}
			// Unwrap in place: quic-go reads the QUIC packet inside.
			m.N = copy(m.Buffers[0], b[wire.RelayHeaderSize:])
			b = m.Buffers[0][:m.N]
			c.stats.RxRelayed.Add(1)
		}
		if wire.IsProbe(b) {
			c.readProbe(b, real, pa, now)
			lastPath = nil // the table may have changed
			n = removeMsg(ms, i, n)
			continue
		}
		if pa == nil {
			pa = lastPath
			if pa == nil || real != lastReal {
				pa = c.real.load(real)
				lastReal, lastPath = real, pa
			}
		}
		if pa == nil {
			c.stats.DropUnknownSource.Add(1)
			c.maybeReset(b, real, now)
			n = removeMsg(ms, i, n)
			continue
		}
		p := pa.peer
		rt := p.rt.Load()
		if len(b) > 0 && b[0]&0x80 != 0 && (rt == nil || rt.hs != pa) {
			// A long header (a handshake) on a path that is not the
			// peer's handshake path yet: the loop makes it so, and we
			// wait, so quic-go's answer is routed back there.
			c.await(c.post(&event{kind: evHandshake, via: pa, ack: true, now: now}))
			rt = p.rt.Load()
			lastPath = nil
		}
		pa.lastRecv.Store(nowNS)
		if rt != nil && pa == rt.cur {
			p.lastRecv.Store(nowNS)
		}
		m.Addr = p.virtUDP
		i++
	}
	if forwarding {
		c.endForwarding()
	}
	c.stats.RxQUIC.Add(uint64(n))
	return n
}

// ourSession returns the relay path a CRLY frame from src belongs to, or
// nil when the session is not one of ours (or src is not its relay).
func (c *Conn) ourSession(b []byte, src netip.AddrPort) *path {
	if len(b) < wire.RelayHeaderSize { // the caller saw the magic
		return nil
	}
	pa := c.sess.load([16]byte(b[4:wire.RelayHeaderSize]))
	if pa == nil || pa.addr != src {
		return nil
	}
	return pa
}

// handleForeignRelay passes a frame that is not for one of our sessions to
// the relay server, if this node runs one.
func (c *Conn) handleForeignRelay(b []byte, src netip.AddrPort, now time.Time) {
	if f := c.forward.Load(); f != nil && len(b) >= wire.RelayHeaderSize && (*f)(b, src, now) {
		c.stats.RxForwarded.Add(1)
		return
	}
	c.stats.DropRelay.Add(1)
}

// removeMsg drops message i of the first n by moving the last one's contents
// into it (quic-go ties buffers to indices, so slices are copied, not swapped).
func removeMsg(ms []ipv4.Message, i, n int) int {
	last := n - 1
	if i != last {
		d, s := &ms[i], &ms[last]
		d.N = copy(d.Buffers[0][:cap(d.Buffers[0])], s.Buffers[0][:s.N])
		d.NN = copy(d.OOB[:cap(d.OOB)], s.OOB[:s.NN])
		d.Flags = s.Flags
		d.Addr = s.Addr
	}
	return last
}

// A stateless reset is 5 unpredictable bytes and a 16-byte token at least
// (RFC 9000 10.3), and always shorter than the packet that caused it, so
// two endpoints can never loop and a spoofed source gains no amplification.
const (
	minResetSize   = 21
	maxResetSize   = 1 + 20 + 4 + 1 + 16 // quic-go's MinStatelessResetSize
	minResetReason = minResetSize + 1
)

// maybeReset answers a short-header packet from an unknown source with a
// stateless reset whose token quic-go computes the same way (HMAC-SHA256 of
// the destination connection ID under the shared key). It touches no table
// state, so the read path does it itself, with budget and MAC of its own.
func (c *Conn) maybeReset(b []byte, dst netip.AddrPort, now time.Time) {
	if c.resetMAC == nil || len(b) < minResetReason || len(b) < 1+ConnIDLen || b[0]&0xc0 != 0x40 {
		return
	}
	if !c.resetLimit.Allow(now) {
		return
	}
	var buf [maxResetSize]byte
	pkt := buf[:min(maxResetSize, len(b)-1)]
	c.resetMAC.Reset()
	c.resetMAC.Write(b[1 : 1+ConnIDLen])
	var sum [sha256.Size]byte
	token := c.resetMAC.Sum(sum[:0])[:16]
	rand.Read(pkt[:len(pkt)-16])
	pkt[0] = pkt[0]&0x7f | 0x40
	copy(pkt[len(pkt)-16:], token)
	if err := c.writeCtl(pkt, dst); err == nil {
		c.stats.TxReset.Add(1)
	}
}

// ReadFrom implements net.PacketConn for callers other than quic-go.
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	ms := []ipv4.Message{{Buffers: [][]byte{b}, OOB: nil}}
	if _, err := c.ReadBatch(ms, 0); err != nil {
		return 0, nil, err
	}
	return ms[0].N, ms[0].Addr, nil
}

// ReadMsgUDP implements quic.OOBCapablePacketConn (quic-go uses ReadBatch).
func (c *Conn) ReadMsgUDP(b, oob []byte) (n, oobn int, flags int, addr *net.UDPAddr, err error) {
	ms := []ipv4.Message{{Buffers: [][]byte{b}, OOB: oob}}
	if _, err := c.ReadBatch(ms, 0); err != nil {
		return 0, 0, 0, nil, err
	}
	a, _ := ms[0].Addr.(*net.UDPAddr)
	return ms[0].N, ms[0].NN, ms[0].Flags, a, nil
}
