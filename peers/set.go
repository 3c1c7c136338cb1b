package peers

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/internal/group"
	"github.com/korium/korium-tun/pki"
)

// Config configures a Set. Transport and Self are required; every other
// zero field means its default or "none".
type Config struct {
	// Self is our identity (a dial to it is refused).
	Self pki.Identity
	// Transport dials peers (see Accept for incoming ones). The set does
	// not own it: the host closes it.
	Transport *quic.Transport
	// QUIC configures dialed connections.
	QUIC *quic.Config
	// ClientTLS returns the TLS configuration of a dial that expects id.
	ClientTLS func(id pki.Identity) (*tls.Config, error)
	// HandshakeTimeout bounds one dial (default 5 s).
	HandshakeTimeout time.Duration
	// MaxPeers caps connections (default 1,000, the reference's connection
	// cache): one beyond it evicts the least recently used peer that is
	// not a kept contact, or is refused when every peer is one.
	MaxPeers int
	// IdleEvict closes a connection that nobody touched for this long
	// (default 10 minutes; negative: never), sparing kept contacts and
	// the peers Keep names.
	IdleEvict time.Duration
	// Logger receives connection events; nil discards.
	Logger *slog.Logger

	// Admit classifies a connection that passed the set's own checks,
	// before it is published: it may set the peer's Routable and Ext, or
	// refuse it with an error (the connection is closed as refused).
	Admit func(p *Peer, cs tls.ConnectionState) error
	// HandshakeAddr returns where id's newest handshake came from.
	HandshakeAddr func(id pki.Identity) netip.AddrPort
	// Redial dials a kept contact (the host's SmartConnect), under the
	// set's own context.
	Redial func(ctx context.Context, c Contact) error
	// Keep returns the peers idle eviction must spare besides the kept
	// contacts (the host's pubsub topic peers and relays). It is called
	// from a sweep goroutine, never from the loop.
	Keep func() map[pki.Identity]bool

	// Hooks, all called outside the loop, never for the same peer at once:
	// Up after p is installed (its watch starts after Up returns, so
	// Down follows Up); Down after p's connection ended (current: p was
	// still the peer's connection, not replaced); Evicted after the peer
	// limit pushed p out (its Down follows with current false).
	Up      func(p *Peer)
	Down    func(p *Peer, current bool)
	Evicted func(p *Peer)
	// Replaced: a live connection of id from was was replaced by one from
	// now (a restart, a NAT rebinding, or two nodes on one key).
	Replaced func(id pki.Identity, was, now netip.AddrPort)
	// Refused: a connection refused here, with a line that says why.
	Refused func(r Refusal, id pki.Identity, addr netip.AddrPort, msg string)
}

// Refusal is why the set refused a connection.
type Refusal int

const (
	RefusedBadCert     Refusal = iota // no identity in its certificate
	RefusedNotOwner                   // its identity does not own the address it used
	RefusedNoDatagrams                // it does not speak QUIC datagrams
	RefusedPeerLimit                  // no room: every peer is a kept contact
	RefusedAdmission                  // Config.Admit refused it
)

// The defaults of Config.MaxPeers (the reference's connection cache) and
// Config.IdleEvict; the overlay's Config takes them too.
const (
	DefaultMaxPeers  = 1000
	DefaultIdleEvict = 10 * time.Minute
)

func (c Config) withDefaults() Config {
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = DefaultMaxPeers
	}
	if c.IdleEvict == 0 {
		c.IdleEvict = DefaultIdleEvict
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.HandshakeAddr == nil {
		c.HandshakeAddr = func(pki.Identity) netip.AddrPort { return netip.AddrPort{} }
	}
	noop := func(*Peer) {}
	if c.Up == nil {
		c.Up = noop
	}
	if c.Evicted == nil {
		c.Evicted = noop
	}
	if c.Down == nil {
		c.Down = func(*Peer, bool) {}
	}
	if c.Replaced == nil {
		c.Replaced = func(pki.Identity, netip.AddrPort, netip.AddrPort) {}
	}
	if c.Refused == nil {
		c.Refused = func(Refusal, pki.Identity, netip.AddrPort, string) {}
	}
	return c
}

