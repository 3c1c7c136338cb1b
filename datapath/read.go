package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/korium/korium-tun/internal/ip6"
	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/smartaddr"
)

// routeCache remembers the last destination's peer (and its send queue)
// for one snapshot of the peer set, so a stream of packets to one peer
// costs one pointer comparison.
type routeCache struct {
	snap *peers.Snapshot
	addr netip.Addr
	peer *peers.Peer
	link *link // peer's send queue, filled in by the read loop
}

type routeVerdict int

const (
	routeDrop   routeVerdict = iota // counted; nothing to do
	routeSend                       // send to c.peer
	routeHold                       // no connection to c.addr yet
	routeTooBig                     // answer with Packet Too Big
)

// route decides what happens to one packet read from the device. It takes
// no lock and allocates nothing.
func (e *Engine) route(pkt []byte, c *routeCache) routeVerdict {
	dst, ok := ip6.Dst(pkt)
	if !ok {
		e.Counters.TxNotIPv6.Add(1)
		return routeDrop
	}
	if !smartaddr.IsOverlay(dst) || dst == e.cfg.Addr {
		e.Counters.TxNotOverlay.Add(1) // router solicitations, MLD, ...
		return routeDrop
	}
	if len(pkt) > e.cfg.MTU {
		return routeTooBig
	}
	if s := e.cfg.Peers.Snapshot(); s != c.snap || dst != c.addr {
		c.snap, c.addr, c.peer, c.link = s, dst, s.ByAddr(dst), nil
	}
	if c.peer == nil {
		return routeHold
	}
	return routeSend
}

// reader is the state of the device read loop, owned by it alone.
type reader struct {
	e       *Engine
	cache   routeCache
	links   map[*peers.Peer]*link // send queues of peers we sent to
	swept   *peers.Snapshot       // links holds no peer missing from it
	touched []*link               // queues given packets in this batch
}

// maxDevErrors is how many device reads in a row may fail before the
// engine gives up on the device (about 4 s of backoff in all).
const maxDevErrors = 10

// MaxDeviceErrors is maxDevErrors, for the node's tests.
const MaxDeviceErrors = maxDevErrors

// devErrBackoff is the wait after the nth failed read in a row: 10 ms,
// doubling, at most 1 s.
func devErrBackoff(n int) time.Duration {
	return min(10*time.Millisecond<<min(n-1, 10), time.Second)
}

func (e *Engine) readLoop() {
	batch := e.dev.BatchSize()
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, devOffset+65535)
	}
	r := &reader{e: e, links: make(map[*peers.Peer]*link)}
	defer r.stop()
	errRun := 0
	var lastWarn time.Time
	for {
		cnt, err := e.dev.Read(bufs, sizes, devOffset)
		for i := 0; i < cnt; i++ {
			pkt := bufs[i][devOffset : devOffset+sizes[i]]
			switch e.route(pkt, &r.cache) {
			case routeSend:
				r.send(pkt)
			case routeHold:
				e.hold(r.cache.addr, pkt)
			case routeTooBig:
				e.answerTooBig(pkt, e.cfg.MTU)
			}
		}
		r.flush()
		if err != nil {
			if e.ctx.Err() != nil {
				return
			}
			e.Counters.DevReadErrors.Add(1)
			if errors.Is(err, tun.ErrTooManySegments) {
				continue // one super-packet did not fit our buffers; the device is fine
			}
			if deviceGone(err) {
				e.fail(fmt.Errorf("device %s is gone (%v): the node stops", e.devName, err))
				return
			}
			// As wireguard-go's receive path: a bounded run of temporary
			// errors, each waited out a little longer, then give up.
			if errRun++; errRun > maxDevErrors {
				e.fail(fmt.Errorf("device %s: %d reads in a row failed, the last with %v: the node stops", e.devName, errRun, err))
				return
			}
			if now := time.Now(); errRun == 1 && now.Sub(lastWarn) >= time.Minute {
				lastWarn = now // a line a minute at most, whatever keeps failing
				e.cfg.Logger.Warn("device read failed; retrying", "device", e.devName, "err", err)
			}
			select {
			case <-e.ctx.Done():
				return
			case <-time.After(devErrBackoff(errRun)):
			}
			continue
		}
		errRun = 0
	}
}

