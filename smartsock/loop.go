package smartsock

import (
	"net/netip"
	"time"

	"github.com/korium/korium-tun/wire"
)

// The path loop: one goroutine that owns the path table (see the package
// comment). Everything that changes the table reaches it as an event on
// one queue: what the read path saw (events it copies, never blocking),
// and calls from the node (closures whose callers wait for them). The loop
// applies an event, publishes the routes it changed, and only then tells
// whoever waits, so a caller that returns from AddPeer, or a read path that
// waited for a hello, already sees the new table.

// eventQueue bounds the events waiting for the loop. The read path drops
// (and counts, DropLoopFull) what does not fit: never quic-go's reader
// waiting for space. At 20,000 packets/s it is 50 ms of backlog.
const eventQueue = 1024

// loopWait bounds how long the read path waits for the loop to apply an
// event that changes which peer the next packets belong to (see demux.go).
const loopWait = 50 * time.Millisecond

type eventKind uint8

const (
	evCall        eventKind = iota + 1 // fn, from a caller that waits on done
	evHello                            // pkt is a hello (format checked), from src
	evRequest                          // pkt is a probe request, from src or via
	evReply                            // pkt is a probe reply, from src or via
	evDialBack                         // nonce in pkt
	evHandshake                        // a long-header packet arrived on pa
	evRefuseHello                      // pkt is a well-formed hello we refuse (refusal.go)
	evRefusal                          // pkt is a refusal from src (refusal.go)
)

// event is one message to the loop. It is a value (the queue copies it),
// so posting one allocates nothing.
type event struct {
	kind eventKind
	ack  bool   // the read path waits until applied >= seq
	seq  uint64 // read-path events only
	src  netip.AddrPort
	via  *path // the relay path a probe came through; the path of a handshake
	now  time.Time
	n    uint8 // bytes of pkt used
	pkt  [wire.MaxProbeSize]byte
	fn   func()
	done chan struct{}
}

// The probe rounds run every tickEvery while any peer is busy or has
// something due within a tick. While all are idle the loop sleeps until
// the earliest due time (idle peers' soft due times fall on the same
// rounds, nextDue), at most idleLook: at 1,000 idle peers ten rounds a
// second, each a wakeup of the whole runtime and a scan of every peer,
// were a quarter of the node's idle CPU. A write to any peer while it
// sleeps (a keep-alive, traffic starting) and a change to a peer in the
// loop (lookSoon) bring the next round back to one tick after the last.
func (c *Conn) loop() {
	defer close(c.loopDone)
	var tick <-chan time.Time
	var timer *time.Timer
	var last, armed time.Time // the last round; when the timer fires
	if c.tick {
		timer = time.NewTimer(tickEvery)
		defer timer.Stop()
		tick = timer.C
		last = time.Now()
		armed = last.Add(tickEvery)
	}
	// soon brings the next round to one tick after the last.
	soon := func() {
		c.wantTick = false
		if timer == nil {
			return
		}
		c.sleeping.Store(false)
		if at := last.Add(tickEvery); at.Before(armed) {
			armed = at
			timer.Reset(time.Until(at))
		}
	}
	for {
		select {
		case <-c.done:
			return
		case now := <-tick:
			sends := c.sends.Load()
			c.rounds.Add(1)
			c.probeRound(now)
			c.flush()
			last, armed = now, now.Add(tickEvery)
			if !c.wantTick && !c.nextLook.IsZero() && c.nextLook.After(armed) {
				// All idle: sleep until the earliest is due, unless a
				// write came since the round began (a writer that saw
				// sleeping false and so did not kick).
				c.sleeping.Store(true)
				if c.sends.Load() == sends {
					armed = c.nextLook
				} else {
					c.sleeping.Store(false)
				}
			}
			c.wantTick = false
			timer.Reset(time.Until(armed))
		case <-c.kick:
			soon()
		case ev := <-c.events:
			c.apply(&ev)
			c.flush()
			if c.wantTick {
				soon()
			}
			if ev.seq != 0 {
				c.applied.Store(ev.seq)
				if ev.ack {
					select {
					case c.doorbell <- struct{}{}:
					default:
					}
				}
			}
			if ev.done != nil {
				close(ev.done)
			}
		}
	}
}

func (c *Conn) apply(ev *event) {
	b := ev.pkt[:ev.n]
	switch ev.kind {
	case evCall:
		ev.fn()
	case evHello:
		c.handleHello(b, ev.src, ev.now)
	case evRequest:
		c.handleRequest(b, ev.src, ev.via, ev.now)
	case evReply:
		c.handleReply(b, ev.src, ev.via, ev.now)
	case evDialBack:
		c.handleDialBack(b)
	case evHandshake:
		c.handleHandshake(ev.via)
	case evRefuseHello:
		c.refuseHello(b, ev.src, ev.now)
	case evRefusal:
		c.handleRefusal(b, ev.src, ev.now)
	}
}

// call runs fn on the loop and waits for it (and for its routes to be
// published). It reports false, without running fn, once the Conn is
// closed.
func (c *Conn) call(fn func()) bool {
	done := make(chan struct{})
	select {
	case c.events <- event{kind: evCall, fn: fn, done: done}:
	case <-c.done:
		return false
	}
	select {
	case <-done:
		return true
	case <-c.loopDone: // closed with fn still queued
		return false
	}
}

// post hands ev to the loop without blocking and returns its sequence
// number, or 0 (counted) when the queue is full or the Conn closed. The
// read path only (readMu held).
func (c *Conn) post(ev *event) uint64 {
	ev.seq = c.seq + 1
	select {
	case c.events <- *ev:
		c.seq++
		return c.seq
	default:
		c.stats.DropLoopFull.Add(1)
		return 0
	}
}

// await waits (at most loopWait) until the loop applied event seq. The
// read path only (readMu held: it owns waitTimer).
func (c *Conn) await(seq uint64) {
	if seq == 0 || c.applied.Load() >= seq {
		return
	}
	c.waitTimer.Reset(loopWait)
	defer c.waitTimer.Stop()
	for c.applied.Load() < seq {
		select {
		case <-c.doorbell:
		case <-c.waitTimer.C:
			c.stats.LoopSlow.Add(1)
			return
		case <-c.loopDone:
			return
		}
	}
}

// sync waits until the loop applied everything posted before it (tests).
func (c *Conn) sync() { c.call(func() {}) }

// tickAt runs one probe round at now on the loop (tests, with tick off).
func (c *Conn) tickAt(now time.Time) { c.call(func() { c.probeRound(now) }) }
