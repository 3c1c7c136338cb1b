package peers

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// install makes conn the connection to id, unless an existing one wins
// (see preferNew), after checking that the peer's certificate key owns the
// virtual address quic-go saw (the socket's mapping was only a claim),
// that it speaks datagrams, and that the host admits it. It returns the
// peer that carries id's traffic now.
func (s *Set) install(conn *quic.Conn, id pki.Identity, outbound bool) (*Peer, error) {
	s.Counters.Handshakes.Add(1)
	cs := conn.ConnectionState()
	certID, err := pki.PeerIdentity(cs.TLS)
	ra, _ := conn.RemoteAddr().(*net.UDPAddr)
	realAddr := s.handshakeAddr(id)
	if err != nil || certID != id || ra == nil || !smartaddr.Owns(id, ra.AddrPort().Addr()) {
		s.cfg.Refused(RefusedNotOwner, certID, realAddr, fmt.Sprintf("refused %s…: its identity does not own the address it used", certID.Short()))
		conn.CloseWithError(CodeRefused, "identity does not own its address")
		return nil, fmt.Errorf("peers: peer %s does not own address %v", certID.Short(), conn.RemoteAddr())
	}
	if !cs.SupportsDatagrams.Remote {
		s.cfg.Refused(RefusedNoDatagrams, id, realAddr, fmt.Sprintf("refused %s…: it does not support QUIC datagrams", id.Short()))
		conn.CloseWithError(CodeRefused, "datagrams required")
		return nil, errors.New("peers: peer does not support QUIC datagrams")
	}
	p := &Peer{
		ID:          id,
		Addr:        smartaddr.FromIdentity(id),
		Conn:        conn,
		Outbound:    outbound,
		Incarnation: cs.TLS.PeerCertificates[0].SerialNumber.String(),
		Since:       time.Now(),
		RealAddr:    realAddr,
		Routable:    true,
		clock:       &s.clock,
	}
	p.Nonce, _ = pki.PeerNonce(cs.TLS)
	p.SPIFFEID = pki.PeerSPIFFEID(cs.TLS.PeerCertificates)
	if s.cfg.Admit != nil {
		if err := s.cfg.Admit(p, cs.TLS); err != nil {
			s.cfg.Refused(RefusedAdmission, id, realAddr, fmt.Sprintf("refused %s…: %v", id.Short(), err))
			conn.CloseWithError(CodeRefused, "not admitted")
			return nil, fmt.Errorf("peers: peer %s: %w", id.Short(), err)
		}
	}
	p.Touch()

	var old, evicted *Peer
	full, keptOld := false, false
	if !s.do(func() {
		old = s.peers[id]
		if old == nil && len(s.peers) >= s.maxPeers {
			if evicted = leastRecentlyUsed(s.peers, func(id pki.Identity) bool { return s.desired[id] != nil }); evicted == nil {
				full = true
				return
			}
			delete(s.peers, evicted.ID)
		}
		if old != nil && !preferNew(s.cfg.Self, id, connInfo{old.Outbound, old.Incarnation}, connInfo{outbound, p.Incarnation}) {
			keptOld = true
			return
		}
		s.peers[id] = p
		if d := s.desired[id]; d != nil {
			d.backoff = 0
		}
		s.publish()
	}) {
		conn.CloseWithError(CodeNormal, "node closing")
		return nil, ErrClosed
	}
	switch {
	case full:
		s.cfg.Refused(RefusedPeerLimit, id, realAddr, fmt.Sprintf("refused %s…: the peer limit (%d) is reached and every peer is a bootstrap contact", id.Short(), s.cfg.MaxPeers))
		conn.CloseWithError(CodeRefused, "too many peers")
		return nil, errors.New("peers: peer limit reached")
	case keptOld:
		s.Counters.DuplicateConns.Add(1)
		conn.CloseWithError(CodeDuplicate, "duplicate connection")
		return old, nil
	}
	if old != nil && old.Conn.Context().Err() == nil {
		s.cfg.Replaced(id, old.RealAddr, realAddr)
	}
	if evicted != nil {
		s.Counters.Evicted.Add(1)
		s.cfg.Evicted(evicted)
		evicted.Conn.CloseWithError(CodeNormal, "evicted: peer limit")
	}
	if old != nil {
		s.Counters.DuplicateConns.Add(1)
		old.Conn.CloseWithError(CodeDuplicate, "replaced")
	}
	s.cfg.Up(p)
	s.goRun(func() { s.watch(p) })
	return p, nil
}

func (s *Set) handshakeAddr(id pki.Identity) netip.AddrPort {
	if id == (pki.Identity{}) {
		return netip.AddrPort{}
	}
	return s.cfg.HandshakeAddr(id)
}

// watch waits for p's connection to end, removes p unless it was replaced,
// and tells the host.
func (s *Set) watch(p *Peer) {
	select {
	case <-p.Conn.Context().Done():
	case <-s.ctx.Done():
		return
	}
	current := false
	if !s.do(func() {
		if s.peers[p.ID] == p {
			delete(s.peers, p.ID)
			current = true
			s.publish()
		}
	}) {
		return
	}
	s.cfg.Down(p, current)
}