// send queues pkt for r.cache's peer, making the peer's queue (and its
// sender) on its first packet.
func (r *reader) send(pkt []byte) {
	c := &r.cache
	l := c.link
	if l == nil {
		if l = r.links[c.peer]; l == nil {
			l = r.e.newLink(c.peer)
			r.links[c.peer] = l
		}
		c.link = l
	}
	// The firewall's outbound tracking call goes here (a later change):
	// a packet we send opens the way for its answers.
	if !r.e.enqueue(l, pkt) {
		// The peer's connection ended and its sender is gone; the peer
		// leaves the snapshot in a moment.
		r.e.Counters.TxSendError.Add(1)
		delete(r.links, c.peer)
		c.link = nil
		return
	}
	if !l.touched {
		l.touched = true
		r.touched = append(r.touched, l)
	}
}

// flush wakes the senders of the queues this batch filled, and forgets the
// queues of peers that left the set.
func (r *reader) flush() {
	for i, l := range r.touched {
		l.touched = false
		select {
		case l.wake <- struct{}{}:
		default:
		}
		r.touched[i] = nil
	}
	r.touched = r.touched[:0]
	if s := r.e.cfg.Peers.Snapshot(); s != r.swept {
		r.swept = s
		for p, l := range r.links {
			if s.Peer(p.ID) != p {
				delete(r.links, p)
				l.stop(r.e) // its sender ends with its connection
				if r.cache.link == l {
					r.cache.link = nil
				}
			}
		}
	}
}

// stop gives back every queue's packets when the read loop ends.
func (r *reader) stop() {
	for _, l := range r.links {
		l.stop(r.e)
	}
}

// deviceGone reports whether a device error means the device will never
// work again: closed under us (the kernel TUN's reads fail so once its
// interface is deleted), or the device no longer exists.
func deviceGone(err error) bool {
	if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrNotExist) {
		return true
	}
	for _, e := range goneErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// answerTooBig answers an oversized packet with ICMPv6 Packet Too Big
// (through the device writer).
func (e *Engine) answerTooBig(pkt []byte, mtu int) {
	e.Counters.TxTooBig.Add(1)
	if !ip6.MayAnswerWithError(pkt) {
		return
	}
	b := e.rxPool.Get().(*pbuf)
	b.n = len(ip6.AppendPacketTooBig(b.b[devOffset:devOffset], pkt, max(mtu, MinMTU)))
	if !e.toDevice(b) {
		e.Counters.ICMPQueueFull.Add(1)
	}
}

// answerUnreachable answers pkt, a packet for an overlay address nobody
// owns (or nobody we can reach), with ICMPv6 Destination Unreachable, so
// the program that sent it fails now instead of retrying until its
// timeout. It is rate-limited.
func (e *Engine) answerUnreachable(pkt []byte) {
	if !ip6.MayAnswerWithError(pkt) {
		return
	}
	if !e.icmpLimit.Allow() {
		e.Counters.ICMPRateLimited.Add(1)
		return
	}
	code := byte(ip6.CodeAddrUnreachable)
	if e.cfg.UnreachNoRoute {
		code = ip6.CodeNoRoute
	}
	b := e.rxPool.Get().(*pbuf)
	b.n = len(ip6.AppendDstUnreachable(b.b[devOffset:devOffset], pkt, code))
	if e.toDevice(b) {
		e.Counters.ICMPUnreachSent.Add(1)
	} else {
		e.Counters.ICMPRateLimited.Add(1) // as good as rate-limited
	}
}

// toDevice queues an answer for the device writer without waiting; a full
// queue drops it (the caller counts it).
func (e *Engine) toDevice(b *pbuf) bool {
	select {
	case e.inbound <- b:
		return true
	default:
		e.rxPool.Put(b)
		return false
	}
}
