package datapath

import (
	"errors"
	"math/bits"
	"sync"
	"sync/atomic"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/internal/ip6"
	"github.com/korium/korium-tun/peers"
)

// link is one peer's send queue and its sender. The read loop fills it,
// the sender drains it; only the queue itself is shared between them.
//
// The queue keeps the peer's flows apart (fq_codel's idea, without the
// codel): packets are kept in per-flow FIFOs, the sender takes one packet
// of each busy flow in turn, and a full queue drops the oldest packet of
// its longest flow. A bulk transfer to the peer then loses its own packets
// when it outruns the connection, while a ping, a DNS query or an SSH
// keystroke to the same peer waits behind at most one packet of each
// other flow. Order within a flow is kept.
type link struct {
	p    *peers.Peer
	wake chan struct{} // cap 1: the read loop queued packets
	room chan struct{} // cap 1: the sender took packets while the read loop waited for room

	// taken counts the packets the sender took out, ever. The read loop
	// reads it to see a stalled queue drain (backpressure.go).
	taken atomic.Uint64

	// mu guards the fields below. It is held only to move pointers in and
	// out of the queue, never across a send or any call into another
	// package; the read loop takes it once per packet, the sender once per
	// batch.
	mu      sync.Mutex
	flows   [numFlows]fifo
	busy    uint64 // bit i: flows[i] holds packets
	n       int    // packets queued, every flow together (at most Config.SendQueue)
	rr      int    // the flow the sender serves next
	closed  bool   // the sender has stopped: nothing is queued any more
	waiting bool   // the read loop waits for room: the next take signals room
	sending bool   // the sender holds packets it took and has not sent yet

	touched bool // owned by the read loop: the queue got packets in this batch
	bp      bpState
}

// numFlows is how many flows a peer's queue tells apart (by a hash of the
// transport ports; more flows share one FIFO): with 64, a ping shares the
// FIFO of one bulk transfer with a chance of 1 in 64. It is the width of
// link.busy.
const numFlows = 64

// fifo is one flow's packets, oldest first, linked through txBuf.next.
type fifo struct {
	head, tail *txBuf
	n          int
}

func (f *fifo) push(b *txBuf) {
	b.next = nil
	if f.tail == nil {
		f.head = b
	} else {
		f.tail.next = b
	}
	f.tail = b
	f.n++
}

func (f *fifo) pop() *txBuf {
	b := f.head
	f.head = b.next
	if f.head == nil {
		f.tail = nil
	}
	b.next = nil
	f.n--
	return b
}

// flowOf is the flow an outbound packet belongs to: a hash of its next
// header and transport ports (TCP, UDP), or ICMPv6 type and echo
// identifier. Every packet of a peer's queue goes to the same address, and
// packets with extension headers all share one flow: their order is kept.
func flowOf(pkt []byte) int {
	if len(pkt) < ip6.HeaderLen+8 {
		return 0
	}
	nh := pkt[6]
	h := uint32(nh)
	switch nh {
	case 6, 17: // TCP, UDP: source and destination port
		h = h*31 + uint32(pkt[40])<<24 | uint32(pkt[41])<<16 | uint32(pkt[42])<<8 | uint32(pkt[43])
	case 58: // ICMPv6: type, and an echo's identifier
		h = h*31 + uint32(pkt[40])<<16 | uint32(pkt[44])<<8 | uint32(pkt[45])
	}
	h ^= h >> 16
	h *= 0x45d9f3b
	h ^= h >> 16
	return int(h % numFlows)
}

// sendBatch is how many packets the sender takes from its queue at once.
const sendBatch = 32

