package peers

import (
	"iter"
	"net/netip"
	"sync/atomic"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
)

// Application error codes on overlay QUIC connections.
const (
	CodeNormal    quic.ApplicationErrorCode = 0
	CodeDuplicate quic.ApplicationErrorCode = 1 // another connection to the same peer won
	CodeRefused   quic.ApplicationErrorCode = 2 // identity does not own its address, too many peers, not admitted
)

// Contact names a peer and where to reach it.
type Contact struct {
	Identity pki.Identity
	Addr     netip.AddrPort
	// Relays forward to the peer when it is behind a NAT (from its
	// contact record); sessions through them race Addr.
	Relays []pki.Identity
}

// String returns the bootstrap form IDENTITY@HOST:PORT.
func (c Contact) String() string { return c.Identity.String() + "@" + c.Addr.String() }

// Peer is one installed connection. Its fields are set before the peer is
// published and never change afterwards, except the atomic counters and
// its last use.
type Peer struct {
	ID          pki.Identity
	Addr        netip.Addr // the peer's SmartAddr
	Conn        *quic.Conn
	Outbound    bool           // we dialed it
	Incarnation string         // the peer certificate's serial: new on every start
	Nonce       uint64         // the peer's proof-of-work nonce, from its certificate
	SPIFFEID    string         // the SPIFFE ID in its certificate (checked against its key), or ""
	Since       time.Time      // when it was installed
	RealAddr    netip.AddrPort // where its handshake came from (invalid: relayed or unknown)
	// Routable peers carry IP packets: they are in the snapshot's address
	// table. Config.Admit may clear it (an enrollee of a members-only
	// network only asks for a certificate).
	Routable bool
	// Ext is the host's own data about the peer (the overlay: its
	// membership), set by Config.Admit. peers never looks at it.
	Ext any

	// Traffic counters, kept by the datapath. TxDropped counts packets
	// its send queue lost (full: the peer is slow or dead).
	TxBytes, TxPackets, RxBytes, RxPackets, TxDropped atomic.Uint64

	lastUsed atomic.Int64  // clock value when a packet or request last used it
	clock    *atomic.Int64 // its set's coarse clock
}

// Touch marks the peer as used now (a packet or a request): idle eviction
// and the peer limit spare recently used peers. It costs two atomic
// operations (the set's clock is coarse, refreshed by its loop).
func (p *Peer) Touch() { p.lastUsed.Store(p.clock.Load()) }

// LastUsed returns when the peer was last touched, at the set clock's
// resolution (a quarter of a second).
func (p *Peer) LastUsed() time.Time { return time.Unix(0, p.lastUsed.Load()) }

// Snapshot is an immutable view of the peer set, replaced as a whole
// whenever the set changes.
type Snapshot struct {
	byID    map[pki.Identity]*Peer
	byAddr  map[netip.Addr]*Peer // routable peers only
	desired map[pki.Identity]bool
}

var emptySnapshot = &Snapshot{}

// Peer returns the connection to id, or nil.
func (s *Snapshot) Peer(id pki.Identity) *Peer { return s.byID[id] }

// ByAddr returns the routable peer that owns the overlay address a, or nil.
// It allocates nothing.
func (s *Snapshot) ByAddr(a netip.Addr) *Peer { return s.byAddr[a] }

// Len is the number of peers.
func (s *Snapshot) Len() int { return len(s.byID) }

// All yields every peer, in no particular order.
func (s *Snapshot) All() iter.Seq[*Peer] {
	return func(yield func(*Peer) bool) {
		for _, p := range s.byID {
			if !yield(p) {
				return
			}
		}
	}
}

// Kept reports whether id is a contact the set keeps connected (a
// bootstrap peer).
func (s *Snapshot) Kept(id pki.Identity) bool { return s.desired[id] }

// testClock is the clock of peers made outside a set (NewSnapshot).
var testClock atomic.Int64

// NewSnapshot returns a snapshot of ps, for tests of code that routes by
// one (the datapath's) without a set and its connections. Peers made
// outside a set get a clock that stays at zero.
func NewSnapshot(ps ...*Peer) *Snapshot {
	s := &Snapshot{byID: make(map[pki.Identity]*Peer), byAddr: make(map[netip.Addr]*Peer)}
	for _, p := range ps {
		if p.clock == nil {
			p.clock = &testClock
		}
		s.byID[p.ID] = p
		if p.Routable {
			s.byAddr[p.Addr] = p
		}
	}
	return s
}
