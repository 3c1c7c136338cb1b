package client

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
)

// fake answers like a relay and a peer would.
type fake struct{ sid [16]byte }

func (f fake) CallRelay(_ context.Context, to pki.Identity, req []byte) ([]byte, error) {
	t, err := relay.Type(req)
	if err != nil {
		return nil, err
	}
	switch t {
	case relay.MsgObserve:
		if _, err := relay.ParseObserveReq(req); err != nil {
			return nil, err
		}
		return relay.AppendObserveResp(nil, relay.ObserveResp{Addr: netip.MustParseAddrPort("198.18.2.1:7402"), Flags: relay.FlagRelays})
	case relay.MsgConnect:
		if _, err := relay.ParseConnectReq(req); err != nil {
			return nil, err
		}
		return relay.AppendConnectResp(nil, f.sid), nil
	case relay.MsgPunch:
		return relay.AppendPunch(nil, []netip.AddrPort{netip.MustParseAddrPort("198.18.3.1:7403")})
	}
	return nil, errors.New("unexpected")
}

// garbage answers every request with a wrong-type response.
type garbage struct{}

func (garbage) CallRelay(context.Context, pki.Identity, []byte) ([]byte, error) {
	return []byte{relay.MsgIncoming}, nil
}

func TestClient(t *testing.T) {
	ctx := context.Background()
	f := fake{sid: [16]byte{1, 2, 3}}
	or, err := Observe(ctx, f, pki.Identity{1}, 42)
	if err != nil || or.Addr.String() != "198.18.2.1:7402" || or.Flags&relay.FlagRelays == 0 {
		t.Fatalf("Observe: %+v %v", or, err)
	}
	sid, err := Connect(ctx, f, pki.Identity{1}, pki.Identity{2})
	if err != nil || sid != f.sid {
		t.Fatalf("Connect: %x %v", sid, err)
	}
	theirs, err := Punch(ctx, f, pki.Identity{2}, []netip.AddrPort{netip.MustParseAddrPort("198.18.2.1:7402")})
	if err != nil || len(theirs) != 1 || theirs[0].String() != "198.18.3.1:7403" {
		t.Fatalf("Punch: %v %v", theirs, err)
	}
	// A response of the wrong type is an error, never a zero value taken as real.
	if _, err := Connect(ctx, garbage{}, pki.Identity{1}, pki.Identity{2}); err == nil {
		t.Fatal("Connect accepted a wrong-type response")
	}
	if _, err := Observe(ctx, garbage{}, pki.Identity{1}, 1); err == nil {
		t.Fatal("Observe accepted a wrong-type response")
	}
	if _, err := Punch(ctx, garbage{}, pki.Identity{1}, nil); err == nil {
		t.Fatal("Punch accepted a wrong-type response")
	}
}
