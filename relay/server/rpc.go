package server

import (
	"context"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
)

// The relay's RPC side: a peer asks for a session to a target (MsgConnect);
// the relay checks that both reach it directly, opens the session, tells
// the target (MsgIncoming) and answers with the session ID once the target
// accepted. The node dispatches relay messages by type and hands MsgConnect
// here.

// Host is what the RPC side needs from the node it runs in.
type Host interface {
	// DirectAddr returns where id's authenticated packets reach us on a
	// direct path; false when id is not connected or only through a
	// relay.
	DirectAddr(id pki.Identity) (netip.AddrPort, bool)
	// Relayable returns nil when target is connected to us and may be
	// relayed to, else why not (said to the requester).
	Relayable(target pki.Identity) error
	// CallRelay sends a relay request to a connected peer and returns its
	// answer.
	CallRelay(ctx context.Context, to pki.Identity, req []byte) ([]byte, error)
}

// RefusedError is a request the relay declines; the node answers it as a
// refusal that carries Reason.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return e.Reason }

func refuse(reason string) error { return &RefusedError{reason} }

// incomingCallTime bounds the MsgIncoming call to the target.
const incomingCallTime = 3 * time.Second

// HandleConnect answers a MsgConnect request from `from`: it opens a
// session to the target if both reach us directly and the table has room,
// and returns the response carrying its ID once the target accepted it.
// Errors other than a malformed request are *RefusedError.
func (s *Server) HandleConnect(ctx context.Context, h Host, from pki.Identity, req []byte) ([]byte, error) {
	target, err := relay.ParseConnectReq(req)
	if err != nil {
		return nil, err
	}
	if err := h.Relayable(target); err != nil {
		return nil, refuse(err.Error())
	}
	fa, ok1 := h.DirectAddr(from)
	ta, ok2 := h.DirectAddr(target)
	if !ok1 || !ok2 {
		return nil, refuse("an endpoint has no direct path to the relay")
	}
	sid, err := s.Open(from, target, fa, ta, time.Now())
	if err != nil {
		return nil, refuse(err.Error())
	}
	cctx, cancel := context.WithTimeout(ctx, incomingCallTime)
	defer cancel()
	resp, err := h.CallRelay(cctx, target, relay.AppendIncomingReq(nil, relay.Incoming{Session: sid, From: from}))
	if err == nil {
		err = relay.ParseIncomingResp(resp)
	}
	if err != nil {
		s.CloseSession(sid)
		return nil, refuse("the target refused: " + err.Error())
	}
	return relay.AppendConnectResp(nil, sid), nil
}
