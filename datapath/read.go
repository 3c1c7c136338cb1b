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

	// When every queue together is full (MaxQueued), the longest queue
	// gives up its oldest packet to a shorter one (reclaim).
	fat     *link // the longest queue the last scan found, or nil
	second  int   // the length of the second longest then
	scanned bool  // a scan ran in this batch: at most one per batch

	// Backpressure (backpressure.go).
	epoch  time.Time
	now    time.Duration // since epoch, as of this batch (or the last wait)
	timer  *time.Timer   // bounds a wait for room
	recent [2]*link      // the queue that got a packet last, and the last other one

	// direct: a packet for a peer with nothing queued and an idle sender
	// goes straight to its connection (sendDirect). Off in the unit tests
	// of the queues, whose peers have no connection.
	direct bool
}

// newReader is the read loop's state.
func newReader(e *Engine) *reader {
	r := &reader{e: e, links: make(map[*peers.Peer]*link), epoch: time.Now(), timer: time.NewTimer(time.Hour)}
	r.timer.Stop()
	return r
}

// handle routes one packet the device gave the read loop.
func (r *reader) handle(pkt []byte) {
	e := r.e
	switch e.route(pkt, &r.cache) {
	case routeSend:
		e.trackOut(pkt)
		r.send(pkt)
	case routeHold:
		e.trackOut(pkt)
		e.hold(r.cache.addr, pkt)
	case routeTooBig:
		e.answerTooBig(pkt, e.cfg.MTU)
	}
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
	r := newReader(e)
	r.direct = true
	defer r.stop()
	errRun := 0
	var lastWarn time.Time
	for {
		cnt, err := e.dev.Read(bufs, sizes, devOffset)
		r.now = time.Since(r.epoch)
		for i := 0; i < cnt; i++ {
			r.handle(bufs[i][devOffset : devOffset+sizes[i]])
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
// sender) on its first packet. A full queue makes it wait for room, within
// the bounds of backpressure.go, before the queue's oldest packet goes.
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
	if r.direct && r.sendDirect(l, pkt) {
		return
	}
	full := r.fullMode(l)
	for {
		switch r.e.put(l, pkt, r.reclaim, full) {
		case putQueued:
			r.noteQueued(l)
			if !l.touched {
				l.touched = true
				r.touched = append(r.touched, l)
			}
			return
		case putStopped:
			// The peer's connection ended and its sender is gone; the peer
			// leaves the snapshot in a moment.
			r.e.Counters.TxSendError.Add(1)
			r.forget(c.peer, l)
			return
		case putFull:
			full = r.waitRoom(l) // never fullWait: one wait per packet at most
		}
	}
}

// idleGap is how long a peer must have been quiet for its next packet to
// skip a hand-off (sendDirect, writeDirect): a ping, a DNS query or a
// keystroke does, a bulk transfer (packets microseconds apart) does not, so
// its packets keep going through the goroutines that batch them.
const idleGap = time.Millisecond

// sendDirect sends pkt straight to l's connection from the read loop when
// l was quiet for idleGap, nothing is queued for it and its sender is idle: the packet skips the
// hand-off to the sender goroutine (a wake-up on an idle machine, which is
// most of an idle round trip's cost). It never waits: when quic-go's own
// queue is full it reports false, and the packet is queued as usual. Order
// is kept: only the read loop queues packets, and it sends none straight
// while any are queued or being sent.
func (r *reader) sendDirect(l *link, pkt []byte) bool {
	if l.bp.last != 0 && r.now-l.bp.last < idleGap {
		return false // a busy peer: its sender batches
	}
	if !l.idle() {
		return false
	}
	ok, err := l.p.Conn.TrySendDatagram(pkt)
	if !ok && err == nil {
		return false
	}
	r.e.Counters.TxDirect.Add(1)
	r.e.sent(l.p, pkt, err)
	r.noteQueued(l)
	return true
}

// flush wakes the senders of the queues this batch filled, and forgets the
// queues of peers that left the set.
func (r *reader) flush() {
	r.wake()
	r.scanned = false
	if s := r.e.cfg.Peers.Snapshot(); s != r.swept {
		r.swept = s
		for p, l := range r.links {
			if s.Peer(p.ID) != p {
				r.forget(p, l)
				l.stop(r.e) // its sender ends with its connection
			}
		}
	}
}

// wake wakes the senders of the queues filled since the last wake.
func (r *reader) wake() {
	for i, l := range r.touched {
		l.touched = false
		select {
		case l.wake <- struct{}{}:
		default:
		}
		r.touched[i] = nil
	}
	r.touched = r.touched[:0]
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
	// Counted before it is queued: the device writer may deliver it before
	// toDevice returns, and whoever reads the answer should find it counted.
	e.Counters.ICMPUnreachSent.Add(1)
	if !e.toDevice(b) {
		e.Counters.ICMPUnreachSent.Add(^uint64(0))
		e.Counters.ICMPRateLimited.Add(1) // as good as rate-limited
	}
}

// toDevice queues an answer for the device writer without waiting; a full
// queue drops it (the caller counts it).
func (e *Engine) toDevice(b *pbuf) bool {
	e.toWrite.Add(1)
	select {
	case e.inbound <- b:
		return true
	default:
		e.toWrite.Add(-1)
		e.rxPool.Put(b)
		return false
	}
}