// Counters count connection events.
type Counters struct {
	Handshakes     atomic.Uint64 // completed QUIC handshakes, both ways
	DuplicateConns atomic.Uint64 // connections closed by the duplicate rule
	Evicted        atomic.Uint64 // peers evicted for the peer limit
	IdleEvicted    atomic.Uint64 // connections closed as idle
}

// ErrClosed is returned by calls on a closed set.
var ErrClosed = errors.New("peers: the peer set is closed")

// Set is the peer set. Create it with New; Close stops it.
type Set struct {
	cfg      Config
	Counters Counters

	clock atomic.Int64             // unix ns, refreshed every tick: a cheap "now" for Touch
	snap  atomic.Pointer[Snapshot] // published by the loop after every change

	ops    chan func() // work for the loop; unbuffered, so a sent op always runs
	ctx    context.Context
	cancel context.CancelFunc
	group  group.Group // the loop, the accept loop, redials, sweeps, accepted handshakes
	once   sync.Once

	wmu       sync.Mutex            // guards watches and unwatched; taken alone
	watchWG   sync.WaitGroup        // connection watches that fired and still run (see watch)
	watches   map[*Peer]func() bool // stops the connection watches that have not fired (see watch)
	unwatched bool                  // Close released the watches

	// Owned by the loop: read and written only by functions it runs.
	peers    map[pki.Identity]*Peer
	desired  map[pki.Identity]*desired
	dials    map[pki.Identity]*dialCall
	maxPeers int
}

// desired is a contact the set keeps connected.
type desired struct {
	contact  Contact
	dialing  bool
	nextDial time.Time
	backoff  time.Duration
}

// tick is how often the loop refreshes the clock and redials kept
// contacts; idleSweep how often it looks for idle connections.
const (
	tick      = 250 * time.Millisecond
	idleSweep = 15 * time.Second
)

