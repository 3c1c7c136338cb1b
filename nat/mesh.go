package nat

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/internal/ratelimit"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay/client"
)

// Mesh-first relaying (the reference's opportunistic relaying with
// mesh-mediated signalling): any publicly reachable peer may relay, not only
// the relays a node publishes. When a target's published relays do not
// answer (or a connected peer's relay path died), the node names up to
// MaxSignalRelays public peers it holds direct connections to, allows
// sessions from the target through them, and tells the target so in a mesh
// relay signal (signal.go) that gossipsub carries through the mesh, signed,
// at most 30 s old, deduplicated and rate limited. The target allows
// sessions from us through the same relays and connects to them if it must.
//
// Exactly one side of a pair asks for the session (the one with the lower
// identity), one attempt per peer at a time, so two sessions through the
// same relay never race each other (each end keeps one session per relay).
// A relay calls the other side with MsgIncoming; it accepts only sessions it
// allowed: from its own relays, or from a peer through a relay one of the
// two named in a signal within meshAllowTTL.

// Timing and limits of mesh relaying. The reference gives each mesh relay
// attempt 15 s and a direct connect 5 s.
const (
	meshAttemptTime = 4 * time.Second        // one mesh relay attempt
	meshHeadStart   = 500 * time.Millisecond // a dial asks its target's published relays alone this long
	meshRetry       = 250 * time.Millisecond // a refused session request is retried this often
	meshCallTime    = 1500 * time.Millisecond
	meshReachTime   = 2 * time.Second  // connecting to a relay a signal named
	meshAllowTTL    = 15 * time.Second // sessions allowed by one attempt or signal
	maxAllowed      = 1024             // allowed (peer, relay) pairs
	maxMeshAttempts = 8                // mesh attempts in flight (ours and answers)
	repairEvery     = time.Second      // a relayed peer whose path died is repaired this often
	maxRepairChecks = 64               // relayed peers whose paths one tick looks at
	signalOrigins   = 1024             // buckets of the per-origin signal budget
	connectBuckets  = 1024             // buckets of the per-requester session budget
)

// signalRate is how many mesh relay signals one origin may have us act on:
// gossipsub already limits each neighbour to 20 a second; an origin that
// reaches us through many neighbours gets no more than this.
var signalRate = ratelimit.Rate{N: 2, Per: time.Second, Burst: 4}

// connectRate bounds the sessions one peer may ask us to relay (each costs
// a MsgIncoming call to the target and a table entry).
var connectRate = ratelimit.Rate{N: 10, Per: time.Second, Burst: 20}

// MeshCounters count mesh relaying, by reason.
type MeshCounters struct {
	SignalsSent     atomic.Uint64
	SignalsReceived atomic.Uint64
	SignalMalformed atomic.Uint64 // payload is not a valid mesh relay signal
	SignalRate      atomic.Uint64 // its origin is over signalRate
	SignalIgnored   atomic.Uint64 // names only us or the origin
	AttemptsBusy    atomic.Uint64 // maxMeshAttempts in flight: dropped
	Attempts        atomic.Uint64
	Sessions        atomic.Uint64 // sessions through a mesh relay (either side)
	Failed          atomic.Uint64 // attempts that ended without a session
	AllowEvicted    atomic.Uint64 // allowed pairs forgotten for room
	ConnectRate     atomic.Uint64 // session requests over connectRate
	Repairs         atomic.Uint64 // attempts for a connected peer whose relay path died
	Repicks         atomic.Uint64 // our relay left: another one chosen
}

type allowKey struct{ peer, relay pki.Identity }

type allowEntry struct {
	until time.Time
	used  bool // a session from peer through relay was accepted
}

