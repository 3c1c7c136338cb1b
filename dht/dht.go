package dht

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
)

// Transport is how the DHT reaches other nodes. The node implements it over
// QUIC RPC (protocol ID "dht"); simulations implement it over an in-memory
// network.
//
// Call sends req, an encoded DHT request, to the node to.Identity and returns
// its response bytes, which the peer produced with its own
// DHT.HandleRequest, and at: the underlay address the peer answered from on
// a path it authenticated (for the node, the direct path its connection
// uses; invalid when it answered only through a relay). The routing table
// keeps a contact at that address, never at one it declared. The
// implementation must:
//   - deliver to and accept an answer only from to.Identity (mutual TLS with
//     the identity pinned); to.Addrs are dialing hints and may be stale (the
//     DHT has already dropped those addrpolicy refuses);
//   - honour ctx's deadline (the DHT sets Config.QueryTimeout per call);
//   - reject responses above MaxMessageSize before reading them whole;
//   - be safe for concurrent use (up to MaxAlpha calls per lookup, several
//     lookups at once).
//
// On the receiving side the RPC layer calls DHT.HandleRequest with the
// authenticated identity of the caller and the address the request came
// from, and writes back the bytes it returns (or resets the stream on
// error).
type Transport interface {
	Call(ctx context.Context, to Contact, req []byte) (resp []byte, at netip.AddrPort, err error)
}

// Errors returned by lookups.
var (
	ErrNotFound = errors.New("dht: not found")
	ErrNoPeers  = errors.New("dht: routing table is empty")
	ErrClosed   = errors.New("dht: closed")
)

// DHT is one node's Kademlia instance. Create it with New, feed it inbound
// requests with HandleRequest, and Close it when done.
type DHT struct {
	cfg    Config
	log    *slog.Logger
	kp     *pki.Keypair
	selfID NodeID
	tr     Transport

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	verifyCh  chan verifyJob // inbound contacts to check, pings of oldest entries
	publishCh chan struct{}  // address change: publish soon
	inflight  atomic.Int64   // outbound requests in flight
	published atomic.Bool    // Publish was called: keep republishing

	mu          sync.Mutex // guards all following fields
	table       *table
	store       *recordStore
	rtt         *rttTable
	alpha       int
	addrs       []netip.AddrPort
	relays      []pki.Identity
	client      bool // behind NAT: our requests carry no address (see SetClient)
	seq         uint64
	lastPublish time.Time
	winSent     int // requests sent in this adaptation window
	winTimeouts int // of which timed out or failed
	stats       counters
}

type verifyJob struct {
	c      Contact
	oldest bool // ping the oldest entry of its bucket (eviction check)
}

// congestionBudget is how many outbound requests may be in flight before
// alpha is cut.
const congestionBudget = 64