// New starts a set's loop. Accept starts taking incoming connections.
func New(cfg Config) *Set {
	cfg = cfg.withDefaults()
	s := &Set{
		cfg:      cfg,
		ops:      make(chan func()),
		peers:    make(map[pki.Identity]*Peer),
		desired:  make(map[pki.Identity]*desired),
		dials:    make(map[pki.Identity]*dialCall),
		watches:  make(map[*Peer]func() bool),
		maxPeers: cfg.MaxPeers,
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.clock.Store(time.Now().UnixNano())
	s.snap.Store(emptySnapshot)
	s.goRun(s.run)
	return s
}

// Accept installs the connections ln accepts, until ln or the set is
// closed (the host closes ln).
func (s *Set) Accept(ln *quic.Listener) { s.goRun(func() { s.acceptLoop(ln) }) }

// goRun runs f as one of the set's goroutines, unless Close began.
func (s *Set) goRun(f func()) bool { return s.group.Go(f) }

// Close stops every goroutine of the set and waits for them. It closes no
// connection: the host closes them (and its listener) first, so that
// peers hear a CONNECTION_CLOSE. It is idempotent.
func (s *Set) Close() {
	s.once.Do(func() {
		s.cancel()
		s.wmu.Lock()
		s.unwatched = true
		for p, stop := range s.watches {
			if stop() {
				s.watchWG.Done()
			}
			delete(s.watches, p)
		}
		s.wmu.Unlock()
		s.group.Wait()
		s.watchWG.Wait()
	})
}

// do runs f on the loop and waits for it; false when the set is closed.
func (s *Set) do(f func()) bool {
	done := make(chan struct{})
	select {
	case s.ops <- func() { f(); close(done) }:
	case <-s.ctx.Done():
		return false
	}
	<-done
	return true
}

func (s *Set) run() {
	t := time.NewTicker(tick)
	defer t.Stop()
	lastSweep := time.Now()
	for {
		select {
		case <-s.ctx.Done():
			return
		case f := <-s.ops:
			f()
		case now := <-t.C:
			s.clock.Store(now.UnixNano())
			s.redialDue(now)
			if now.Sub(lastSweep) >= idleSweep {
				lastSweep = now
				s.goRun(func() { s.EvictIdle(now) })
			}
		}
	}
}

// publish replaces the snapshot with the loop's current state.
func (s *Set) publish() {
	n := &Snapshot{
		byID:    make(map[pki.Identity]*Peer, len(s.peers)),
		byAddr:  make(map[netip.Addr]*Peer, len(s.peers)),
		desired: make(map[pki.Identity]bool, len(s.desired)),
	}
	for id, p := range s.peers {
		n.byID[id] = p
		if p.Routable {
			n.byAddr[p.Addr] = p
		}
	}
	for id := range s.desired {
		n.desired[id] = true
	}
	s.snap.Store(n)
}

// Snapshot returns the current view of the set. It takes no lock.
func (s *Set) Snapshot() *Snapshot { return s.snap.Load() }

// Peer returns the connection to id, or nil.
func (s *Set) Peer(id pki.Identity) *Peer { return s.snap.Load().Peer(id) }

// Now returns the set's coarse clock (what Touch stores).
func (s *Set) Now() time.Time { return time.Unix(0, s.clock.Load()) }

// AdvanceClock moves the coarse clock by d (tests of eviction).
func (s *Set) AdvanceClock(d time.Duration) { s.clock.Add(int64(d)) }

// SetClock sets the coarse clock (tests of eviction); the next tick
// overwrites it.
func (s *Set) SetClock(t time.Time) { s.clock.Store(t.UnixNano()) }

// SetMaxPeers changes the peer limit for connections installed from now on.
func (s *Set) SetMaxPeers(n int) { s.do(func() { s.maxPeers = max(n, 1) }) }

// ---- kept contacts --------------------------------------------------------------

// Keep keeps a connection to c: it is dialed now (through Config.Redial)
// and redialed with backoff whenever it drops. Keeping a contact again
// updates its address.
func (s *Set) Keep(c Contact) {
	if c.Identity == s.cfg.Self {
		return
	}
	s.do(func() {
		if d, ok := s.desired[c.Identity]; ok {
			d.contact = c
			return
		}
		d := &desired{contact: c}
		s.desired[c.Identity] = d
		s.publish()
		if s.peers[c.Identity] == nil {
			s.startRedial(d)
		}
	})
}

// Forget undoes Keep: id is no longer redialed, and its connection, if
// any, is evicted like any other.
func (s *Set) Forget(id pki.Identity) {
	s.do(func() {
		if _, ok := s.desired[id]; ok {
			delete(s.desired, id)
			s.publish()
		}
	})
}

// Kept lists the contacts the set keeps connected.
func (s *Set) Kept() []Contact {
	var out []Contact
	s.do(func() {
		out = make([]Contact, 0, len(s.desired))
		for _, d := range s.desired {
			out = append(out, d.contact)
		}
	})
	return out
}

// redialDue starts a dial of every kept contact whose backoff is over.
func (s *Set) redialDue(now time.Time) {
	for id, d := range s.desired {
		if s.peers[id] == nil && !d.dialing && now.After(d.nextDial) {
			s.startRedial(d)
		}
	}
}

// startRedial dials d in a goroutine of the set; the result comes back to
// the loop. Run by the loop.
func (s *Set) startRedial(d *desired) {
	if s.cfg.Redial == nil || s.ctx.Err() != nil {
		return
	}
	d.dialing = true
	c := d.contact
	s.goRun(func() {
		err := s.cfg.Redial(s.ctx, c)
		var retry time.Duration
		s.do(func() {
			d.dialing = false
			if err != nil {
				d.backoff = nextBackoff(d.backoff)
				d.nextDial = time.Now().Add(d.backoff)
			}
			retry = d.backoff
		})
		if err != nil && s.ctx.Err() == nil {
			s.cfg.Logger.Debug("dial failed", "peer", c.Identity.Short(), "err", err, "retry_in", retry)
		}
	})
}

// ---- idle eviction ------------------------------------------------------------

// EvictIdle closes the connections nobody touched for Config.IdleEvict
// before now, except kept contacts and the peers Config.Keep names. The
// loop runs it every 15 s; their ends come back through the watchers.
func (s *Set) EvictIdle(now time.Time) {
	if s.cfg.IdleEvict <= 0 {
		return
	}
	var spare map[pki.Identity]bool
	if s.cfg.Keep != nil {
		spare = s.cfg.Keep()
	}
	for _, p := range idlePeers(s.Snapshot(), now.Add(-s.cfg.IdleEvict).UnixNano(), spare) {
		s.Counters.IdleEvicted.Add(1)
		s.cfg.Logger.Debug("closing idle connection", "peer", p.ID.Short())
		p.Conn.CloseWithError(CodeNormal, "idle")
	}
}
