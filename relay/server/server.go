// Package server is the relay side of the relay protocol: the table of
// sessions a relay has agreed to carry, their limits, and the forwarder that
// passes CRLY frames between the two registered UDP addresses of each
// session. It forwards whole frames unchanged and never looks past the CRLY
// header, so the end-to-end QUIC connection stays end-to-end.
//
// Setting up a session (the MsgConnect / MsgIncoming exchange over the
// authenticated connection) is the node's job; it calls Open once both
// sides are known and UpdateAddr when a peer's authenticated address
// changes. Forward runs on the socket's read loop and allocates nothing.
//
// The package imports pki, relay, wire (the CRLY header), internal/ratelimit
// and the standard library only.
// It is separate from relay so that clients do not link it.
package server

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/internal/ratelimit"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
	"github.com/korium/korium-tun/wire"
)

// Defaults, as in the reference.
const (
	DefaultMaxSessions = 10_000
	DefaultMaxPerIP    = 50
	DefaultIdleTimeout = 2 * time.Minute
	DefaultMaxBytes    = 16 << 30
	DefaultRate        = 125_000_000 // bytes/s: 1 Gbit/s
)

// Config sets the relay's limits. A zero field means its default.
type Config struct {
	// MaxSessions caps the sessions open at once. Default 10,000.
	MaxSessions int
	// MaxPerIP caps the sessions open at once per requester IP address.
	// Default 50.
	MaxPerIP int
	// IdleTimeout closes a session that forwarded nothing for this long.
	// Default 2 minutes.
	IdleTimeout time.Duration
	// MaxBytes caps the bytes (whole frames) one session may forward; the
	// frame that would pass it is dropped and the session closed.
	// Default 16 GiB.
	MaxBytes uint64
	// Rate caps a session's forwarded bytes per second with a token bucket
	// holding one second's worth; frames over it are dropped and counted.
	// A frame larger than Rate never passes. Default 125,000,000
	// (1 Gbit/s).
	Rate int64
}

// DefaultConfig returns the configuration with every default filled in.
func DefaultConfig() Config {
	return Config{
		MaxSessions: DefaultMaxSessions,
		MaxPerIP:    DefaultMaxPerIP,
		IdleTimeout: DefaultIdleTimeout,
		MaxBytes:    DefaultMaxBytes,
		Rate:        DefaultRate,
	}
}

// Validate reports the first field that no default can fix.
func (c Config) Validate() error {
	switch {
	case c.MaxSessions < 0:
		return fmt.Errorf("relay/server: Config.MaxSessions = %d, want >= 0", c.MaxSessions)
	case c.MaxPerIP < 0:
		return fmt.Errorf("relay/server: Config.MaxPerIP = %d, want >= 0", c.MaxPerIP)
	case c.IdleTimeout < 0:
		return fmt.Errorf("relay/server: Config.IdleTimeout = %v, want >= 0", c.IdleTimeout)
	case c.Rate < 0:
		return fmt.Errorf("relay/server: Config.Rate = %d, want >= 0", c.Rate)
	}
	return nil
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxSessions == 0 {
		c.MaxSessions = d.MaxSessions
	}
	if c.MaxPerIP == 0 {
		c.MaxPerIP = d.MaxPerIP
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = d.IdleTimeout
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = d.MaxBytes
	}
	if c.Rate == 0 {
		c.Rate = d.Rate
	}
	return c
}

// Sender writes a frame as one UDP datagram to dst. The relay's socket
// implements it. It must not keep frame after it returns.
type Sender interface {
	SendRelay(frame []byte, dst netip.AddrPort) error
}

