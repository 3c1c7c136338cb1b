// Package nat is the node's NAT traversal: the reference's configure_nat,
// SmartConnect (a handshake raced over a peer's direct addresses and relay
// sessions), hole punching, and the node's side of the relay protocol
// (relay.Msg* over rpc.ProtoRelay).
//
// A node asks its bootstrap peers which address they see it at and to send
// a packet back from a socket we never sent to (dial-back). If one arrives, unsolicited
// packets reach us: we are public. Otherwise we pick the public ones among
// them as relays, keep connections to them, and publish them in our contact
// record (through Config.OnChange). A peer that wants to reach us asks one
// of our relays for a session (MsgConnect, answered by relay/server); the
// relay opens it and tells us (MsgIncoming), and both ends add the session
// as a path in the socket. The QUIC handshake races over every direct
// address and the relay at once. Once connected, the two ends swap
// candidate addresses (MsgPunch) and probe them at the same time; when a
// direct path proves itself, the socket moves the traffic there without a
// new connection.
//
// Decisions are pure functions (policy.go) with table tests; the
// Traversal's loop owns what configure_nat found and when each relayed
// peer was last punched, and publishes the former as an immutable
// snapshot. Goroutines, all stopped by Close, which waits for them: the
// loop, one configure_nat round at a time (its helper calls joined within
// it), the punches it starts, and at most MaxDialBacks dial-backs.
//
// Mesh-first relaying (mesh.go, signal.go): any public peer may relay;
// when a target's published relays do not answer, or a relayed peer's relay
// leaves, mesh relays are asked, signalled to the target through the gossip
// mesh (Config.Signal); a node whose relay left picks another at once
// (repick.go).
//
// nat imports peers, smartsock (path types), relay, relay/client,
// relay/server, rpc, internal/addrpolicy, internal/ratelimit and
// internal/group: never the
// datapath, the DHT, gossipsub or the overlay.
package nat

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/internal/group"
	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/smartsock"
)

// Sock is what NAT traversal asks of the node's socket (smartsock.Conn).
type Sock interface {
	Path(id pki.Identity) (smartsock.PathInfo, bool)
	RelayedPeers() []pki.Identity // the peers Path reports Relayed; shared, read only
	AddPeer(id pki.Identity, real netip.AddrPort) (*net.UDPAddr, error)
	AddRelayPath(id, relayID pki.Identity, relayAddr netip.AddrPort, session [16]byte) *net.UDPAddr
	Paths(id pki.Identity) ([]smartsock.PathStatus, uint64)
	Punch(id pki.Identity, addrs []netip.AddrPort) int
	ExpectDialBack(nonce uint64) (<-chan struct{}, error)
	CancelDialBack(nonce uint64)
}

// Config configures a Traversal. Peers, Sock and Call are required.
type Config struct {
	Self  pki.Identity
	Peers *peers.Set
	Sock  Sock
	// Call sends a relay request to a connected peer (never dialing).
	Call func(ctx context.Context, to pki.Identity, req []byte) ([]byte, error)
	// Relay is our relay server; nil when we do not relay for others.
	Relay *server.Server
	// MayRelayTo returns nil when the relay may carry sessions to p, else
	// why not (nil func: every routable peer).
	MayRelayTo func(p *peers.Peer) error
	// Reach connects to a relay we know only by identity (by its contact
	// record).
	Reach func(ctx context.Context, id pki.Identity) error
	// Advertised returns the addresses we advertise.
	Advertised func() []netip.AddrPort
	// Signal sends a mesh relay signal (signal.go) to target through the
	// gossip mesh (gossipsub's SendSignal); nil: no mesh signalling (mesh
	// relays are still asked, and allow only our own attempts).
	Signal func(target pki.Identity, payload []byte) error
	// Spares returns public peers the host knows (the DHT routing table:
	// nodes behind NAT never enter it), candidates for mesh relays and for
	// a relay when ours leaves.
	Spares func() []peers.Contact
	// Loopback: the node listens on loopback, so a peer's word may make
	// it send to loopback addresses (tests on one host).
	Loopback bool
	// Seed: the node has no bootstrap peers. Nobody can check it, and it
	// is public by definition.
	Seed bool
	// OnChange is called when configure_nat's verdict changed, before
	// Status reports it (so the host's record is updated by the time a
	// caller sees Checked).
	OnChange func(Status)
	// IgnoreDialBacks makes configure_nat ignore dial-backs, so a test on
	// one host can play a node behind NAT.
	IgnoreDialBacks bool
	// Logger receives NAT events; nil discards.
	Logger *slog.Logger
}

// Timing of NAT traversal.
const (
	dialBackWait  = 1500 * time.Millisecond
	relayCallTime = 3 * time.Second
	// relaySetupTime bounds asking a target's published relays for
	// sessions before mesh relays are asked (a dead relay costs a dial).
	relaySetupTime = 2 * time.Second
	punchRetry     = 30 * time.Second // a relayed peer is punched again this often
	relayExpiry    = 5 * time.Second  // how often the relay's idle sessions expire
	tick           = 250 * time.Millisecond
)

// MaxDialBacks bounds the dial-backs with copies still to send (each for
// about 200 ms, ~80 bytes; dialback.go): a bootstrap node's 1,000 peers
// start their rounds together, and a refused one answers FlagNoDialBack.
const MaxDialBacks = 256