// newLink makes p's send queue and starts its sender, which runs until
// p's connection ends or the engine stops. Called by the read loop.
func (e *Engine) newLink(p *peers.Peer) *link {
	l := &link{p: p, wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
	if !e.goRun(func() { e.sender(l) }) {
		l.closed = true // the engine is closing: the queue takes nothing
	}
	return l
}

// getTx takes a packet buffer for a send queue, or nil when every queue
// together holds MaxQueued packets.
func (e *Engine) getTx() *txBuf {
	if e.queued.Add(1) > int64(e.cfg.MaxQueued) {
		e.queued.Add(-1)
		return nil
	}
	return e.txPool.Get().(*txBuf)
}

func (e *Engine) putTx(b *txBuf) {
	e.queued.Add(-1)
	e.txPool.Put(b)
}

// fullMode is what put does with a packet for a full queue.
type fullMode uint8

const (
	fullDrop       fullMode = iota // the oldest packet of the longest flow makes room
	fullWait                       // nothing is queued: the caller waits for room (waitRoom)
	fullStalled                    // as fullDrop, also counted as TxQueueStalled
	fullOverBudget                 // as fullDrop, also counted as TxQueueOverBudget
)

// putResult is what put did.
type putResult uint8

const (
	putQueued  putResult = iota // pkt is queued (perhaps in place of an older one)
	putStopped                  // l's sender has stopped; nothing was queued
	putFull                     // fullWait and the queue was full; nothing was queued
)

// enqueue copies pkt into l's queue; a full one drops its oldest (put with
// fullDrop). False means l's sender has stopped.
func (e *Engine) enqueue(l *link, pkt []byte, reclaim func(*link) *txBuf) bool {
	return e.put(l, pkt, reclaim, fullDrop) != putStopped
}

// put copies pkt into l's queue. A full queue (SendQueue packets) drops
// the oldest packet of its longest flow to make room, or with fullWait
// queues nothing. When every queue together holds MaxQueued packets,
// reclaim (nil: none) may free the buffer of a packet of a longer queue
// than l's; failing that, l's own oldest packet makes room, and with none
// queued pkt is dropped. Every drop is counted, by reason. It never blocks
// and allocates nothing in steady state.
func (e *Engine) put(l *link, pkt []byte, reclaim func(*link) *txBuf, full fullMode) putResult {
	b := e.getTx()
	if b == nil && reclaim != nil {
		b = reclaim(l) // before l.mu: no two queues' locks are ever held at once
	}
	if b != nil {
		b.n = copy(b.b[:], pkt)
	}
	f := flowOf(pkt)
	var old *txBuf
	dropped := false
	l.mu.Lock()
	if l.closed || (full == fullWait && l.n >= e.cfg.SendQueue) {
		closed := l.closed
		l.mu.Unlock()
		if b != nil {
			e.putTx(b)
		}
		if closed {
			return putStopped
		}
		return putFull
	}
	if l.n > 0 && (b == nil || l.n >= e.cfg.SendQueue) {
		old = l.dropLongest()
		dropped = true
		if b == nil {
			b, old = old, nil
			b.n = copy(b.b[:], pkt) // ours now: it left the queue
		}
	}
	if b != nil {
		l.flows[f].push(b)
		l.busy |= 1 << f
		l.n++
	}
	l.mu.Unlock()
	if old != nil {
		e.putTx(old)
	}
	switch {
	case dropped:
		e.Counters.TxQueueDropped.Add(1)
		l.p.TxDropped.Add(1)
		switch full {
		case fullStalled:
			e.Counters.TxQueueStalled.Add(1)
		case fullOverBudget:
			e.Counters.TxQueueOverBudget.Add(1)
		}
	case b == nil:
		e.Counters.TxQueueFull.Add(1)
		l.p.TxDropped.Add(1)
	}
	return putQueued
}

// len is how many packets l holds.
func (l *link) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// dropOldest takes the oldest packet of l's longest flow out of the queue
// if l holds more than than packets, and counts it as dropped; nil
// otherwise.
func (e *Engine) dropOldest(l *link, than int) *txBuf {
	l.mu.Lock()
	var b *txBuf
	if l.n > than && !l.closed {
		b = l.dropLongest()
	}
	l.mu.Unlock()
	if b != nil {
		e.Counters.TxQueueDropped.Add(1)
		l.p.TxDropped.Add(1)
	}
	return b
}

// dropLongest removes the oldest packet of the longest flow. l.mu must be
// held and l.n > 0.
func (l *link) dropLongest() *txBuf {
	longest := -1
	for m := l.busy; m != 0; m &= m - 1 {
		if i := bits.TrailingZeros64(m); longest < 0 || l.flows[i].n > l.flows[longest].n {
			longest = i
		}
	}
	return l.popFlow(longest)
}

// popFlow takes the oldest packet of flow i. l.mu must be held.
func (l *link) popFlow(i int) *txBuf {
	f := &l.flows[i]
	b := f.pop()
	if f.n == 0 {
		l.busy &^= 1 << i
	}
	l.n--
	return b
}

// take moves up to len(dst) queued packets into dst, one of each busy
// flow in turn. It tells a read loop waiting for room that there is some,
// and marks the sender busy until a take finds nothing.
func (l *link) take(dst []*txBuf) int {
	l.mu.Lock()
	k := 0
	for k < len(dst) && l.busy != 0 {
		// The next busy flow at or after rr, wrapping around.
		m := bits.RotateLeft64(l.busy, -l.rr)
		i := (l.rr + bits.TrailingZeros64(m)) % numFlows
		dst[k] = l.popFlow(i)
		k++
		l.rr = (i + 1) % numFlows
	}
	l.sending = k > 0
	if k > 0 {
		l.taken.Add(uint64(k))
		if l.waiting {
			l.waiting = false
			select {
			case l.room <- struct{}{}:
			default:
			}
		}
	}
	l.mu.Unlock()
	return k
}

// stop ends the queue: what is queued is given back, and later packets
// are refused.
func (l *link) stop(e *Engine) {
	var rest [sendBatch]*txBuf
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	for k := l.take(rest[:]); k > 0; k = l.take(rest[:]) {
		for _, b := range rest[:k] {
			e.putTx(b)
		}
	}
}

// sender drains l into its peer's connection. SendDatagram blocks once
// quic-go's queue for the peer is full (a congested or dead peer): only
// this goroutine waits, while the read loop drops the queue's oldest
// packets.
func (e *Engine) sender(l *link) {
	defer l.stop(e)
	p := l.p
	done := p.Conn.Context().Done()
	var batch [sendBatch]*txBuf
	for {
		select {
		case <-l.wake:
		case <-done:
			return
		case <-e.ctx.Done():
			return
		}
		for k := l.take(batch[:]); k > 0; k = l.take(batch[:]) {
			for i, b := range batch[:k] {
				batch[i] = nil
				e.sendOne(p, b.b[:b.n])
				e.putTx(b)
			}
		}
	}
}

func (e *Engine) sendOne(p *peers.Peer, pkt []byte) { e.sent(p, pkt, p.Conn.SendDatagram(pkt)) }

// sent counts a packet handed to p's connection, or answers or counts the
// error it met.
func (e *Engine) sent(p *peers.Peer, pkt []byte, err error) {
	if err == nil {
		p.Touch()
		p.TxPackets.Add(1)
		p.TxBytes.Add(uint64(len(pkt)))
		return
	}
	var tooLarge *quic.DatagramTooLargeError
	if errors.As(err, &tooLarge) {
		e.answerTooBig(pkt, int(tooLarge.MaxDatagramPayloadSize))
		return
	}
	e.Counters.TxSendError.Add(1)
}

// idle reports whether l has nothing queued and its sender nothing in
// hand.
func (l *link) idle() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n == 0 && !l.sending && !l.closed
}