// mesh is the Traversal's mesh relaying state.
type mesh struct {
	inflight chan struct{} // semaphore of attempts in flight

	mu       sync.Mutex // guards every field below; held only for map and bucket arithmetic (ratelimit calls back into nothing)
	allowed  map[allowKey]*allowEntry
	busy     map[pki.Identity]bool          // a mesh attempt for this peer runs
	hints    map[pki.Identity][]SignalRelay // relays a peer's signal named, for its running attempt
	origins  *ratelimit.Keyed
	connects *ratelimit.Keyed

	// Owned by the loop.
	repaired map[pki.Identity]time.Time
}

func newMesh() mesh {
	return mesh{
		inflight: make(chan struct{}, maxMeshAttempts),
		allowed:  make(map[allowKey]*allowEntry),
		busy:     make(map[pki.Identity]bool),
		hints:    make(map[pki.Identity][]SignalRelay),
		origins:  ratelimit.NewKeyed(signalRate, signalOrigins),
		connects: ratelimit.NewKeyed(connectRate, connectBuckets),
		repaired: make(map[pki.Identity]time.Time),
	}
}

// allow lets peer's sessions through relay in until meshAllowTTL from now.
// A full table forgets the pair that expires first.
func (t *Traversal) allow(peer, relay pki.Identity, now time.Time) {
	m := &t.mesh
	m.mu.Lock()
	defer m.mu.Unlock()
	k := allowKey{peer, relay}
	if e := m.allowed[k]; e != nil {
		e.until = now.Add(meshAllowTTL)
		return
	}
	if len(m.allowed) >= maxAllowed {
		var first allowKey
		var at time.Time
		for k, e := range m.allowed {
			if at.IsZero() || e.until.Before(at) {
				first, at = k, e.until
			}
		}
		delete(m.allowed, first)
		t.Mesh.AllowEvicted.Add(1)
	}
	m.allowed[k] = &allowEntry{until: now.Add(meshAllowTTL)}
}

// takeAllowed reports whether a session from peer through relay is allowed,
// and marks it used.
func (t *Traversal) takeAllowed(peer, relay pki.Identity, now time.Time) bool {
	m := &t.mesh
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.allowed[allowKey{peer, relay}]
	if e == nil || now.After(e.until) {
		return false
	}
	e.used = true
	return true
}

// usedAllowance reports whether a session from peer through one of relays
// was accepted.
func (t *Traversal) usedAllowance(peer pki.Identity, relays []SignalRelay) bool {
	m := &t.mesh
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range relays {
		if e := m.allowed[allowKey{peer, r.ID}]; e != nil && e.used {
			return true
		}
	}
	return false
}

// expireAllowed forgets expired pairs. Run by the loop.
func (t *Traversal) expireAllowed(now time.Time) {
	m := &t.mesh
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, e := range m.allowed {
		if now.After(e.until) {
			delete(m.allowed, k)
		}
	}
}

// Allowed returns how many (peer, relay) pairs are allowed now (for tests
// and status).
func (t *Traversal) Allowed() int {
	t.mesh.mu.Lock()
	defer t.mesh.mu.Unlock()
	return len(t.mesh.allowed)
}

// meshRelays names the peers that may relay between us and target: peers
// we hold direct connections to, public by what we know of them (our own
// relays, the peers configure_nat found relaying, the public peers the
// host knows, such as its DHT routing table's), not target, not among
// exclude. At most MaxSignalRelays, our own relays first.
func (t *Traversal) meshRelays(target pki.Identity, exclude []pki.Identity) []SignalRelay {
	var out []SignalRelay
	seen := map[pki.Identity]bool{t.cfg.Self: true, target: true}
	for _, id := range exclude {
		seen[id] = true
	}
	add := func(id pki.Identity) {
		if len(out) == MaxSignalRelays || seen[id] {
			return
		}
		seen[id] = true
		if t.cfg.Peers.Peer(id) == nil {
			return
		}
		addr, ok := t.directAddr(id)
		if !ok {
			return
		}
		out = append(out, SignalRelay{ID: id, Addrs: []netip.AddrPort{addr}})
	}
	for _, id := range t.status.Load().Relays {
		add(id)
	}
	for _, id := range t.relayers() {
		add(id)
	}
	if t.cfg.Spares != nil {
		for _, c := range t.cfg.Spares() {
			add(c.Identity)
		}
	}
	return out
}

