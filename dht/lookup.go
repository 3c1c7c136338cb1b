package dht

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// LookupResult describes one iterative lookup.
type LookupResult struct {
	// Record is the record found (FIND_VALUE lookups), or nil.
	Record *Record
	// Closest are the nearest contacts that answered, nearest first.
	Closest []Contact
	// Hops is the hop count of the peer that returned Record (or, without a
	// record, of the nearest peer that answered): 1 for a peer from our own
	// table, 2 for one it told us about, ...
	Hops int
	// Messages is the number of requests sent.
	Messages int
	// Duration is the lookup's wall (or virtual) time.
	Duration time.Duration
}

type lookupReply struct {
	p    *lookupPeer
	resp *message
	err  error
}

// iterate runs an iterative FIND_NODE (kind msgFindNode) or FIND_VALUE
// lookup toward target with at most alpha requests in flight. accept, for
// FIND_VALUE, returns true for a verified record that ends the lookup.
func (d *DHT) iterate(ctx context.Context, target NodeID, kind msgType, prefixBits uint8, accept func(*Record) bool) (res LookupResult, err error) {
	start := time.Now()
	if d.ctx.Err() != nil {
		return res, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.LookupTimeout)
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel) // Close aborts lookups
	defer stop()

	d.mu.Lock()
	k, alpha := d.table.k, d.alpha
	set := newLookupSet(target, !d.cfg.DisableTiering, d.cfg.TierSlackBits)
	for _, e := range d.table.closest(target, k, d.selfID) {
		set.add(e.c, e.id, 1, d.rtt.tier(e.c.addr().Addr()))
	}
	d.table.buckets[d.table.bucketIndex(target)].lastLookup = start
	d.stats.lookups++
	d.mu.Unlock()
	if len(set.peers) == 0 {
		d.countLookupFailure()
		return res, ErrNoPeers
	}

	replies := make(chan lookupReply, MaxAlpha)
	var wg sync.WaitGroup
	inflight := 0
	defer func() {
		cancel()
		for ; inflight > 0; inflight-- {
			<-replies
		}
		wg.Wait()
		res.Duration = time.Since(start)
		d.observeLookup(res.Duration)
	}()
	for {
		for inflight < alpha {
			p := set.next(k)
			if p == nil {
				break
			}
			p.state = psWaiting
			inflight++
			res.Messages++
			req := &message{Type: kind, Target: target, PrefixBits: prefixBits}
			want := msgNodes
			if kind == msgFindValue {
				want = msgValue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, _, err := d.request(ctx, p.c, req, want)
				replies <- lookupReply{p, resp, err}
			}()
		}
		if inflight == 0 {
			break
		}
		var r lookupReply
		select {
		case r = <-replies:
			inflight--
		case <-ctx.Done():
			d.countLookupFailure()
			if d.ctx.Err() != nil {
				return res, ErrClosed
			}
			return res, fmt.Errorf("dht: lookup of %s: %w", target.Short(), ctx.Err())
		}
		if r.err != nil {
			r.p.state = psUnreachable
			continue
		}
		r.p.state = psQueried
		if rec := d.pickRecord(r.resp.Records, accept); rec != nil {
			res.Record, res.Hops = rec, r.p.hops
			res.Closest = contactsOf(set.closest(k))
			return res, nil
		}
		// Hash outside the lock (proof of work, node ID); only the tier
		// lookup and the drop counter need d.mu. The decoder bounds a
		// reply to MaxContactsPerMessage contacts.
		var ids [MaxContactsPerMessage]NodeID
		fresh, noPoW, badAddr := r.resp.Contacts[:0], 0, 0
		for _, c := range r.resp.Contacts {
			if c.Identity == d.kp.Identity() || set.has(c.Identity) {
				continue
			}
			// Hints we may not send to are dropped here, so no lookup
			// dials them; a contact left with none is no use.
			if c.Addrs = d.dialable(c.Addrs); len(c.Addrs) == 0 {
				badAddr++
				continue
			}
			if pki.PoWBits(c.Identity, c.Nonce) < d.cfg.powBits() {
				noPoW++
				continue
			}
			ids[len(fresh)] = c.ID()
			fresh = append(fresh, c)
		}
		d.mu.Lock()
		d.stats.drops[dropNoPoW] += uint64(noPoW)
		d.stats.drops[dropBadAddr] += uint64(badAddr)
		for i, c := range fresh {
			set.add(c, ids[i], r.p.hops+1, d.rtt.tier(c.addr().Addr()))
		}
		d.mu.Unlock()
		if set.done(k) {
			break
		}
	}
	closest := set.closest(k)
	res.Closest = contactsOf(closest)
	if len(closest) > 0 {
		res.Hops = closest[0].hops
	}
	if kind == msgFindValue {
		d.countLookupFailure()
		return res, fmt.Errorf("dht: %s: %w", target.Short(), ErrNotFound)
	}
	if len(closest) == 0 {
		d.countLookupFailure()
		return res, fmt.Errorf("dht: lookup of %s: no peer answered: %w", target.Short(), ErrNotFound)
	}
	return res, nil
}