// Status is what configure_nat found.
type Status struct {
	Public   bool
	Checked  bool
	Observed []netip.AddrPort // our address as helpers saw it
	Relays   []pki.Identity   // the relays we publish
	// Relayers are the helpers that said they relay for others (our
	// relays are among them): candidates for mesh relaying.
	Relayers []pki.Identity
}

// Counters count NAT traversal events, by reason.
type Counters struct {
	RelayRefused    atomic.Uint64 // a session offered by a node that is not our relay
	Punches         atomic.Uint64
	PunchRefused    atomic.Uint64 // candidates (or a dial-back) addrpolicy refused
	DialBackBusy    atomic.Uint64
	DialAddrRefused atomic.Uint64 // dial addresses addrpolicy refused
}

// Traversal is the node's NAT traversal. Create it with New; Close stops it.
type Traversal struct {
	cfg      Config
	Counters Counters
	Mesh     MeshCounters

	mesh mesh // mesh.go

	status atomic.Pointer[Status] // published by the loop; never modified
	dialer *dialBacker            // the dial-backs we owe (dialback.go)

	ctx    context.Context
	cancel context.CancelFunc
	group  group.Group // the loop, configure_nat rounds, punches, dial-backs
	once   sync.Once

	checked chan Status // configure_nat rounds report to the loop

	// Owned by the loop.
	lastPunch map[*peers.Peer]time.Time
}

// New starts NAT traversal: its loop runs configure_nat once a bootstrap
// peer is connected and again later (recheck.go), punches relayed peers, and
// expires the relay's idle sessions.
func New(cfg Config) *Traversal {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Advertised == nil {
		cfg.Advertised = func() []netip.AddrPort { return nil }
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func(Status) {}
	}
	t := &Traversal{
		cfg:       cfg,
		dialer:    newDialBacker(),
		checked:   make(chan Status),
		lastPunch: make(map[*peers.Peer]time.Time),
		mesh:      newMesh(),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	st := &Status{}
	if cfg.Seed {
		st = &Status{Checked: true, Public: true}
	}
	t.status.Store(st)
	t.goRun(t.run)
	t.goRun(func() { t.dialer.run(t.ctx) })
	return t
}

// goRun runs f as one of the Traversal's goroutines, unless Close began.
func (t *Traversal) goRun(f func()) bool { return t.group.Go(f) }

// Close stops every goroutine of the Traversal and waits for them.
func (t *Traversal) Close() {
	t.once.Do(func() {
		t.cancel()
		t.group.Wait()
	})
}

// Status returns what configure_nat found. Its slices are the caller's.
func (t *Traversal) Status() Status {
	s := *t.status.Load()
	s.Observed, s.Relays, s.Relayers = slices.Clone(s.Observed), slices.Clone(s.Relays), slices.Clone(s.Relayers)
	return s
}

// DialBacks is how many dial-backs are in flight.
func (t *Traversal) DialBacks() int { return t.dialer.pending() }

func (t *Traversal) run() {
	tk := time.NewTicker(tick)
	defer tk.Stop()
	var lastExpire, lastRepick time.Time
	var rc recheck
	checking := false
	repickWait := repickEvery // doubles while rounds find no relay
	for {
		select {
		case <-t.ctx.Done():
			return
		case v := <-t.checked:
			checking = false
			if v.Checked && !v.Public && len(v.Relays) == 0 {
				repickWait = min(2*repickWait, natRecheck)
			} else {
				repickWait = repickEvery
			}
			if v.Checked {
				rc.checked(t.status.Load(), &v, t.cfg.Advertised(), time.Now())
				t.status.Store(&v)
			}
		case now := <-tk.C:
			if !t.cfg.Seed && !checking && (!t.status.Load().Checked || rc.due(now, t.cfg.Advertised)) {
				checking = true
				t.goRun(t.configureNAT)
			}
			if !checking && now.Sub(lastRepick) > repickWait && t.relayLost() {
				// Our relay left: choose another at once, not at the
				// next recheck.
				checking, lastRepick = true, now
				t.goRun(t.repick)
			}
			t.punchRelayed(now)
			t.repairRelayed(now)
			if now.Sub(lastExpire) > relayExpiry {
				if t.cfg.Relay != nil {
					t.cfg.Relay.Expire(now)
				}
				t.expireAllowed(now)
				lastExpire = now
			}
		}
	}
}

// relayers returns the helpers known to relay for others.
func (t *Traversal) relayers() []pki.Identity { return t.status.Load().Relayers }

// isMyRelay reports whether id is one of the relays we publish.
func (t *Traversal) isMyRelay(id pki.Identity) bool {
	return slices.Contains(t.status.Load().Relays, id)
}

// directAddr returns where a connected peer's packets come from directly.
func (t *Traversal) directAddr(id pki.Identity) (netip.AddrPort, bool) {
	pi, ok := t.cfg.Sock.Path(id)
	if !ok || pi.Relayed || !pi.Current.IsValid() {
		return netip.AddrPort{}, false
	}
	return pi.Current, true
}

// DirectAddr returns where a connected peer's packets come from directly
// (false when it is relayed or unknown).
func (t *Traversal) DirectAddr(id pki.Identity) (netip.AddrPort, bool) { return t.directAddr(id) }

// candidateAddrs are the addresses a peer may punch toward.
func (t *Traversal) candidateAddrs() []netip.AddrPort {
	return candidates(t.status.Load().Observed, t.cfg.Advertised())
}
