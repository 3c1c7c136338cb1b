package gossipsub

import (
	"sync"

	"github.com/korium/korium-tun/pki"
)

// sendQueue holds encoded RPCs for one peer until its writer goroutine hands
// them to the Sender. Urgent RPCs (IDONTWANT) go before the others so they
// overtake the large messages they are meant to stop. Both parts are
// bounded and drop their oldest entry when full. The writer runs only
// while RPCs are queued (push says when to start one, pop ends it): an
// idle peer costs no goroutine (~5 KiB of stack each at 1,000 peers).
type sendQueue struct {
	mu       sync.Mutex
	urgent   itemFIFO
	normal   itemFIFO
	bytes    int // queued in both parts
	max      int
	maxBytes int
	closed   bool
	writing  bool // a writer runs: it pops until pop reports the end
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
// whether the caller is to start a writer (none runs).
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
	for l.len() > 0 && (l.len() >= q.max || q.bytes+len(b.b) > q.maxBytes) {
		q.bytes -= len(l.pop().b)
		dropped = true
	}
	l.push(b)
	q.bytes += len(b.b)
	start = !q.writing
	q.writing = true
	return dropped, start
}

// pop returns the next RPC for the writer; ok is false when the queue is
// empty or closed, and the writer then ends (the next push starts one).
func (q *sendQueue) pop() (b outItem, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return b, false
	}
	for _, l := range [...]*itemFIFO{&q.urgent, &q.normal} {
		if l.len() > 0 {
			b = l.pop()
			q.bytes -= len(b.b)
			return b, true
		}
	}
	q.writing = false
	return b, false
}

func (q *sendQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.urgent, q.normal, q.bytes = itemFIFO{}, itemFIFO{}, 0
	q.mu.Unlock()
}

// itemFIFO is a queue of outItems that keeps its array: popping moves a
// head index, and a queue that empties starts again at the array's front.
// A slice popped by reslicing (q = q[1:]) loses its front for good, so a
// peer's queue that fills and drains each heartbeat re-allocated its array
// every time (the flood publish to 1,000 peers: two allocations per peer).
type itemFIFO struct {
	items []outItem
	head  int
}

// keepItems is the largest array an emptied itemFIFO keeps (72 bytes an
// item): what a heartbeat queues to a peer fits; a burst's array is given
// back, so 1,000 idle peers hold at most ~1.1 MiB of them.
const keepItems = 16

func (f *itemFIFO) len() int { return len(f.items) - f.head }

func (f *itemFIFO) push(it outItem) {
	if f.head > 0 && len(f.items) == cap(f.items) && f.head >= len(f.items)/2 {
		// Full with its front half popped: slide the rest down rather
		// than grow (a queue that never quite drains stays in place).
		n := copy(f.items, f.items[f.head:])
		clear(f.items[n:])
		f.items, f.head = f.items[:n], 0
	}
	f.items = append(f.items, it)
}

// pop takes the oldest item; the caller checks len first.
func (f *itemFIFO) pop() outItem {
	it := f.items[f.head]
	f.items[f.head] = outItem{}
	if f.head++; f.head == len(f.items) {
		f.items, f.head = f.items[:0], 0
		if cap(f.items) > keepItems {
			f.items = nil // a burst's array is not held by an idle peer
		}
	}
	return it
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