// Reasons Open refuses a session. Each is a sentinel for errors.Is.
var (
	// ErrTooManySessions: Config.MaxSessions sessions are open.
	ErrTooManySessions = errors.New("relay/server: session limit reached")
	// ErrTooManyPerIP: the requester's IP holds Config.MaxPerIP sessions.
	ErrTooManyPerIP = errors.New("relay/server: per-IP session limit reached")
	// ErrSelf: requester and target are the same identity, or one is zero.
	ErrSelf = errors.New("relay/server: requester and target must be two distinct identities")
	// ErrAddr: an endpoint address names no peer, or both endpoints share
	// one address (frames from it could not be told apart).
	ErrAddr = errors.New("relay/server: invalid endpoint address")
)

// Stats is a snapshot of the relay's counters.
type Stats struct {
	Sessions int    `json:"sessions"` // open now
	Opened   uint64 `json:"opened"`   // sessions opened since New, replacements included
	Replaced uint64 `json:"replaced"` // sessions closed because the same pair opened a new one
	Expired  uint64 `json:"expired"`  // sessions closed by Expire
	Closed   uint64 `json:"closed"`   // sessions closed by CloseSession

	RefusedSessions uint64 `json:"refused_sessions"` // Open: ErrTooManySessions
	RefusedPerIP    uint64 `json:"refused_per_ip"`   // Open: ErrTooManyPerIP
	RefusedSelf     uint64 `json:"refused_self"`     // Open: ErrSelf
	RefusedAddr     uint64 `json:"refused_addr"`     // Open: ErrAddr

	ForwardedFrames uint64 `json:"forwarded_frames"`
	ForwardedBytes  uint64 `json:"forwarded_bytes"`

	DropWrongSource uint64 `json:"drop_wrong_source"` // frame for a session, from neither endpoint
	DropRate        uint64 `json:"drop_rate"`         // over the session's Rate
	DropBytes       uint64 `json:"drop_bytes"`        // would pass MaxBytes; the session was closed
	DropSend        uint64 `json:"drop_send"`         // Sender failed
	Unknown         uint64 `json:"unknown_session"`   // CRLY frame for no session of ours (Forward returned false)
}

// Server is a relay's session table and forwarder. It is safe for
// concurrent use.
type Server struct {
	cfg    Config
	rate   ratelimit.Rate // Config.Rate bytes a second, one second's worth of burst
	sender Sender

	// mu guards the maps and every session's endpoint addresses. Forward
	// holds it for reading; Open, Expire, UpdateAddr and CloseSession for
	// writing.
	mu       sync.RWMutex
	sessions map[[relay.SessionIDSize]byte]*session
	pairs    map[pair]*session  // one session per unordered identity pair
	perIP    map[netip.Addr]int // open sessions by requester IP

	// Counters, atomic so that Forward and Stats need no write lock.
	opened, replaced, expired, closed                   atomic.Uint64
	refSessions, refPerIP, refSelf, refAddr             atomic.Uint64
	fwdFrames, fwdBytes                                 atomic.Uint64
	dropSrc, dropRate, dropBytes, dropSend, dropUnknown atomic.Uint64
}

// pair names two identities regardless of who asked: lo sorts first.
type pair struct{ lo, hi pki.Identity }

func pairOf(a, b pki.Identity) pair {
	if bytes.Compare(a[:], b[:]) > 0 {
		a, b = b, a
	}
	return pair{a, b}
}

type session struct {
	id    [relay.SessionIDSize]byte
	pair  pair
	reqIP netip.Addr // requester's IP, the key in Server.perIP

	// Guarded by Server.mu: read under its read lock, written under its
	// write lock.
	a, b         pki.Identity   // requester, target
	addrA, addrB netip.AddrPort // their registered UDP addresses

	// mu guards the following fields. Forward takes it under Server.mu's
	// read lock; holders of the write lock may read them without it.
	mu       sync.Mutex
	lastSeen int64            // unix ns of the last forwarded frame (or of Open)
	sent     uint64           // bytes forwarded
	bucket   ratelimit.Bucket // of Server.rate; starts full
	dead     bool             // byte cap reached; removal pending
}

