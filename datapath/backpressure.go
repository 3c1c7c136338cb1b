package datapath

import (
	"time"
)

// Backpressure on the device read path. When a peer's send queue is full,
// the read loop waits a little for its sender to take packets instead of
// dropping the queue's oldest at once: the kernel's TUN queue then holds
// the rest, and the inner TCP sees a slower path instead of loss (as
// wireguard-go, whose device reader blocks on a full per-peer queue). With
// drop-oldest alone, one TCP stream at 1-2 Gbit/s lost 991k of 4.2M packets
// in that queue; waiting up to 5 ms cut it to 6.3k and CPU per bit to
// 0.89-0.94.
//
// The read loop is shared by every peer, so a wait for one peer delays the
// packets of all others: every wait is bounded, per peer, in two ways.
//
//   - Stall: a wait that times out (maxWait, or what is left of the peer's
//     budget; for a peer alone with traffic, the lostWaits+1st in a row)
//     marks the queue stalled: until its sender has taken
//     stallDrain more packets, a full queue drops its oldest without a
//     wait (TxQueueStalled). A black-holed peer, whose sender is stuck in
//     SendDatagram, costs the read loop one wait and no more while others
//     have traffic, lostWaits+1 while it is alone.
//   - Budget: while another peer (one whose queue is not stalled) had
//     packets from the device in the last activeWindow, a peer's waits
//     are charged to its budget: at most waitBudget at once, repaid at
//     waitShare of the time that passes (5 ms per 100 ms). A peer that
//     drains, but slower than the device fills its queue, can then hold
//     the read loop for at most 5% of its time; past its budget its full
//     queue drops its oldest (TxQueueOverBudget). While it is the only
//     peer with traffic nobody else waits, and its waits are free (bounded
//     only by maxWait each). activeWindow is 100 ms, the traffic of now: a
//     ping to another peer every second (with a 1 s window) held a bulk
//     transfer to its budget all the time and cost it as many drops as
//     steady traffic beside it (TestSparsePeerChargesLittle), while what
//     the ping gains is at most one maxWait of delay.
//
// Before it waits, the read loop wakes the senders of every queue it filled
// in this batch, so that no other peer's packets sit unsent meanwhile.
const (
	maxWait      = 5 * time.Millisecond
	waitBudget   = 5 * time.Millisecond
	waitShare    = 20 // the budget is repaid at 1/waitShare of the time passing
	activeWindow = 100 * time.Millisecond
	// lostWaits is how many uncharged waits in a row may time out, the
	// sender taking nothing, before the queue stalls (a sender off its
	// CPU for up to 20 ms is not a dead peer).
	lostWaits = 4
)

// stallDrain is how many packets a stalled queue's sender must take before
// the read loop waits for it again: half a queue.
func (e *Engine) stallDrain() uint64 { return uint64(e.cfg.SendQueue / 2) }

// bpState is a queue's backpressure state, owned by the read loop.
type bpState struct {
	last      time.Duration // reader.now when the read loop last queued a packet here
	stalled   bool          // a wait timed out: no waiting until the sender took stallDrain more
	stalledAt uint64        // link.taken when it stalled
	debt      time.Duration // budget spent and not yet repaid (at most waitBudget)
	debtAt    time.Duration // reader.now when debt was last repaid
	missed    int           // uncharged waits in a row that timed out with the sender taking nothing
	missedAt  uint64        // link.taken at the last of them
}

// fullMode is how the read loop treats l's queue if it is full: wait for
// room unless it is stalled.
func (r *reader) fullMode(l *link) fullMode {
	if r.stalled(l) {
		return fullStalled
	}
	return fullWait
}

// stalled reports whether l's queue is stalled, and ends the mark once its
// sender has taken stallDrain packets since it was set.
func (r *reader) stalled(l *link) bool {
	bp := &l.bp
	if bp.stalled && l.taken.Load()-bp.stalledAt >= r.e.stallDrain() {
		bp.stalled = false
	}
	return bp.stalled
}