// MeshConnect is one mesh relay attempt toward target (see the comment at
// the top): it returns whether a session through a mesh relay is up, once
// one is or the attempt's time is over. exclude are relays not to name
// (dead ones, or the target's published relays, which have been asked).
func (t *Traversal) MeshConnect(ctx context.Context, target pki.Identity, exclude []pki.Identity) bool {
	rs := t.meshRelays(target, exclude)
	if len(rs) == 0 {
		return false
	}
	return t.meshAttempt(ctx, target, rs, true)
}

// meshAttempt allows target's sessions through rs, signals them to target
// when we originate, and, on the lower identity's side, asks them for a
// session; the other side waits for the target to ask. One attempt per
// target at a time: a second one hands its relays to the first.
func (t *Traversal) meshAttempt(ctx context.Context, target pki.Identity, rs []SignalRelay, originate bool) bool {
	now := time.Now()
	for _, r := range rs {
		t.allow(target, r.ID, now)
	}
	m := &t.mesh
	m.mu.Lock()
	if m.busy[target] {
		m.hints[target] = append(m.hints[target], rs...)[:min(len(m.hints[target])+len(rs), 2*MaxSignalRelays)]
		m.mu.Unlock()
		return false
	}
	m.busy[target] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.busy, target)
		delete(m.hints, target)
		m.mu.Unlock()
	}()
	t.Mesh.Attempts.Add(1)
	if originate && t.cfg.Signal != nil {
		if err := t.cfg.Signal(target, AppendSignal(nil, rs)); err == nil {
			t.Mesh.SignalsSent.Add(1)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, meshAttemptTime)
	defer cancel()
	lower := bytes.Compare(t.cfg.Self[:], target[:]) < 0
	tk := time.NewTicker(meshRetry)
	defer tk.Stop()
	for {
		if t.usedAllowance(target, rs) {
			t.Mesh.Sessions.Add(1)
			return true
		}
		if lower {
			m.mu.Lock()
			for _, h := range m.hints[target] {
				if !slices.ContainsFunc(rs, func(r SignalRelay) bool { return r.ID == h.ID }) && len(rs) < 2*MaxSignalRelays {
					rs = append(rs, h)
				}
			}
			m.mu.Unlock()
			for _, r := range rs {
				if t.requestVia(ctx, target, r) {
					t.Mesh.Sessions.Add(1)
					return true
				}
				if ctx.Err() != nil {
					break
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Mesh.Failed.Add(1)
			return false
		case <-tk.C:
		}
	}
}

// requestVia asks relay r for a session to target (connecting to r first
// when we are not connected to it) and adds it as a path.
func (t *Traversal) requestVia(ctx context.Context, target pki.Identity, r SignalRelay) bool {
	if t.cfg.Peers.Peer(r.ID) == nil {
		addrs, refused, _ := dialAddrs(r.Addrs, t.cfg.Loopback)
		t.Counters.DialAddrRefused.Add(uint64(refused))
		if len(addrs) == 0 {
			return false
		}
		cctx, cancel := context.WithTimeout(ctx, meshReachTime)
		err := t.Connect(cctx, r.ID, addrs, nil, false)
		cancel()
		if err != nil {
			return false
		}
	}
	raddr, ok := t.directAddr(r.ID)
	if !ok {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, meshCallTime)
	sid, err := client.Connect(cctx, caller{t}, r.ID, target)
	cancel()
	if err != nil {
		t.cfg.Logger.Debug("mesh relay refused", "relay", r.ID.Short(), "peer", target.Short(), "err", err)
		return false
	}
	t.cfg.Sock.AddRelayPath(target, r.ID, raddr, sid)
	t.cfg.Logger.Info("mesh relay session", "peer", target.Short(), "relay", r.ID.Short())
	return true
}

// HandleSignal acts on a mesh relay signal from origin (verified by
// gossipsub: signed, fresh, not seen before): it allows origin's sessions
// through the relays it names and, on the lower identity's side, asks one
// of them for a session to origin.
func (t *Traversal) HandleSignal(origin pki.Identity, payload []byte) {
	t.Mesh.SignalsReceived.Add(1)
	rs, err := ParseSignal(payload)
	if err != nil {
		t.Mesh.SignalMalformed.Add(1)
		return
	}
	now := time.Now()
	t.mesh.mu.Lock()
	ok := t.mesh.origins.Allow(origin[:], now)
	t.mesh.mu.Unlock()
	if !ok {
		t.Mesh.SignalRate.Add(1)
		return
	}
	rs = slices.DeleteFunc(rs, func(r SignalRelay) bool { return r.ID == t.cfg.Self || r.ID == origin })
	if len(rs) == 0 || origin == t.cfg.Self {
		t.Mesh.SignalIgnored.Add(1)
		return
	}
	for _, r := range rs {
		t.allow(origin, r.ID, now) // cheap and bounded, even when no attempt can run
	}
	if t.ctx.Err() != nil || bytes.Compare(t.cfg.Self[:], origin[:]) > 0 {
		return // the origin has the lower identity: it asks, we only allow
	}
	select {
	case t.mesh.inflight <- struct{}{}:
	default:
		t.Mesh.AttemptsBusy.Add(1)
		return
	}
	t.goRun(func() {
		defer func() { <-t.mesh.inflight }()
		t.meshAttempt(t.ctx, origin, rs, false)
	})
}

// allowConnect spends one of from's session requests (connectRate).
func (t *Traversal) allowConnect(from pki.Identity) bool {
	t.mesh.mu.Lock()
	ok := t.mesh.connects.Allow(from[:], time.Now())
	t.mesh.mu.Unlock()
	if !ok {
		t.Mesh.ConnectRate.Add(1)
	}
	return ok
}

// repairRelayed starts a mesh attempt for every connected peer whose
// traffic goes through a relay that left us or stopped answering probes,
// when no other relay path of it is alive. Run by the loop.
func (t *Traversal) repairRelayed(now time.Time) {
	m := &t.mesh
	for id, at := range m.repaired {
		if now.Sub(at) > 10*repairEvery {
			delete(m.repaired, id)
		}
	}
	checks := 0
	// The relayed peers, not Path of every peer (4,000 calls a second at
	// 1,000 peers); from a random one, so the cap skips none for good.
	ids := t.cfg.Sock.RelayedPeers()
	off := rand.IntN(max(len(ids), 1))
	for i := range ids {
		if checks == maxRepairChecks {
			break
		}
		id := ids[(off+i)%len(ids)]
		if now.Sub(m.repaired[id]) < repairEvery || t.cfg.Peers.Peer(id) == nil {
			continue
		}
		checks++
		paths, _ := t.cfg.Sock.Paths(id)
		dead, alive := deadRelays(paths, func(r pki.Identity) bool { return t.cfg.Peers.Peer(r) != nil })
		if alive || len(dead) == 0 {
			continue
		}
		rs := t.meshRelays(id, dead)
		if len(rs) == 0 {
			continue // no relay yet (ours may be being picked again): look again next tick
		}
		m.repaired[id] = now
		select {
		case m.inflight <- struct{}{}:
		default:
			t.Mesh.AttemptsBusy.Add(1)
			continue
		}
		t.Mesh.Repairs.Add(1)
		t.cfg.Logger.Info("relay path died: repairing through the mesh", "peer", id.Short(), "dead", len(dead))
		t.goRun(func() {
			defer func() { <-m.inflight }()
			t.meshAttempt(t.ctx, id, rs, true)
		})
	}
}
