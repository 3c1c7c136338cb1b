package peers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// dialCall is one dial in progress; others wanting the same peer wait.
type dialCall struct {
	done   chan struct{}
	err    error                   // set before done is closed
	cancel context.CancelCauseFunc // fails the dial (the peer refused it)
	paths  int                     // addresses and relays it races
}

// Dial runs the handshake with id over every path the socket has for it
// (addr only names the attempt in errors), unless a connection exists or a
// dial to id is already running, in which case it waits for that one: two
// dials to one peer would only race and replace each other. If the dial it
// waited for failed, it tries once itself (it may know more paths). paths
// is how many addresses and relays the dial races (see AbortDial).
func (s *Set) Dial(ctx context.Context, id pki.Identity, addr netip.AddrPort, paths int) error {
	if id == s.cfg.Self {
		return errors.New("peers: that is us")
	}
	var c *dialCall
	for waited := 0; ; waited++ {
		if s.Peer(id) != nil {
			return nil
		}
		var running *dialCall
		dctx, cancel := context.WithCancelCause(ctx)
		if !s.do(func() {
			if running = s.dials[id]; running == nil {
				c = &dialCall{done: make(chan struct{}), cancel: cancel, paths: paths}
				s.dials[id] = c
			}
		}) {
			cancel(nil)
			return ErrClosed
		}
		if running == nil {
			c.err = s.dial(dctx, id, addr)
			cancel(nil)
			s.do(func() { delete(s.dials, id) })
			close(c.done)
			return c.err
		}
		cancel(nil)
		select {
		case <-running.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if s.Peer(id) != nil {
			return nil
		}
		if waited > 0 {
			return running.err
		}
		// That dial failed; ours may know more (relays), so try once.
	}
}

// AbortDial fails a dial to id in progress with err (the peer refused it).
// Unless always, only a dial racing a single path is failed: one of
// several addresses answering for someone else says nothing about the
// others.
func (s *Set) AbortDial(id pki.Identity, always bool, err error) {
	s.do(func() {
		if c := s.dials[id]; c != nil && (always || c.paths == 1) {
			c.cancel(err)
		}
	})
}

// dial runs one handshake and installs its connection.
func (s *Set) dial(ctx context.Context, id pki.Identity, addr netip.AddrPort) error {
	virt := net.UDPAddrFromAddrPort(smartaddr.Virtual(id))
	tlsConf, err := s.cfg.ClientTLS(id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	conn, err := s.cfg.Transport.Dial(ctx, virt, tlsConf, s.cfg.QUIC)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && cause != ctx.Err() {
			return cause // AbortDial's: it names the peer and the address
		}
		if errors.Is(err, context.DeadlineExceeded) && s.ctx.Err() == nil {
			// A node drops hellos addressed to another identity, so a wrong
			// identity looks like silence.
			return fmt.Errorf("peers: dial %s at %s: no handshake answer within %v (the node there is down, unreachable, or is not %s): %w",
				id.Short(), addr, s.cfg.HandshakeTimeout, id, err)
		}
		return fmt.Errorf("peers: dial %s at %s: %w", id.Short(), addr, err)
	}
	_, err = s.install(conn, id, true)
	return err
}

// acceptLoop installs every connection the listener accepts, each checked
// in a goroutine of its own (the handshake is done; install is quick).
func (s *Set) acceptLoop(ln *quic.Listener) {
	for {
		conn, err := ln.Accept(s.ctx)
		if err != nil {
			return
		}
		s.goRun(func() {
			id, err := pki.PeerIdentity(conn.ConnectionState().TLS)
			if err != nil {
				s.cfg.Refused(RefusedBadCert, id, netip.AddrPort{}, fmt.Sprintf("refused a connection without an identity: %v", err))
				conn.CloseWithError(CodeRefused, "no identity")
				return
			}
			s.install(conn, id, false)
		})
	}
}