// New creates a DHT for kp, reachable at addrs, talking through tr. It starts
// the maintenance goroutines; Close stops them.
func New(kp *pki.Keypair, tr Transport, addrs []netip.AddrPort, cfg Config) (*DHT, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if kp == nil || tr == nil {
		return nil, errors.New("dht: New needs a keypair and a transport")
	}
	if err := checkOwnAddrs(addrs, cfg.AllowLoopback); err != nil {
		return nil, err
	}
	cfg.fill()
	if err := pki.CheckPoW(kp.Identity(), kp.Nonce(), cfg.powBits()); err != nil {
		return nil, fmt.Errorf("dht: own identity: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &DHT{
		cfg:       cfg,
		log:       cfg.Logger,
		kp:        kp,
		selfID:    IDOf(kp.Identity()),
		tr:        tr,
		ctx:       ctx,
		cancel:    cancel,
		verifyCh:  make(chan verifyJob, 128),
		publishCh: make(chan struct{}, 1),
		store:     newRecordStore(MaxRecords),
		rtt:       newRTTTable(MaxTierPrefixes),
		alpha:     cfg.Alpha,
		addrs:     slices.Clone(addrs),
	}
	d.table = newTable(d.selfID, &d.cfg)
	d.wg.Add(2)
	go d.maintain()
	go d.verifier()
	return d, nil
}

// Close stops the maintenance goroutines and waits for them and for
// in-flight lookups' workers. It is idempotent and always returns nil.
func (d *DHT) Close() error {
	d.closeOnce.Do(d.cancel)
	d.wg.Wait()
	return nil
}

// Self returns our own contact.
func (d *DHT) Self() Contact {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.selfLocked()
}

func (d *DHT) selfLocked() Contact {
	return Contact{Identity: d.kp.Identity(), Nonce: d.kp.Nonce(), Addrs: d.addrs}
}

// ID returns our node ID.
func (d *DHT) ID() NodeID { return d.selfID }

// checkOwnAddrs refuses addresses we would publish that others could not,
// or must not, be sent to.
func checkOwnAddrs(addrs []netip.AddrPort, allowLoopback bool) error {
	if len(addrs) > MaxAddrs {
		return fmt.Errorf("dht: %d addresses, at most %d allowed", len(addrs), MaxAddrs)
	}
	for _, a := range addrs {
		if err := addrpolicy.Check(a, allowLoopback); err != nil {
			return fmt.Errorf("dht: refusing to advertise %w: give addresses others can reach (loopback only when the node listens on loopback)", err)
		}
	}
	return nil
}

// dialable returns addrs without those addrpolicy refuses (a copy only when
// it drops one).
func (d *DHT) dialable(addrs []netip.AddrPort) []netip.AddrPort {
	for i, a := range addrs {
		if addrpolicy.Dialable(a, d.cfg.AllowLoopback) {
			continue
		}
		out := slices.Clone(addrs[:i])
		for _, b := range addrs[i+1:] {
			if addrpolicy.Dialable(b, d.cfg.AllowLoopback) {
				out = append(out, b)
			}
		}
		return out
	}
	return addrs
}

// SetAddrs replaces our advertised addresses and, if we have published,
// republishes our record with a higher sequence number soon. Addresses
// addrpolicy refuses (loopback allowed only with Config.AllowLoopback) are
// an error and change nothing.
func (d *DHT) SetAddrs(addrs []netip.AddrPort) error {
	if err := checkOwnAddrs(addrs, d.cfg.AllowLoopback); err != nil {
		return err
	}
	d.updateSelf(func() bool {
		changed := !slices.Equal(d.addrs, addrs)
		d.addrs = slices.Clone(addrs)
		return changed
	})
	return nil
}

// SetRelays replaces the relay identities in our record (the relays that
// forward to us while we are behind a NAT) and republishes like SetAddrs.
func (d *DHT) SetRelays(relays []pki.Identity) error {
	if len(relays) > MaxRelays {
		return fmt.Errorf("dht: %d relays, at most %d allowed", len(relays), MaxRelays)
	}
	d.updateSelf(func() bool {
		changed := !slices.Equal(d.relays, relays)
		d.relays = slices.Clone(relays)
		return changed
	})
	return nil
}

// SetClient switches client mode on or off. A node behind a NAT that others
// cannot dial directly should be a client (like libp2p's DHT client mode):
// its requests carry no address and it refuses requests, so no node adds it
// to its routing table and lookups never wait on it; it still looks up,
// publishes and is found through its record, which keeps its addresses
// and relays.
func (d *DHT) SetClient(on bool) {
	d.mu.Lock()
	d.client = on
	d.mu.Unlock()
}

// updateSelf runs f (which reports whether our record's content changed)
// under d.mu, then asks for a republish if it did and we have published.
func (d *DHT) updateSelf(f func() bool) {
	d.mu.Lock()
	changed := f()
	d.mu.Unlock()
	if changed && d.published.Load() {
		select {
		case d.publishCh <- struct{}{}:
		default:
		}
	}
}

// ---- inbound ----

// HandleRequest answers one inbound DHT request. from is the identity the
// RPC layer authenticated (TLS) and fromAddr the underlay address the
// request came from on that authenticated path (invalid if it came through
// a relay). The sender may enter our table only at fromAddr, and only after
// it answers a ping there: never at the addresses it declares, which would
// let one host claim many prefixes or point us at a third party. A sender
// that declares no address is a client (SetClient), and so is one whose
// fromAddr addrpolicy refuses. It returns the encoded response, or an error
// for garbage, which the RPC layer reports by resetting the stream. It
// never blocks on the network.
func (d *DHT) HandleRequest(from pki.Identity, fromAddr netip.AddrPort, req []byte) ([]byte, error) {
	m, err := decodeMessage(req, d.cfg.Identities)
	if err != nil {
		d.drop(dropMalformed)
		return nil, err
	}
	if !m.Type.isRequest() {
		d.drop(dropMalformed)
		return nil, fmt.Errorf("dht: %v is not a request", m.Type)
	}
	if m.Sender.Identity != from {
		d.drop(dropSenderMismatch)
		return nil, fmt.Errorf("dht: request claims sender %s, connection is %s", m.Sender.Identity.Short(), from.Short())
	}
	if err := pki.CheckPoW(from, m.Sender.Nonce, d.cfg.powBits()); err != nil {
		d.drop(dropNoPoW)
		return appendMessage(nil, &message{Type: msgError, Code: codeRefused}), nil
	}
	now := time.Now()
	senderID := IDOf(from)
	// A STORE's record is checked (proof of work, expiry, Ed25519
	// signature) before taking d.mu, which every request and lookup needs.
	var recErr error
	if m.Type == msgStore {
		recErr = d.checkRecord(m.Record, now)
	}
	d.mu.Lock()
	if d.client {
		d.mu.Unlock()
		// A client serves nobody: whoever asks must not take our answer
		// as a sign that we can be routed to.
		return appendMessage(nil, &message{Type: msgError, Code: codeRefused}), nil
	}
	d.stats.handled++
	// A sender without addresses is a client (SetClient): answer it, but
	// never route others to it. Nor to one we cannot verify at the address
	// it spoke from.
	declared := len(m.Sender.Addrs) > 0
	heard := addrpolicy.Dialable(fromAddr, d.cfg.AllowLoopback)
	if declared && !heard {
		d.stats.drops[dropBadAddr]++
	}
	wanted := false
	if declared && heard {
		var capped bool
		if wanted, capped = d.table.wants(senderID, fromAddr); capped {
			d.stats.drops[dropPrefixCap]++
		}
	}
	var resp message
	switch m.Type {
	case msgPing:
		resp.Type = msgPong
	case msgFindNode:
		resp = message{Type: msgNodes, Contacts: d.closestLocked(m.Target, senderID)}
	case msgFindValue:
		resp = message{Type: msgValue, Records: d.store.get(m.Target, int(m.PrefixBits), now)}
		if len(resp.Records) == 0 {
			resp.Contacts = d.closestLocked(m.Target, senderID)
		}
	case msgStore:
		resp = message{Type: msgStoreAck, Code: d.storeLocked(from, m.Record, recErr, now)}
	}
	d.mu.Unlock()
	if wanted {
		// It asked us and its bucket has room; it enters the table only
		// once it answers us too, at the address it spoke from.
		d.enqueueVerify(verifyJob{c: Contact{Identity: from, Nonce: m.Sender.Nonce, Addrs: []netip.AddrPort{fromAddr}}})
	}
	return appendMessage(make([]byte, 0, 512), &resp), nil
}

func (d *DHT) closestLocked(target, exclude NodeID) []Contact {
	es := d.table.closest(target, d.table.k, exclude)
	out := make([]Contact, len(es))
	for i, e := range es {
		out[i] = e.c
	}
	return out
}

// checkRecord is Record.Verify plus our address policy: a record naming an
// address we may not send to (loopback, unless Config.AllowLoopback) is
// neither stored, served nor returned. The decoder already refused every
// address addrpolicy refuses for everyone.
func (d *DHT) checkRecord(r *Record, now time.Time) error {
	if !d.cfg.AllowLoopback {
		if err := checkRecordAddrs(r.Addrs, false); err != nil {
			return err
		}
	}
	return r.Verify(now, d.cfg.powBits(), d.cfg.MaxRecordTTL)
}

// recordDrop is the drop reason of a checkRecord error.
func recordDrop(err error) DropReason {
	if errors.Is(err, ErrBadAddr) {
		return dropBadAddr
	}
	return dropBadRecord
}

// storeLocked stores rec for from; verifyErr is checkRecord's result.
func (d *DHT) storeLocked(from pki.Identity, rec *Record, verifyErr error, now time.Time) uint8 {
	if verifyErr != nil {
		d.stats.drops[recordDrop(verifyErr)]++
		return codeInvalid
	}
	code := d.store.put(from, rec, now)
	switch code {
	case codeQuota:
		d.stats.drops[dropQuota]++
	case codeStale:
		d.stats.drops[dropStale]++
	}
	return code
}

func (d *DHT) enqueueVerify(j verifyJob) {
	select {
	case d.verifyCh <- j:
	default:
		d.drop(dropVerifyQueueFull)
	}
}

// verifier pings contacts that asked us something before they may enter the
// table, and the oldest entries of full buckets before they are evicted.
func (d *DHT) verifier() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case j := <-d.verifyCh:
			id := j.c.ID()
			if !j.oldest {
				d.mu.Lock()
				wanted, _ := d.table.wants(id, j.c.addr())
				d.mu.Unlock()
				if !wanted {
					continue
				}
			}
			_, _, err := d.request(d.ctx, j.c, &message{Type: msgPing}, msgPong)
			if j.oldest {
				d.mu.Lock()
				d.table.pingResult(id, err == nil, time.Now())
				d.mu.Unlock()
			}
		}
	}
}

