package datapath

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"
)

// maxResolving bounds resolutions in flight at once.
const maxResolving = 64

// pending holds one packet per overlay address nobody is connected to, and
// the resolutions of those addresses. The read loop holds packets, the
// resolutions and the housekeeping loop settle them, PeerUp takes them.
type pending struct {
	mu        sync.Mutex // guards the three maps; never held across a call into another package
	held      map[netip.Addr]*held
	resolving map[netip.Addr]bool    // a resolution is in flight
	failed    map[netip.Addr]failure // resolution failed; retry after
}

// held is the one packet kept for a destination with no connection yet.
type held struct {
	pkt []byte
	at  time.Time
}

// failure is a resolution that failed, remembered until until.
type failure struct {
	until time.Time
	// noOwner: the lookup found nobody owning the address (packets to it
	// are answered with Destination Unreachable). Otherwise an owner was
	// found but not reached, which may pass: packets are only dropped.
	noOwner bool
}

func (p *pending) init() {
	p.held = make(map[netip.Addr]*held)
	p.resolving = make(map[netip.Addr]bool)
	p.failed = make(map[netip.Addr]failure)
}

// take removes and returns the packet held for a, if any.
func (p *pending) take(a netip.Addr) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.held[a]
	if h == nil {
		return nil
	}
	delete(p.held, a)
	return h.pkt
}

// Pending reports how many addresses have a held packet, a resolution in
// flight and a remembered failure.
func (e *Engine) Pending() (held, resolving, failed int) {
	e.pend.mu.Lock()
	defer e.pend.mu.Unlock()
	return len(e.pend.held), len(e.pend.resolving), len(e.pend.failed)
}

// hold keeps the newest packet for an overlay address with no connection,
// for PendingTimeout, and starts one resolution of the address if there is
// a Resolve; the owner's connection delivers the packet (PeerUp). A packet
// to an address nobody was found to own moments ago is answered with
// Destination Unreachable at once.
func (e *Engine) hold(dst netip.Addr, pkt []byte) {
	p := &e.pend
	p.mu.Lock()
	if f, ok := p.failed[dst]; ok && time.Now().Before(f.until) {
		p.mu.Unlock()
		e.Counters.TxResolveFailed.Add(1)
		if f.noOwner {
			e.answerUnreachable(pkt)
		}
		return
	}
	defer p.mu.Unlock()
	h := p.held[dst]
	if h == nil {
		if len(p.held) >= e.cfg.MaxPending {
			e.Counters.TxNoPeer.Add(1)
			return
		}
		h = &held{}
		p.held[dst] = h
	} else {
		e.Counters.TxNoPeer.Add(1) // the older held packet is replaced
	}
	h.pkt = append(h.pkt[:0], pkt...)
	h.at = time.Now()
	if e.cfg.Resolve == nil || p.resolving[dst] {
		return
	}
	if len(p.resolving) >= maxResolving {
		e.Counters.ResolveBusy.Add(1)
		return
	}
	p.resolving[dst] = true
	e.goRun(func() { e.resolve(dst) })
}

// resolve asks Config.Resolve to find and connect dst's owner. The
// connection delivers the held packet; when nobody owns dst it is
// answered with Destination Unreachable, and when its owner was found but
// not reached (which may pass: a relay being set up, a NAT) it is only
// dropped.
func (e *Engine) resolve(dst netip.Addr) {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.ResolveTimeout)
	err := e.cfg.Resolve(ctx, dst)
	cancel()
	noOwner := errors.Is(err, ErrNoOwner)
	var answer []byte
	p := &e.pend
	p.mu.Lock()
	delete(p.resolving, dst)
	if err != nil && e.ctx.Err() == nil {
		if len(p.failed) < e.cfg.MaxPending {
			p.failed[dst] = failure{until: time.Now().Add(e.cfg.ResolveFailTTL), noOwner: noOwner}
		}
		if h := p.held[dst]; h != nil {
			delete(p.held, dst)
			e.Counters.TxResolveFailed.Add(1)
			if noOwner {
				answer = h.pkt
			}
		}
	}
	p.mu.Unlock()
	if err == nil {
		e.Counters.ResolveOK.Add(1)
		return
	}
	e.Counters.ResolveFailed.Add(1)
	e.cfg.Logger.Debug("resolution failed", "address", dst.String(), "err", err)
	if answer != nil {
		e.answerUnreachable(answer)
	}
}

// NoOwner reports whether dst was found to have no owner moments ago.
func (e *Engine) NoOwner(dst netip.Addr) bool {
	e.pend.mu.Lock()
	defer e.pend.mu.Unlock()
	f, ok := e.pend.failed[dst]
	return ok && f.noOwner && time.Now().Before(f.until)
}

// expirePending drops held packets nobody resolved in time, and forgets
// failed resolutions past their TTL. Without a Resolve nobody will ever
// own an address we have no connection to: those packets are answered with
// Destination Unreachable (with one, they waited for a busy resolver).
func (e *Engine) expirePending(now time.Time) {
	var expired [][]byte
	p := &e.pend
	p.mu.Lock()
	for a, h := range p.held {
		if now.Sub(h.at) > e.cfg.PendingTimeout && !p.resolving[a] {
			delete(p.held, a)
			e.Counters.TxNoPeer.Add(1)
			if e.cfg.Resolve == nil {
				expired = append(expired, h.pkt)
			}
		}
	}
	for a, f := range p.failed {
		if now.After(f.until) {
			delete(p.failed, a)
		}
	}
	p.mu.Unlock()
	for _, pkt := range expired {
		e.answerUnreachable(pkt)
	}
}
