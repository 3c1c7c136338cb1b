package rpc

import (
	"errors"
	"sync"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
)

// Default budgets for request bytes buffered while they arrive.
const (
	// DefaultPeerBudget lets one peer have four 1 MiB requests, or 64
	// requests of 64 KiB, arriving at once.
	DefaultPeerBudget = 4 << 20
	// DefaultNodeBudget is eight peers at their whole PeerBudget. Beyond
	// that peers share it fairly (see budget), so no number of peers holding
	// theirs keeps another from 1 MiB until 32 of them hold 1 MiB each.
	DefaultNodeBudget = 32 << 20
)

// Budget errors, returned by readRequest when a buffer may not grow.
var (
	errOverPeerBudget = errors.New("rpc: the peer's requests would buffer more than PeerBudget")
	errOverNodeBudget = errors.New("rpc: requests would buffer more than NodeBudget")
	errPreempted      = errors.New("rpc: the request's buffer was given to a peer holding less")
)

// canceler is what budget needs of a stream whose reservation it revokes:
// a way to unblock its reader (a *quic.Stream's CancelRead).
type canceler interface {
	CancelRead(quic.StreamErrorCode)
}

// budget accounts the request bytes a Server holds in buffers while the
// requests arrive: at most perPeer per peer identity (over all its
// connections), at most total over all peers. A stream's buffer grows only
// after its growth was reserved (readPayload), so what a peer announces
// costs nothing until its bytes arrive, and a stream whose growth is
// refused is reset.
//
// When total is full, a peer may still grow by taking bytes from the peer
// holding the most, provided that one would still hold more than the
// grower: its largest stream is revoked and reset. This is max-min
// fairness: peers that fill the budget cannot keep another peer below their
// own share of it, however many of them there are, and taking never pushes
// anyone below the grower. A revocation that does not make enough room
// stands anyway (it only takes from peers above the grower).
type budget struct {
	perPeer, total int

	mu       sync.Mutex // guards the fields below and those of every account and reservation
	used     int
	accounts map[pki.Identity]*account // peers with a Serve running
}

// account is one peer's share of a budget.
type account struct {
	id   pki.Identity
	refs int            // Serve calls running for this peer
	used int            // bytes its reservations hold
	res  []*reservation // reservations holding bytes, in any order
}

// reservation is one stream's share of its peer's account. A nil
// *reservation reserves nothing and never refuses (ReadRequest's).
type reservation struct {
	b       *budget
	acct    *account
	str     canceler
	held    int
	idx     int  // position in acct.res, -1 when absent
	revoked bool // taken by another peer; the stream is being reset
}

func newBudget(perPeer, total int) *budget {
	return &budget{perPeer: perPeer, total: total, accounts: make(map[pki.Identity]*account)}
}

// join returns id's account for one Serve call; leave gives it back.
func (b *budget) join(id pki.Identity) *account {
	b.mu.Lock()
	defer b.mu.Unlock()
	a := b.accounts[id]
	if a == nil {
		a = &account{id: id}
		b.accounts[id] = a
	}
	a.refs++
	return a
}

func (b *budget) leave(a *account) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if a.refs--; a.refs == 0 {
		delete(b.accounts, a.id)
	}
}

// forStream returns an empty reservation for a stream of a's peer.
func (b *budget) forStream(a *account, str canceler) *reservation {
	return &reservation{b: b, acct: a, str: str, idx: -1}
}

// grow reserves delta more bytes for r's stream, or says why it may not.
func (r *reservation) grow(delta int) error {
	if r == nil || delta <= 0 {
		return nil
	}
	return r.b.grow(r, delta)
}

func (b *budget) grow(r *reservation, delta int) error {
	b.mu.Lock()
	if r.revoked {
		b.mu.Unlock()
		return errPreempted
	}
	a := r.acct
	if a.used+delta > b.perPeer {
		b.mu.Unlock()
		return errOverPeerBudget
	}
	var taken []*reservation
	for b.used+delta > b.total {
		v := b.richestLocked(a)
		if v == nil || v.used <= a.used+delta {
			break
		}
		x := v.res[0]
		for _, y := range v.res[1:] {
			if y.held > x.held {
				x = y
			}
		}
		b.dropLocked(x)
		x.revoked = true
		taken = append(taken, x)
	}
	err := errOverNodeBudget
	if b.used+delta <= b.total {
		err = nil
		if r.idx < 0 {
			r.idx = len(a.res)
			a.res = append(a.res, r)
		}
		r.held += delta
		a.used += delta
		b.used += delta
	}
	b.mu.Unlock()
	// Outside the lock: the readers of the taken streams wake up, see
	// revoked and answer their peers.
	for _, x := range taken {
		x.str.CancelRead(codeBusy)
	}
	return err
}

// richestLocked returns the account other than a that holds the most, or
// nil when none holds anything.
func (b *budget) richestLocked(a *account) *account {
	var best *account
	for _, v := range b.accounts {
		if v != a && len(v.res) > 0 && (best == nil || v.used > best.used) {
			best = v
		}
	}
	return best
}

// dropLocked gives back what r holds.
func (b *budget) dropLocked(r *reservation) {
	if r.idx < 0 {
		return
	}
	a := r.acct
	last := a.res[len(a.res)-1]
	a.res[r.idx], last.idx = last, r.idx
	a.res[len(a.res)-1] = nil
	a.res = a.res[:len(a.res)-1]
	r.idx = -1
	a.used -= r.held
	b.used -= r.held
	r.held = 0
}

// release gives back what r holds once its request is read (or failed)
// and reports whether another peer took it meanwhile.
func (r *reservation) release() (revoked bool) {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dropLocked(r)
	return r.revoked
}

// buffered returns the bytes reserved now.
func (b *budget) buffered() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