// New returns a relay server that sends through s. Zero fields of cfg take
// their defaults; New panics if cfg.Validate fails or s is nil, both
// programming errors (validate flag-derived configurations first).
func New(cfg Config, s Sender) *Server {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	if s == nil {
		panic("relay/server: nil Sender")
	}
	cfg = cfg.withDefaults()
	return &Server{
		cfg:      cfg,
		rate:     ratelimit.PerSecond(cfg.Rate),
		sender:   s,
		sessions: make(map[[relay.SessionIDSize]byte]*session),
		pairs:    make(map[pair]*session),
		perIP:    make(map[netip.Addr]int),
	}
}

// Open registers a session between requester, at requesterAddr, and
// target, at targetAddr, and returns its random ID. The addresses must be
// the authenticated ones the node holds for the two peers. A session
// between the same two identities (in either direction) is replaced. Open
// fails with ErrSelf, ErrAddr, ErrTooManySessions or ErrTooManyPerIP; the
// per-IP limit counts the requester's IP.
func (s *Server) Open(requester, target pki.Identity, requesterAddr, targetAddr netip.AddrPort, now time.Time) ([16]byte, error) {
	var id [relay.SessionIDSize]byte
	if requester == target || requester.IsZero() || target.IsZero() {
		s.refSelf.Add(1)
		return id, ErrSelf
	}
	requesterAddr, targetAddr = relay.Unmap(requesterAddr), relay.Unmap(targetAddr)
	if !relay.ValidAddr(requesterAddr) || !relay.ValidAddr(targetAddr) || requesterAddr == targetAddr {
		s.refAddr.Add(1)
		return id, ErrAddr
	}
	p := pairOf(requester, target)
	ip := requesterAddr.Addr()
	ns := now.UnixNano()

	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.pairs[p]
	// The session being replaced frees its slot and its IP's slot.
	total, fromIP := len(s.sessions), s.perIP[ip]
	if old != nil {
		total--
		if old.reqIP == ip {
			fromIP--
		}
	}
	if total >= s.cfg.MaxSessions {
		s.refSessions.Add(1)
		return id, ErrTooManySessions
	}
	if fromIP >= s.cfg.MaxPerIP {
		s.refPerIP.Add(1)
		return id, ErrTooManyPerIP
	}
	for {
		rand.Read(id[:]) // never fails (crypto/rand contract since Go 1.24)
		if s.sessions[id] == nil {
			break
		}
	}
	if old != nil {
		s.removeLocked(old)
		s.replaced.Add(1)
	}
	ss := &session{
		id: id, pair: p, reqIP: ip,
		a: requester, b: target, addrA: requesterAddr, addrB: targetAddr,
		lastSeen: ns,
	}
	s.sessions[id] = ss
	s.pairs[p] = ss
	s.perIP[ip]++
	s.opened.Add(1)
	return id, nil
}

// removeLocked deletes ss from every map. s.mu must be held for writing.
func (s *Server) removeLocked(ss *session) {
	if s.sessions[ss.id] != ss {
		return
	}
	delete(s.sessions, ss.id)
	if s.pairs[ss.pair] == ss {
		delete(s.pairs, ss.pair)
	}
	if n := s.perIP[ss.reqIP] - 1; n > 0 {
		s.perIP[ss.reqIP] = n
	} else {
		delete(s.perIP, ss.reqIP)
	}
}

