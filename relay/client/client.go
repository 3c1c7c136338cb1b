// Package client is the asking side of the relay protocol (relay.Msg*): it
// asks a helper where it sees us (configure_nat), asks a relay for a
// session to a peer behind NAT, and swaps punch candidates with a peer.
// It talks through a Caller, so it needs no connection of its own; the
// node passes one that sends rpc.ProtoRelay requests on its authenticated
// QUIC connections.
package client

import (
	"context"
	"net/netip"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
)

// Caller sends one relay request to a connected peer and returns its
// response (the node: rpc.Call with rpc.ProtoRelay).
type Caller interface {
	CallRelay(ctx context.Context, to pki.Identity, req []byte) ([]byte, error)
}

// Observe asks helper which address it sees us at and to send nonce back
// to that address from a socket we never sent to (the caller waits for it;
// relay.FlagNoDialBack in the answer: none is coming).
func Observe(ctx context.Context, c Caller, helper pki.Identity, nonce uint64) (relay.ObserveResp, error) {
	resp, err := c.CallRelay(ctx, helper, relay.AppendObserveReq(nil, nonce))
	if err != nil {
		return relay.ObserveResp{}, err
	}
	return relay.ParseObserveResp(resp)
}

// Connect asks relayID for a session to target; the relay tells target
// before it answers, so both ends can use the session at once.
func Connect(ctx context.Context, c Caller, relayID, target pki.Identity) ([relay.SessionIDSize]byte, error) {
	resp, err := c.CallRelay(ctx, relayID, relay.AppendConnectReq(nil, target))
	if err != nil {
		return [relay.SessionIDSize]byte{}, err
	}
	return relay.ParseConnectResp(resp)
}

// Punch sends our candidate addresses to peer and returns its own.
func Punch(ctx context.Context, c Caller, peer pki.Identity, mine []netip.AddrPort) ([]netip.AddrPort, error) {
	req, err := relay.AppendPunch(nil, mine)
	if err != nil {
		return nil, err
	}
	resp, err := c.CallRelay(ctx, peer, req)
	if err != nil {
		return nil, err
	}
	return relay.ParsePunch(nil, resp)
}
