package quic

import (
	"context"
	"io"
	"sync"
	"sync/atomic"

	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
	"github.com/korium/korium-tun/third_party/quic-go/internal/utils"
	"github.com/korium/korium-tun/third_party/quic-go/internal/utils/ringbuffer"
	"github.com/korium/korium-tun/third_party/quic-go/internal/wire"
	"github.com/korium/korium-tun/third_party/quic-go/qlog"
	"github.com/korium/korium-tun/third_party/quic-go/qlogwriter"
)

const (
	maxDatagramSendQueueLen = 32
	// korium-tun: raised from 128. The overlay drains this queue from its own
	// goroutine; on a busy host that goroutine can wait several milliseconds
	// for a CPU, and at ~100k datagrams/s 128 entries overflow and every drop
	// becomes an inner-TCP retransmit. See third_party/README.md.
	maxDatagramRcvQueueLen = 1024
)

type datagramQueue struct {
	sendMx    sync.Mutex
	sendQueue ringbuffer.RingBuffer[*wire.DatagramFrame]
	sent      chan struct{} // used to notify Add that a datagram was dequeued

	rcvMx sync.Mutex
	// korium-tun: a ring of pooled copies (rcvBufPool) instead of a slice of
	// fresh ones, so that queueing a datagram allocates nothing.
	rcvQueue ringbuffer.RingBuffer[*[]byte]
	rcvd     chan struct{} // used to notify Receive that a new datagram was received
	// rcvDropped counts received datagrams dropped on a full rcvQueue
	// (korium-tun: ConnectionStats.DatagramsDropped).
	rcvDropped atomic.Uint64

	closeErr error
	closed   chan struct{}

	hasData func()

	logger  utils.Logger
	qlogger qlogwriter.Recorder
}

func newDatagramQueue(hasData func(), logger utils.Logger, qlogger qlogwriter.Recorder) *datagramQueue {
	return &datagramQueue{
		hasData: hasData,
		rcvd:    make(chan struct{}, 1),
		sent:    make(chan struct{}, 1),
		closed:  make(chan struct{}),
		logger:  logger,
		qlogger: qlogger,
	}
}

// Add queues a new DATAGRAM frame for sending.
// Up to 32 DATAGRAM frames will be queued.
// Once that limit is reached, Add blocks until the queue size has reduced.
func (h *datagramQueue) Add(f *wire.DatagramFrame) error {
	h.sendMx.Lock()

	for {
		// don't queue frames after the connection is closed
		select {
		case <-h.closed:
			h.sendMx.Unlock()
			return h.closeErr
		default:
		}

		if h.sendQueue.Len() < maxDatagramSendQueueLen {
			h.sendQueue.PushBack(f)
			h.sendMx.Unlock()
			h.hasData()
			return nil
		}
		select {
		case <-h.sent: // drain any stale notification, so we don't wake up immediately below
		default:
		}
		h.sendMx.Unlock()
		// The queue is full. Wait until a frame is dequeued.
		select {
		case <-h.closed:
			return h.closeErr
		case <-h.sent:
		}
		h.sendMx.Lock()
	}
}

// TryAdd queues a new DATAGRAM frame for sending, like Add, but never
// waits: it reports false (and keeps nothing) when 32 are queued.
//
// korium-tun: added, for TrySendDatagram. See third_party/README.md.
func (h *datagramQueue) TryAdd(f *wire.DatagramFrame) (bool, error) {
	h.sendMx.Lock()
	select {
	case <-h.closed:
		h.sendMx.Unlock()
		return false, h.closeErr
	default:
	}
	if h.sendQueue.Len() >= maxDatagramSendQueueLen {
		h.sendMx.Unlock()
		return false, nil
	}
	h.sendQueue.PushBack(f)
	h.sendMx.Unlock()
	h.hasData()
	return true, nil
}

// Peek gets the next DATAGRAM frame for sending.
// If actually sent out, Pop needs to be called before the next call to Peek.
func (h *datagramQueue) Peek() *wire.DatagramFrame {
	h.sendMx.Lock()
	defer h.sendMx.Unlock()
	if h.sendQueue.Empty() {
		return nil
	}
	return h.sendQueue.PeekFront()
}

func (h *datagramQueue) Pop() {
	h.sendMx.Lock()
	defer h.sendMx.Unlock()
	_ = h.sendQueue.PopFront()
	select {
	case h.sent <- struct{}{}:
	default:
	}
}