// Forward handles a datagram read from the relay's socket. It returns false
// if frame is not a CRLY frame for one of this relay's sessions; the caller
// then treats it as its own. Otherwise it returns true: the frame was sent
// unchanged to the session's other endpoint, or dropped and counted because
// src is neither endpoint, the session is over its rate, or the frame would
// pass the session's byte cap (which also closes the session).
//
// Forward allocates nothing and takes only read locks on the table.
func (s *Server) Forward(frame []byte, src netip.AddrPort, now time.Time) bool {
	sid, ok := wire.RelaySession(frame)
	if !ok {
		return false
	}
	src = relay.Unmap(src)
	n := uint64(len(frame))

	s.mu.RLock()
	ss := s.sessions[sid]
	if ss == nil {
		s.mu.RUnlock()
		s.dropUnknown.Add(1)
		return false
	}
	var dst netip.AddrPort
	switch src {
	case ss.addrA:
		dst = ss.addrB
	case ss.addrB:
		dst = ss.addrA
	default:
		s.mu.RUnlock()
		s.dropSrc.Add(1)
		return true
	}
	ns := now.UnixNano()
	ss.mu.Lock()
	if ss.dead {
		ss.mu.Unlock()
		s.mu.RUnlock()
		s.dropBytes.Add(1)
		return true
	}
	if !s.rate.Take(&ss.bucket, now, int64(n)) {
		ss.mu.Unlock()
		s.mu.RUnlock()
		s.dropRate.Add(1)
		return true
	}
	if ss.sent+n > s.cfg.MaxBytes || ss.sent+n < ss.sent {
		ss.dead = true
		ss.mu.Unlock()
		s.mu.RUnlock()
		s.dropBytes.Add(1)
		s.mu.Lock()
		s.removeLocked(ss)
		s.mu.Unlock()
		return true
	}
	ss.sent += n
	ss.lastSeen = ns
	ss.mu.Unlock()
	s.mu.RUnlock()

	// Send outside the locks: a slow socket must not stall Open or Expire.
	if s.sender.SendRelay(frame, dst) != nil {
		s.dropSend.Add(1)
		return true
	}
	s.fwdFrames.Add(1)
	s.fwdBytes.Add(n)
	return true
}

// UpdateAddr records that id's authenticated UDP address is now addr (NAT
// rebinding) in every session id takes part in. An invalid addr, or one
// that would give a session the same address at both ends, is ignored for
// that session.
func (s *Server) UpdateAddr(id pki.Identity, addr netip.AddrPort) {
	addr = relay.Unmap(addr)
	if !relay.ValidAddr(addr) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// A full scan, not an index by identity: rebinding is rare and the
	// table is capped at MaxSessions, while an index would be one more map
	// to keep consistent on every Open and removal.
	for _, ss := range s.sessions {
		switch id {
		case ss.a:
			if addr != ss.addrB {
				ss.addrA = addr
			}
		case ss.b:
			if addr != ss.addrA {
				ss.addrB = addr
			}
		}
	}
}

// CloseSession removes the session with this ID, if there is one.
func (s *Server) CloseSession(id [16]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.sessions[id]; ss != nil {
		s.removeLocked(ss)
		s.closed.Add(1)
	}
}

// Expire removes the sessions that forwarded nothing for IdleTimeout
// before now, and returns how many it removed. The node calls it every few
// seconds.
func (s *Server) Expire(now time.Time) int {
	cutoff := now.Add(-s.cfg.IdleTimeout).UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ss := range s.sessions {
		// The write lock excludes Forward, the only writer of lastSeen.
		if ss.lastSeen <= cutoff || ss.dead {
			s.removeLocked(ss)
			n++
		}
	}
	s.expired.Add(uint64(n))
	return n
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.RLock()
	open := len(s.sessions)
	s.mu.RUnlock()
	return Stats{
		Sessions:        open,
		Opened:          s.opened.Load(),
		Replaced:        s.replaced.Load(),
		Expired:         s.expired.Load(),
		Closed:          s.closed.Load(),
		RefusedSessions: s.refSessions.Load(),
		RefusedPerIP:    s.refPerIP.Load(),
		RefusedSelf:     s.refSelf.Load(),
		RefusedAddr:     s.refAddr.Load(),
		ForwardedFrames: s.fwdFrames.Load(),
		ForwardedBytes:  s.fwdBytes.Load(),
		DropWrongSource: s.dropSrc.Load(),
		DropRate:        s.dropRate.Load(),
		DropBytes:       s.dropBytes.Load(),
		DropSend:        s.dropSend.Load(),
		Unknown:         s.dropUnknown.Load(),
	}
}