// pickRecord verifies candidate records and returns the newest accepted one.
func (d *DHT) pickRecord(recs []Record, accept func(*Record) bool) *Record {
	var best *Record
	now := time.Now()
	for i := range recs {
		r := &recs[i]
		// accept (an identity or hash-prefix match) is cheap; checkRecord
		// costs a hash and an Ed25519 verification, spent only on records
		// we want.
		if accept == nil || !accept(r) {
			d.drop(dropBadRecord)
			continue
		}
		if err := d.checkRecord(r, now); err != nil {
			d.drop(recordDrop(err))
			continue
		}
		if best == nil || r.Seq > best.Seq {
			best = r
		}
	}
	return best
}

func contactsOf(ps []*lookupPeer) []Contact {
	out := make([]Contact, len(ps))
	for i, p := range ps {
		out[i] = p.c
	}
	return out
}

func (d *DHT) countLookupFailure() {
	d.mu.Lock()
	d.stats.lookupFailures++
	d.mu.Unlock()
}

// FindPeers returns the k nearest reachable nodes to target.
func (d *DHT) FindPeers(ctx context.Context, target NodeID) ([]Contact, error) {
	res, err := d.iterate(ctx, target, msgFindNode, 0, nil)
	return res.Closest, err
}

// Resolve returns the newest valid record of id: from our own store if we
// hold one, else by an iterative FIND_VALUE lookup.
func (d *DHT) Resolve(ctx context.Context, id pki.Identity) (*Record, error) {
	res, err := d.ResolveDetailed(ctx, id)
	return res.Record, err
}

// ResolveDetailed is Resolve with the lookup's figures (hops, messages,
// duration), for status output and simulations.
func (d *DHT) ResolveDetailed(ctx context.Context, id pki.Identity) (LookupResult, error) {
	key := IDOf(id)
	accept := func(r *Record) bool { return r.Identity == id }
	if rec := d.local(key, 0, accept); rec != nil {
		return LookupResult{Record: rec}, nil
	}
	return d.iterate(ctx, key, msgFindValue, 0, accept)
}

// ResolveAddr returns the record of the node owning SmartAddr addr: a lookup
// toward its 96-bit hash prefix, accepting only records whose node ID starts
// with those bits and whose signature and proof of work verify.
func (d *DHT) ResolveAddr(ctx context.Context, addr netip.Addr) (*Record, error) {
	p, ok := smartaddr.HashPrefix(addr)
	if !ok {
		return nil, fmt.Errorf("dht: %v is not a SmartAddr", addr)
	}
	var key NodeID
	copy(key[:], p[:])
	accept := func(r *Record) bool { return smartaddr.MatchesHash(addr, r.Identity.Hash()) }
	if rec := d.local(key, smartaddr.HashBits, accept); rec != nil {
		return rec, nil
	}
	res, err := d.iterate(ctx, key, msgFindValue, smartaddr.HashBits, accept)
	return res.Record, err
}

func (d *DHT) local(key NodeID, prefixBits int, accept func(*Record) bool) *Record {
	d.mu.Lock()
	recs := d.store.get(key, prefixBits, time.Now())
	d.mu.Unlock()
	for i := range recs {
		if accept(&recs[i]) {
			return &recs[i]
		}
	}
	return nil
}

// Publish signs a new record of our addresses (sequence number one above
// the last) and stores it at the k nodes nearest our node ID. It returns an
// error if no node accepted it. After the first Publish the DHT republishes
// every Config.RepublishInterval and when SetAddrs changes the addresses.
func (d *DHT) Publish(ctx context.Context) error {
	d.published.Store(true)
	now := time.Now()
	d.mu.Lock()
	d.seq = max(d.seq+1, uint64(now.UnixNano()))
	rec := &Record{Addrs: d.addrs, Relays: d.relays, Seq: d.seq, Expires: now.Add(d.cfg.RecordTTL)}
	d.lastPublish = now
	d.mu.Unlock()
	if err := rec.Sign(d.kp); err != nil {
		return err
	}
	d.mu.Lock()
	d.store.put(d.kp.Identity(), rec, now)
	d.mu.Unlock()
	peers, err := d.FindPeers(ctx, d.selfID)
	if len(peers) == 0 {
		return fmt.Errorf("dht: publish: %w", err)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		accepted int
		errs     []error
	)
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _, err := d.request(ctx, p, &message{Type: msgStore, Record: rec}, msgStoreAck)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case resp.Code != codeOK:
				errs = append(errs, fmt.Errorf("dht: %s refused our record (code %d)", p.Identity.Short(), resp.Code))
			default:
				accepted++
			}
		}()
	}
	wg.Wait()
	if accepted == 0 {
		return fmt.Errorf("dht: publish: no node stored our record: %w", errors.Join(errs...))
	}
	return nil
}