// korium-tun: rcvBufPool holds the buffers that received datagrams are
// queued in. A DATAGRAM frame's payload aliases its packet buffer (the frame
// parser no longer copies), so it is copied once, into one of these, before
// that buffer is released. Every received packet fits a packet buffer of
// protocol.MaxPacketBufferSize bytes, and so does every datagram.
var rcvBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, protocol.MaxPacketBufferSize)
	return &b
}}

func putRcvBuf(b *[]byte) {
	if cap(*b) == protocol.MaxPacketBufferSize {
		rcvBufPool.Put(b)
	}
}

// HandleDatagramFrame handles a received DATAGRAM frame.
// korium-tun: f.Data may alias the packet buffer; it is copied here.
func (h *datagramQueue) HandleDatagramFrame(f *wire.DatagramFrame) {
	b := rcvBufPool.Get().(*[]byte)
	*b = append((*b)[:0], f.Data...)
	var queued bool
	h.rcvMx.Lock()
	if h.rcvQueue.Len() < maxDatagramRcvQueueLen {
		h.rcvQueue.PushBack(b)
		queued = true
		select {
		case h.rcvd <- struct{}{}:
		default:
		}
	}
	h.rcvMx.Unlock()

	if !queued {
		h.rcvDropped.Add(1)
		putRcvBuf(b)
		if h.logger.Debug() {
			h.logger.Debugf("Discarding received DATAGRAM frame (%d bytes payload)", len(f.Data))
		}
		if h.qlogger != nil {
			h.qlogger.RecordEvent(qlog.DatagramDropped{
				Direction: qlog.DirectionReceiving,
				Raw:       qlog.RawInfo{Length: len(f.Data), PayloadLength: qlog.OmitLength},
				Trigger:   "buffer_full",
			})
		}
	}
}

// Receive gets a received DATAGRAM frame.
func (h *datagramQueue) Receive(ctx context.Context) ([]byte, error) {
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	for {
		h.rcvMx.Lock()
		if !h.rcvQueue.Empty() {
			b := h.rcvQueue.PopFront()
			h.rcvMx.Unlock()
			// The caller keeps the returned slice: give it a copy of its own.
			data := make([]byte, len(*b))
			copy(data, *b)
			putRcvBuf(b)
			return data, nil
		}
		h.rcvMx.Unlock()
		select {
		case <-h.rcvd:
			continue
		case <-h.closed:
			return nil, h.closeErr
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// korium-tun: ReceiveInto copies queued datagrams into bufs, one each,
// and their lengths into sizes. It blocks until one is queued, then takes
// up to len(bufs) without waiting for more. It stops before a datagram
// that is longer than its buffer; if that is the first one, it drops it
// and returns io.ErrShortBuffer. It allocates nothing, and copies outside
// the lock that the connection's run loop takes to queue datagrams.
func (h *datagramQueue) ReceiveInto(ctx context.Context, bufs [][]byte, sizes []int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	_ = sizes[len(bufs)-1]
	if err := context.Cause(ctx); err != nil {
		return 0, err
	}
	var taken [16]*[]byte
	n := 0
	for {
		h.rcvMx.Lock()
		k := 0
		for n+k < len(bufs) && k < len(taken) && !h.rcvQueue.Empty() {
			b := h.rcvQueue.PeekFront()
			if len(*b) > len(bufs[n+k]) {
				if n+k > 0 {
					break
				}
				h.rcvQueue.PopFront()
				h.rcvMx.Unlock()
				putRcvBuf(b)
				return 0, io.ErrShortBuffer
			}
			taken[k] = h.rcvQueue.PopFront()
			k++
		}
		more := k == len(taken) && !h.rcvQueue.Empty()
		h.rcvMx.Unlock()
		for i, b := range taken[:k] {
			sizes[n+i] = copy(bufs[n+i], *b)
			putRcvBuf(b)
			taken[i] = nil
		}
		n += k
		if n > 0 && (!more || n == len(bufs)) {
			return n, nil
		}
		if k > 0 {
			continue
		}
		select {
		case <-h.rcvd:
			continue
		case <-h.closed:
			return 0, h.closeErr
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		}
	}
}

func (h *datagramQueue) CloseWithError(e error) {
	h.closeErr = e
	close(h.closed)
}
