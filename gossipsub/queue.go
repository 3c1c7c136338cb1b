package gossipsub

import (
	"sync"

	"github.com/korium/korium-tun/pki"
)

// sendQueue holds encoded RPCs for one peer until a writer goroutine hands
// them to the Sender. Urgent RPCs (IDONTWANT) go before the others so they
// overtake the large messages they are meant to stop. Both parts are
// bounded and drop their oldest entry when full.
//
// A writer runs only while the queue has work: push reports when one must
// start, and pop, finding the queue empty, ends it. An idle peer (most of
// a node's up to 1,000 connections) then costs no goroutine, whose stack
// and parked channel waits were about 3-5 KiB per peer.
type sendQueue struct {
	mu       sync.Mutex
	urgent   []outItem
	normal   []outItem
	bytes    int // queued in both parts
	max      int
	maxBytes int
	closed   bool
	running  bool // a writer is draining the queue
}

func newSendQueue(max, maxBytes int) *sendQueue {
	return &sendQueue{max: max, maxBytes: maxBytes}
}

// outItem is one queued RPC; hasID marks an RPC carrying only message id.
type outItem struct {
	b     []byte
	id    MsgID
	hasID bool
}

// push queues b and reports whether an older RPC was dropped for it, and
// whether the caller must start a writer (none is running).
func (q *sendQueue) push(b outItem, urgent bool) (dropped, start bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false, false
	}
	l := &q.normal
	if urgent {
		l = &q.urgent
	}
	for len(*l) > 0 && (len(*l) >= q.max || q.bytes+len(b.b) > q.maxBytes) {
		q.bytes -= len((*l)[0].b)
		(*l)[0] = outItem{}
		*l = (*l)[1:]
		dropped = true
	}
	*l = append(*l, b)
	q.bytes += len(b.b)
	start = !q.running
	q.running = true
	return dropped, start
}

// pop returns the next RPC for the writer. ok is false once the queue is
// empty or closed: the writer then ends, and the next push starts another.
func (q *sendQueue) pop() (b outItem, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.closed:
	case len(q.urgent) > 0:
		b = q.urgent[0]
		q.urgent[0] = outItem{}
		q.urgent = q.urgent[1:]
		q.bytes -= len(b.b)
		return b, true
	case len(q.normal) > 0:
		b = q.normal[0]
		q.normal[0] = outItem{}
		q.normal = q.normal[1:]
		q.bytes -= len(b.b)
		return b, true
	}
	q.running = false
	return b, false
}

func (q *sendQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.urgent, q.normal, q.bytes = nil, nil, 0
	q.mu.Unlock()
}

// inbox holds RPCs received from peers until the router loop takes them:
// one bounded queue per peer (drop-oldest), served round-robin so a
// flooding peer cannot starve the others.
type inbox struct {
	mu       sync.Mutex
	queues   map[pki.Identity]*inQueue
	ready    []pki.Identity
	maxPeer  int
	maxBytes int // per peer
	maxPeers int
	notify   chan struct{}
}

type inQueue struct {
	items [][]byte
	bytes int
	ready bool
}

func newInbox(maxPeer, maxBytes, maxPeers int) *inbox {
	return &inbox{queues: make(map[pki.Identity]*inQueue), maxPeer: maxPeer, maxBytes: maxBytes, maxPeers: maxPeers, notify: make(chan struct{}, 1)}
}

type inboxResult int

const (
	inboxOK inboxResult = iota
	inboxDroppedOldest
	inboxRejected // too many peers with queues
)

func (ib *inbox) put(from pki.Identity, b []byte) inboxResult {
	res := inboxOK
	ib.mu.Lock()
	q := ib.queues[from]
	if q == nil {
		if len(ib.queues) >= ib.maxPeers {
			ib.mu.Unlock()
			return inboxRejected
		}
		q = &inQueue{}
		ib.queues[from] = q
	}
	for len(q.items) > 0 && (len(q.items) >= ib.maxPeer || q.bytes+len(b) > ib.maxBytes) {
		q.bytes -= len(q.items[0])
		q.items[0] = nil
		q.items = q.items[1:]
		res = inboxDroppedOldest
	}
	q.items = append(q.items, b)
	q.bytes += len(b)
	if !q.ready {
		q.ready = true
		ib.ready = append(ib.ready, from)
	}
	ib.mu.Unlock()
	select {
	case ib.notify <- struct{}{}:
	default:
	}
	return res
}

// take returns the next RPC in round-robin order; more reports whether
// others are waiting.
func (ib *inbox) take() (from pki.Identity, b []byte, ok, more bool) {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	for len(ib.ready) > 0 {
		from = ib.ready[0]
		ib.ready = ib.ready[1:]
		q := ib.queues[from]
		if q == nil || len(q.items) == 0 {
			if q != nil {
				q.ready = false
				delete(ib.queues, from)
			}
			continue
		}
		b = q.items[0]
		q.items[0] = nil
		q.items = q.items[1:]
		q.bytes -= len(b)
		if len(q.items) > 0 {
			ib.ready = append(ib.ready, from)
		} else {
			q.ready = false
			delete(ib.queues, from)
		}
		return from, b, true, len(ib.ready) > 0
	}
	return from, nil, false, false
}

// drop forgets everything queued from a peer.
func (ib *inbox) drop(from pki.Identity) {
	ib.mu.Lock()
	if q := ib.queues[from]; q != nil {
		q.items, q.bytes = nil, 0
	}
	ib.mu.Unlock()
}
