package nat

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/rpc"
)

// HandleRelay answers a connected peer's rpc.ProtoRelay request: where we
// see it (and a dial-back), a session it asks us to relay (relay/server),
// a session one of our relays offers us, or its punch candidates.
func (t *Traversal) HandleRelay(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
	typ, err := relay.Type(req)
	if err != nil {
		return nil, err
	}
	switch typ {
	case relay.MsgObserve:
		return t.handleObserve(from, req)
	case relay.MsgConnect:
		if t.cfg.Relay == nil {
			return nil, rpc.RefuseError("this node does not relay")
		}
		if !t.allowConnect(from) {
			return nil, rpc.RefuseError("too many session requests")
		}
		resp, err := t.cfg.Relay.HandleConnect(ctx, relayHost{t}, from, req)
		var re *server.RefusedError
		if errors.As(err, &re) {
			return nil, rpc.RefuseError(re.Reason)
		}
		return resp, err
	case relay.MsgIncoming:
		in, err := relay.ParseIncomingReq(req)
		if err != nil {
			return nil, err
		}
		raddr, ok := t.directAddr(from)
		// takeAllowed first: it marks a mesh attempt's session as come.
		if !ok || in.From == t.cfg.Self || !(t.takeAllowed(in.From, from, time.Now()) || t.isMyRelay(from)) {
			// A relay we did not choose may offer a session only from a
			// peer that it and we named in a mesh attempt (mesh.go).
			t.Counters.RelayRefused.Add(1)
			return nil, rpc.RefuseError("you are not one of my relays")
		}
		t.cfg.Sock.AddRelayPath(in.From, from, raddr, in.Session)
		t.cfg.Logger.Info("relay session offered", "peer", in.From.Short(), "relay", from.Short())
		return relay.AppendIncomingResp(nil), nil
	case relay.MsgPunch:
		var buf [relay.MaxCandidates]netip.AddrPort
		theirs, err := relay.ParsePunch(buf[:0], req)
		if err != nil {
			return nil, err
		}
		t.cfg.Sock.Punch(from, t.Punchable(theirs))
		t.Counters.Punches.Add(1)
		return relay.AppendPunch(nil, t.candidateAddrs())
	}
	return nil, rpc.RefuseError(fmt.Sprintf("unknown relay message %d", typ))
}

// handleObserve tells from where we see it and sends it a dial-back.
func (t *Traversal) handleObserve(from pki.Identity, req []byte) ([]byte, error) {
	nonce, err := relay.ParseObserveReq(req)
	if err != nil {
		return nil, err
	}
	addr, ok := t.directAddr(from)
	if !ok {
		return nil, rpc.RefuseError("you reach me only through a relay")
	}
	// addr is where from's authenticated packets come from, not an
	// address it named; a loopback source is a process on this host that
	// we already talk to. Anything else addrpolicy refuses (link-local,
	// broadcast...) gets no dial-back.
	if !addrpolicy.Dialable(addr, true) {
		t.Counters.PunchRefused.Add(1)
		return nil, rpc.RefuseError("no dial-back to that address")
	}
	flags := observeFlags(t.cfg.Relay != nil, t.status.Load().Public)
	if !t.dialer.start(addr, nonce) { // bounded: MaxDialBacks wait
		t.Counters.DialBackBusy.Add(1)
		flags |= relay.FlagNoDialBack // else the asker would think itself NATed
	}
	return relay.AppendObserveResp(nil, relay.ObserveResp{Addr: addr, Flags: flags})
}

// Punchable keeps the candidates a peer sent that we may probe (see
// punchable), counting the refused ones. It filters addrs in place.
func (t *Traversal) Punchable(addrs []netip.AddrPort) []netip.AddrPort {
	out, refused := punchable(addrs, t.cfg.Loopback)
	t.Counters.PunchRefused.Add(uint64(refused))
	return out
}

// relayHost is the node as the relay server's RPC side sees it.
type relayHost struct{ t *Traversal }

func (h relayHost) DirectAddr(id pki.Identity) (netip.AddrPort, bool) { return h.t.directAddr(id) }

func (h relayHost) Relayable(target pki.Identity) error {
	p := h.t.cfg.Peers.Peer(target)
	if p == nil {
		return errors.New("the target is not connected to this relay")
	}
	if h.t.cfg.MayRelayTo != nil {
		return h.t.cfg.MayRelayTo(p)
	}
	return nil
}

func (h relayHost) CallRelay(ctx context.Context, to pki.Identity, req []byte) ([]byte, error) {
	return h.t.cfg.Call(ctx, to, req)
}