// ---- outbound ----

var errBadResponse = errors.New("dht: unexpected response")

// request sends m to c with the per-query timeout and checks that the answer
// has type want. Successful answers feed the routing table and the latency
// tiers, keyed by the address the transport says the peer answered from;
// failures count toward the contact's removal. c's hints that addrpolicy
// refuses are never handed to the transport.
func (d *DHT) request(ctx context.Context, c Contact, m *message, want msgType) (*message, time.Duration, error) {
	id := c.ID()
	if id == d.selfID {
		return nil, 0, errors.New("dht: request to self")
	}
	c.Addrs = d.dialable(c.Addrs)
	d.mu.Lock()
	m.Sender = d.selfLocked()
	if d.client {
		m.Sender.Addrs = nil
	}
	d.winSent++
	d.stats.sent++
	d.mu.Unlock()
	req := appendMessage(make([]byte, 0, 256), m)
	qctx, cancel := context.WithTimeout(ctx, d.cfg.QueryTimeout)
	d.inflight.Add(1)
	start := time.Now()
	raw, at, err := d.tr.Call(qctx, c, req)
	rtt := time.Since(start)
	d.inflight.Add(-1)
	cancel()
	var resp *message
	if err == nil {
		resp, err = decodeMessage(raw, d.cfg.Identities)
		if err == nil && resp.Type != want {
			err = fmt.Errorf("%w %v to %v", errBadResponse, resp.Type, m.Type)
		}
		if err != nil {
			d.drop(dropBadResponse)
		}
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			// Our own lookup gave up on it: not the peer's fault.
			return nil, rtt, err
		}
		d.winTimeouts++
		d.stats.failed++
		if d.table.failed(id) {
			d.stats.evicted++
		}
		return nil, rtt, err
	}
	if !addrpolicy.Dialable(at, d.cfg.AllowLoopback) {
		// Alive, but at no address we could give others (a relayed path,
		// or one we may not send to): keep what the table knows, add
		// nothing.
		if at.IsValid() {
			d.stats.drops[dropBadAddr]++
		}
		d.table.touch(id, now)
		return resp, rtt, nil
	}
	d.rtt.observe(at.Addr(), rtt)
	if len(c.Addrs) != 1 || c.Addrs[0] != at {
		c.Addrs = []netip.AddrPort{at}
	}
	d.seenLocked(c, id, now)
	return resp, rtt, nil
}

