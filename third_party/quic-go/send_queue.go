package quic

import (
	"net"

	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
)

type sender interface {
	Send(p *packetBuffer, gsoSize uint16, ecn protocol.ECN)
	SendProbe(*packetBuffer, net.Addr, packetInfo)
	Run() error
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
	queue       chan queueEntry
	closeCalled chan struct{} // runStopped when Close() is called
	runStopped  chan struct{} // runStopped when the run loop returns
	available   chan struct{}
	conn        sendConn
}

var _ sender = &sendQueue{}

const sendQueueCapacity = 8

func newSendQueue(conn sendConn) sender {
	return &sendQueue{
		conn:        conn,
		runStopped:  make(chan struct{}),
		closeCalled: make(chan struct{}),
		available:   make(chan struct{}, 1),
		queue:       make(chan queueEntry, sendQueueCapacity),
	}
}

// Send sends out a packet. It's guaranteed to not block.
// Callers need to make sure that there's actually space in the send queue by calling WouldBlock.
// Otherwise Send will panic.
func (h *sendQueue) Send(p *packetBuffer, gsoSize uint16, ecn protocol.ECN) {
	select {
	case h.queue <- queueEntry{buf: p, gsoSize: gsoSize, ecn: ecn}:
		// clear available channel if we've reached capacity
		if len(h.queue) == sendQueueCapacity {
			select {
			case <-h.available:
			default:
			}
		}
	case <-h.runStopped:
	default:
		panic("sendQueue.Send would have blocked")
	}
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

func (h *sendQueue) Run() error {
	defer close(h.runStopped)
	var shouldClose bool
	for {
		if shouldClose && len(h.queue) == 0 {
			return nil
		}
		e, closing := h.next()
		if closing {
			h.closeCalled = nil // prevent this case from being selected again
			// make sure that all queued packets are actually sent out
			shouldClose = true
			continue
		}
		if err := h.conn.Write(e.buf.Data, e.gsoSize, e.ecn); err != nil {
			// This additional check enables:
			// 1. Checking for "datagram too large" message from the kernel, as such,
			// 2. Path MTU discovery,and
			// 3. Eventual detection of loss PingFrame.
			if !isSendMsgSizeErr(err) {
				return err
			}
		}
		e.buf.Release()
		select {
		case h.available <- struct{}{}:
		default:
		}
	}
}

// korium-tun: next waits for the next packet, or for Close (closing). It
// is a function of its own so that the select's receive slot lives in a
// frame that is gone once the packet is sent: in Run's own frame that
// slot kept the last packet's buffer (up to 20 KiB for a GSO batch)
// reachable for as long as the connection stayed idle, after its pool had
// let go of it.
//
//go:noinline
func (h *sendQueue) next() (e queueEntry, closing bool) {
	select {
	case <-h.closeCalled:
		return queueEntry{}, true
	case e = <-h.queue:
		return e, false
	}
}

func (h *sendQueue) Close() {
	close(h.closeCalled)
	// wait until the run loop returned
	<-h.runStopped
}
