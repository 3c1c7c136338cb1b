package quic

import (
	"net"
	"sync"

	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
)

// korium-tun: the send queue's writer goroutine runs only while there are
// packets to write. Upstream ran one per connection for the connection's
// whole life, blocked on the queue; with many idle connections (a node
// holding a thousand peers that exchange a keep-alive every few seconds)
// that was a goroutine and its stack per connection for nothing. Now Send
// starts the writer when none runs, and the writer returns as soon as the
// queue is empty. Packets are written in order by one writer at a time,
// Close still flushes what is queued, and a write error still destroys the
// connection (onErr, as Run's error did). See third_party/README.md.
type sender interface {
	Send(p *packetBuffer, gsoSize uint16, ecn protocol.ECN)
	SendProbe(*packetBuffer, net.Addr, packetInfo)
	WouldBlock() bool
	Available() <-chan struct{}
	Close()
}

type queueEntry struct {
	buf     *packetBuffer
	gsoSize uint16
	ecn     protocol.ECN
}

type sendQueue struct {
	queue     chan queueEntry
	available chan struct{}
	conn      sendConn
	onErr     func(error) // a write failed: the connection is destroyed with it
	writeFn   func()      // h.write, made once: go h.write() would allocate a closure each time

	mu      sync.Mutex // guards the fields below
	running bool       // a writer goroutine is running; it drains the queue before it stops
	stopped bool       // Close was called, or a write failed: no writer starts again
	done    sync.WaitGroup
}

var _ sender = &sendQueue{}

const sendQueueCapacity = 8

func newSendQueue(conn sendConn, onErr func(error)) sender {
	h := &sendQueue{
		conn:      conn,
		onErr:     onErr,
		available: make(chan struct{}, 1),
		queue:     make(chan queueEntry, sendQueueCapacity),
	}
	h.writeFn = h.write
	return h
}

// Send sends out a packet. It's guaranteed to not block.
// Callers need to make sure that there's actually space in the send queue by calling WouldBlock.
// Otherwise Send will panic.
// It is called from the connection's run loop only.
func (h *sendQueue) Send(p *packetBuffer, gsoSize uint16, ecn protocol.ECN) {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return // as upstream's after its run loop stopped: the packet is dropped
	}
	select {
	case h.queue <- queueEntry{buf: p, gsoSize: gsoSize, ecn: ecn}:
		// clear available channel if we've reached capacity
		if len(h.queue) == sendQueueCapacity {
			select {
			case <-h.available:
			default:
			}
		}
	default:
		h.mu.Unlock()
		panic("sendQueue.Send would have blocked")
	}
	if !h.running {
		h.running = true
		h.done.Add(1)
		go h.writeFn()
	}
	h.mu.Unlock()
}

func (h *sendQueue) SendProbe(p *packetBuffer, addr net.Addr, info packetInfo) {
	h.conn.WriteTo(p.Data, addr, info)
}

func (h *sendQueue) WouldBlock() bool {
	return len(h.queue) == sendQueueCapacity
}

func (h *sendQueue) Available() <-chan struct{} {
	return h.available
}

// write is the writer goroutine: it writes queued packets until the queue
// is empty, then returns. Send starts it again for the next packet.
func (h *sendQueue) write() {
	defer h.done.Done()
	for {
		var e queueEntry
		select {
		case e = <-h.queue:
		default:
			h.mu.Lock()
			if len(h.queue) > 0 {
				h.mu.Unlock()
				continue // Send queued one after the select: it saw running and started no writer
			}
			h.running = false
			h.mu.Unlock()
			return
		}
		if err := h.conn.Write(e.buf.Data, e.gsoSize, e.ecn); err != nil {
			// This additional check enables:
			// 1. Checking for "datagram too large" message from the kernel, as such,
			// 2. Path MTU discovery,and
			// 3. Eventual detection of loss PingFrame.
			if !isSendMsgSizeErr(err) {
				h.mu.Lock()
				h.stopped = true
				h.running = false
				h.mu.Unlock()
				h.onErr(err)
				return
			}
		}
		e.buf.Release()
		select {
		case h.available <- struct{}{}:
		default:
		}
	}
}

// Close waits until the queued packets are written (or a write failed);
// no packet is written after it returns.
func (h *sendQueue) Close() {
	h.mu.Lock()
	h.stopped = true
	h.mu.Unlock()
	h.done.Wait()
}