// seenLocked offers a contact that answered us to the table.
func (d *DHT) seenLocked(c Contact, id NodeID, now time.Time) {
	if !d.table.contains(id) && pki.PoWBits(c.Identity, c.Nonce) < d.cfg.powBits() {
		d.stats.drops[dropNoPoW]++
		return
	}
	res, ping := d.table.seen(c, id, now)
	switch res {
	case insAdded:
		d.stats.inserted++
	case insPrefixCap:
		d.stats.drops[dropPrefixCap]++
	case insRateLimited:
		d.stats.drops[dropRateLimited]++
	}
	if ping != nil {
		select {
		case d.verifyCh <- verifyJob{c: *ping, oldest: true}:
		default:
			d.stats.drops[dropVerifyQueueFull]++
			d.table.pingResult(ping.ID(), true, now) // unblock the bucket; keep the old entry
		}
	}
}

// Ping sends a PING to c; on success c is offered to the routing table.
func (d *DHT) Ping(ctx context.Context, c Contact) (time.Duration, error) {
	_, rtt, err := d.request(ctx, c, &message{Type: msgPing}, msgPong)
	return rtt, err
}

// ---- maintenance ----

func (d *DHT) maintain() {
	defer d.wg.Done()
	tick := time.NewTicker(d.cfg.AdaptInterval)
	defer tick.Stop()
	lastRefresh := time.Now()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-d.publishCh:
			d.publishLogged()
		case now := <-tick.C:
			d.adapt()
			d.mu.Lock()
			d.store.expire(now)
			due := d.published.Load() && now.Sub(d.lastPublish) >= d.cfg.RepublishInterval
			d.mu.Unlock()
			if due {
				d.publishLogged()
			}
			if now.Sub(lastRefresh) >= d.cfg.RefreshInterval {
				lastRefresh = now
				d.refresh(d.ctx, false)
			}
		}
	}
}

