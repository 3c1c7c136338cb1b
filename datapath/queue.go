package datapath

import (
	"errors"
	"sync"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/peers"
)

// link is one peer's send queue and its sender. The read loop fills it,
// the sender drains it; only the ring is shared between them.
type link struct {
	p    *peers.Peer
	wake chan struct{} // cap 1: the read loop queued packets

	// mu guards the fields below. It is held only to move pointers in and
	// out of the ring, never across a send or any call into another
	// package; the read loop takes it once per packet, the sender once per
	// batch.
	mu     sync.Mutex
	ring   []*txBuf
	head   int  // index of the oldest packet
	n      int  // packets queued
	closed bool // the sender has stopped: nothing is queued any more

	touched bool // owned by the read loop: the queue got packets in this batch
}

// sendBatch is how many packets the sender takes from its ring at once.
const sendBatch = 32

// newLink makes p's send queue and starts its sender, which runs until
// p's connection ends or the engine stops. Called by the read loop.
func (e *Engine) newLink(p *peers.Peer) *link {
	l := &link{p: p, wake: make(chan struct{}, 1), ring: make([]*txBuf, e.cfg.SendQueue)}
	e.goRun(func() { e.sender(l) })
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

// enqueue copies pkt into l's queue. A full queue drops its oldest packet
// to make room; when every queue together holds MaxQueued packets, l's
// oldest packet's buffer is reused for pkt, and with none queued pkt is
// dropped. Both drops are counted. It never blocks and allocates nothing
// in steady state; false means l's sender has stopped.
func (e *Engine) enqueue(l *link, pkt []byte) bool {
	b := e.getTx()
	if b != nil {
		b.n = copy(b.b[:], pkt)
	}
	var old *txBuf
	dropped := false
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		if b != nil {
			e.putTx(b)
		}
		return false
	}
	if l.n > 0 && (b == nil || l.n == len(l.ring)) {
		old = l.ring[l.head] // the oldest goes
		l.ring[l.head] = nil
		l.head = (l.head + 1) % len(l.ring)
		l.n--
		dropped = true
		if b == nil {
			b, old = old, nil
			b.n = copy(b.b[:], pkt) // ours now: it left the ring
		}
	}
	if b != nil {
		l.ring[(l.head+l.n)%len(l.ring)] = b
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
	case b == nil:
		e.Counters.TxQueueFull.Add(1)
		l.p.TxDropped.Add(1)
	}
	return true
}

// take moves up to len(dst) queued packets, oldest first, into dst.
func (l *link) take(dst []*txBuf) int {
	l.mu.Lock()
	k := min(l.n, len(dst))
	for i := 0; i < k; i++ {
		dst[i] = l.ring[l.head]
		l.ring[l.head] = nil
		l.head = (l.head + 1) % len(l.ring)
	}
	l.n -= k
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

func (e *Engine) sendOne(p *peers.Peer, pkt []byte) {
	err := p.Conn.SendDatagram(pkt)
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
