package smartsock

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/wire"
)

// The write path: quic-go's send goroutines run it, reading the published
// index and routes only.

// route fills ds with where a packet for virtual address a goes and returns
// how many destinations and the peer. Data goes to the current path only;
// a handshake packet goes to the path the peer's newest handshake came
// from, or, while no path is proven, to every path we chose (see route).
func (c *Conn) route(a netip.AddrPort, longHeader bool, ds *[maxDests]dest) (int, *peer) {
	p := c.virt.load(a)
	if p == nil {
		return 0, nil
	}
	rt := p.rt.Load()
	if rt == nil {
		return 0, p
	}
	if longHeader && len(rt.long) > 0 {
		return copy(ds[:], rt.long), p
	}
	if rt.cur != nil {
		ds[0] = rt.cur.dest()
		return 1, p
	}
	return 0, p
}

// WriteMsgUDP implements quic.OOBCapablePacketConn: b may hold several
// packets for GSO (oob carries the segment size), all to one address.
func (c *Conn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if addr == nil {
		return 0, 0, errors.New("smartsock: nil address")
	}
	long := len(b) > 0 && b[0]&0x80 != 0
	var ds [maxDests]dest
	nd, p := c.route(addr.AddrPort(), long, &ds)
	if nd == 0 {
		c.stats.DropNoPath.Add(1)
		return len(b), len(oob), nil // like a lost packet; quic-go recovers
	}
	if !p.sent.Load() {
		// The probe tick turns them into lastSent; a load is all a busy
		// peer costs per packet, a clock read per tick.
		p.sentAt.Store(time.Now().UnixNano())
		p.sent.Store(true)
		c.sends.Add(1)
		if c.sleeping.Load() && c.sleeping.CompareAndSwap(true, false) {
			select { // the loop sleeps past the next tick: it must see this
			case c.kick <- struct{}{}:
			default:
			}
		}
	}
	var firstErr error
	for _, d := range ds[:nd] {
		if long && !d.relay {
			c.maybeSendHello(p, d)
		}
		c.stats.TxCalls.Add(1)
		var err error
		if d.relay {
			err = c.writeRelay(d, b, oob)
		} else {
			err = c.udp.WriteTo(b, oob, d.addr)
		}
		if err != nil && c.countTransient(err) {
			err = nil // a lost packet, not a broken connection (transient.go)
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if nd > 1 {
		// One dead candidate must not fail the handshake on the others.
		firstErr = nil
	}
	if firstErr != nil {
		return 0, 0, firstErr
	}
	return len(b), len(oob), nil
}

// WriteTo implements net.PacketConn.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("smartsock: not a UDP address")
	}
	n, _, err := c.WriteMsgUDP(b, nil, ua)
	return n, err
}

// helloEvery bounds the hellos announcing us on one path.
const helloEvery = 100 * time.Millisecond

// maybeSendHello announces us on d before a handshake packet, at most every
// helloEvery per path, so the peer's smartsock maps d's address to our
// identity.
func (c *Conn) maybeSendHello(p *peer, d dest) {
	now := time.Now().UnixNano()
	last := d.pa.lastHello.Load()
	if now-last < int64(helloEvery) || !d.pa.lastHello.CompareAndSwap(last, now) {
		return // announced recently, or another send goroutine does it now
	}
	h := wire.NewHello(c.cfg.Keypair, p.id, c.txID.Add(1), now)
	var buf [wire.HelloSize]byte
	if err := c.writeCtl(wire.AppendHello(buf[:0], &h), d.addr); err == nil {
		c.stats.TxHello.Add(1)
	}
}

// writeCtl sends a control packet of ours (not a QUIC packet).
func (c *Conn) writeCtl(b []byte, dst netip.AddrPort) error {
	if c.ctlSent != nil {
		c.ctlSent(dst, len(b))
		return nil
	}
	return c.udp.WriteTo(b, nil, dst)
}