func (d *DHT) publishLogged() {
	if err := d.Publish(d.ctx); err != nil && d.ctx.Err() == nil {
		d.log.Warn("dht: republishing our record failed", "err", err)
	}
}

// adapt recomputes k, alpha and the latency tiers from the last window.
func (d *DHT) adapt() {
	congested := d.inflight.Load() > congestionBudget
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.cfg.FixedKAlpha {
		churn := 0.0
		if n := d.table.size + d.table.removed; n > 0 {
			churn = float64(d.table.removed) / float64(n)
		}
		timeoutRate := 0.0
		if d.winSent >= 10 {
			timeoutRate = float64(d.winTimeouts) / float64(d.winSent)
		}
		d.table.k = NextK(d.table.k, churn, congested)
		d.alpha = NextAlpha(d.alpha, timeoutRate, congested)
	}
	d.table.removed, d.winSent, d.winTimeouts = 0, 0, 0
	if !d.cfg.DisableTiering {
		d.rtt.recluster()
	}
}

// refresh looks up a random ID in every bucket up to the deepest non-empty
// one: when force is set (bootstrap) those not yet full, else those without
// a recent lookup.
func (d *DHT) refresh(ctx context.Context, force bool) {
	now := time.Now()
	d.mu.Lock()
	deepest := -1
	for i := NumBuckets - 1; i >= 0; i-- {
		if len(d.table.buckets[i].entries) > 0 {
			deepest = i
			break
		}
	}
	var targets []NodeID
	for i := 0; i <= deepest; i++ {
		b := &d.table.buckets[i]
		if force && len(b.entries) < d.table.k || !force && now.Sub(b.lastLookup) >= d.cfg.RefreshInterval {
			var r [32]byte
			rand.Read(r[:])
			targets = append(targets, randomIDInBucket(d.selfID, i, r))
		}
	}
	d.mu.Unlock()
	for _, t := range targets {
		if ctx.Err() != nil {
			return
		}
		d.FindPeers(ctx, t)
	}
}

// Bootstrap pings the seed contacts, looks up our own ID and refreshes every
// bucket, so that the table holds contacts near us and at every distance. It
// fails only if no seed answered.
func (d *DHT) Bootstrap(ctx context.Context, seeds []Contact) error {
	ok := 0
	var errs []error
	for _, s := range seeds {
		// A few tries: one lost packet must not keep a node out.
		var err error
		for try := 0; try < 3 && ctx.Err() == nil; try++ {
			if _, err = d.Ping(ctx, s); err == nil {
				break
			}
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ok++
	}
	if ok == 0 && len(seeds) > 0 {
		return fmt.Errorf("dht: bootstrap: no seed answered: %w", errors.Join(errs...))
	}
	if _, err := d.FindPeers(ctx, d.selfID); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("dht: bootstrap self-lookup: %w", err)
	}
	d.refresh(ctx, true)
	return nil
}