// noteQueued records that the read loop queued a packet to l now. A
// stalled queue does not count as a peer with traffic: its packets are
// dropped without a wait anyway, so another peer's waits delay nothing of
// its that would have been sent, and are not charged for it (a black-holed
// peer that the device keeps sending to would otherwise cut a bulk
// transfer to a healthy peer to its budget: 0.78-0.93 of its throughput
// without the dead peer in scripts/blackhole-test.sh).
func (r *reader) noteQueued(l *link) {
	l.bp.last = r.now
	if r.stalled(l) {
		return
	}
	if r.recent[0] != l {
		r.recent[1], r.recent[0] = r.recent[0], l
	}
}

// othersActive reports whether a peer other than l's, with a queue not
// stalled, got packets from the device within activeWindow. r.recent[0] is
// the queue that got a packet last and r.recent[1] the last one other than
// it (stalled queues are not entered), so one of the two is the last such
// queue other than l.
func (r *reader) othersActive(l *link) bool {
	o := r.recent[0]
	if o == l {
		o = r.recent[1]
	}
	return o != nil && !o.bp.stalled && r.now-o.bp.last < activeWindow
}

// repay reduces l's debt by the share of the time passed since.
func (r *reader) repay(l *link) {
	bp := &l.bp
	bp.debt = max(bp.debt-(r.now-bp.debtAt)/waitShare, 0)
	bp.debtAt = r.now
}

// waitRoom waits for l's sender to take packets out of its full queue, at
// most maxWait or, while other peers have traffic, what is left of l's
// budget. It returns how to queue the packet next: fullDrop after room
// was made (there is room now: only the read loop adds packets), else
// fullStalled or fullOverBudget (l's oldest packet makes room).
func (r *reader) waitRoom(l *link) fullMode {
	e := r.e
	d := maxWait
	charged := r.othersActive(l)
	if charged {
		r.repay(l)
		if l.bp.debt >= waitBudget {
			return fullOverBudget
		}
		d = min(d, waitBudget-l.bp.debt)
	}
	if !l.awaitRoom(e.cfg.SendQueue) {
		return fullDrop // the sender took packets since put looked
	}
	r.wake() // l's sender among them: it may be waiting for its wake
	t0 := time.Now()
	r.timer.Reset(d)
	got := false
	select {
	case <-l.room:
		got = true
	case <-r.timer.C:
	case <-e.ctx.Done():
	}
	r.timer.Stop()
	waited := time.Since(t0)
	r.now = time.Since(r.epoch)
	e.Counters.TxQueueWaitNanos.Add(uint64(waited))
	if charged {
		l.bp.debt += waited
	}
	if got {
		e.Counters.TxQueueWaits.Add(1)
		return fullDrop
	}
	l.cancelWait()
	e.Counters.TxQueueWaitTimeouts.Add(1)
	taken := l.taken.Load()
	if !charged {
		// Nobody else has traffic: a sender that took nothing for one
		// wait may only have been off its CPU (a busy host, a GC). The
		// first lostWaits timeouts in a row without it taking anything
		// drop one packet each and leave the queue waited for; stalling
		// a lone bulk transfer on a 5 ms hiccup dropped every packet
		// until its sender took half a queue again (669 in one benchmark
		// run). A dead peer then costs the read loop lostWaits waits
		// before its queue stalls: the delay the first packet to another
		// peer can meet behind it is bounded by that.
		if taken != l.bp.missedAt {
			l.bp.missed = 0
		}
		l.bp.missed++
		l.bp.missedAt = taken
		if l.bp.missed <= lostWaits {
			return fullDrop
		}
	}
	l.bp.stalled, l.bp.stalledAt = true, taken
	return fullStalled
}

// awaitRoom tells l's sender that the read loop waits for room, if l's
// queue still holds limit packets or more; false: there is room now.
func (l *link) awaitRoom(limit int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n < limit || l.closed {
		return false
	}
	l.waiting = true
	select { // a signal of an earlier wait that nobody took
	case <-l.room:
	default:
	}
	return true
}

// cancelWait ends a wait for room that timed out, so that no stale signal
// ends the next one early.
func (l *link) cancelWait() {
	l.mu.Lock()
	l.waiting = false
	select {
	case <-l.room:
	default:
	}
	l.mu.Unlock()
}