// forget drops p's queue l from the read loop's state.
func (r *reader) forget(p *peers.Peer, l *link) {
	delete(r.links, p)
	for i, c := range r.recent {
		if c == l {
			r.recent[i] = nil
		}
	}
	if r.cache.link == l {
		r.cache.link = nil
	}
	if r.fat == l {
		r.fat = nil
	}
}

// reclaim frees a buffer for l's next packet when every queue together
// holds MaxQueued packets: the oldest packet of the longest flow of the
// longest queue, if that queue holds at least two more packets than l's
// (so the queues even out instead of trading packets). Without it, the
// queues of peers that take nothing (dead ones: their queues stay full)
// would keep every buffer, and a healthy peer with nothing queued could
// send nothing.
//
// Finding the longest queue takes a scan of every queue, at most one per
// batch of the device's packets (a thousand queues must not cost a
// thousand locks per packet). Between scans the longest one found gives
// until it is down to the second longest, then (until the next scan) only
// while it is still longer than l's.
func (r *reader) reclaim(l *link) *txBuf {
	own := l.len()
	if b := r.takeFrom(l, max(own+1, r.second-1)); b != nil {
		return b
	}
	if !r.scanned {
		r.scan(l)
		if b := r.takeFrom(l, max(own+1, r.second-1)); b != nil {
			return b
		}
	}
	return r.takeFrom(l, own+1)
}

// takeFrom takes the oldest packet of r.fat's longest flow for l, if
// r.fat is another queue than l and holds more than than packets.
func (r *reader) takeFrom(l *link, than int) *txBuf {
	if r.fat == nil || r.fat == l {
		return nil
	}
	return r.e.dropOldest(r.fat, than)
}

// scan finds the longest queue other than l, and the length of the
// second longest.
func (r *reader) scan(l *link) {
	r.scanned = true
	r.fat, r.second = nil, 0
	longest := 0
	for _, c := range r.links {
		if c == l {
			continue
		}
		switch n := c.len(); {
		case n > longest:
			r.fat, r.second, longest = c, longest, n
		case n > r.second:
			r.second = n
		}
	}
}
