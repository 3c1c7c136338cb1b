package server

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
)

// fakeHost is the node around the relay: who reaches it directly, who may
// be relayed to, and how the target answers MsgIncoming.
type fakeHost struct {
	mu        sync.Mutex
	direct    map[pki.Identity]netip.AddrPort
	refuse    map[pki.Identity]string // Relayable's refusals
	answer    func(req []byte) ([]byte, error)
	calls     int
	lastCalls []pki.Identity
}

func (h *fakeHost) DirectAddr(id pki.Identity) (netip.AddrPort, bool) {
	a, ok := h.direct[id]
	return a, ok
}

func (h *fakeHost) Relayable(target pki.Identity) error {
	if why, ok := h.refuse[target]; ok {
		return errors.New(why)
	}
	return nil
}

func (h *fakeHost) CallRelay(_ context.Context, to pki.Identity, req []byte) ([]byte, error) {
	h.mu.Lock()
	h.calls++
	h.lastCalls = append(h.lastCalls, to)
	h.mu.Unlock()
	return h.answer(req)
}

// accepting answers MsgIncoming as a willing target does, after checking
// what the relay told it.
func accepting(t *testing.T, from pki.Identity) func([]byte) ([]byte, error) {
	return func(req []byte) ([]byte, error) {
		in, err := relay.ParseIncomingReq(req)
		if err != nil || in.From != from {
			t.Errorf("the target was told %+v, %v", in, err)
		}
		return relay.AppendIncomingResp(nil), nil
	}
}

func newHost(t *testing.T) *fakeHost {
	return &fakeHost{
		direct: map[pki.Identity]netip.AddrPort{idA: addrA, idB: addrB},
		refuse: map[pki.Identity]string{},
		answer: accepting(t, idA),
	}
}

// A session both ends reach us directly for is opened, the target told
// first, and its ID answered; the target can then use it.
func TestHandleConnectOpensSession(t *testing.T) {
	s := New(Config{}, &fakeSender{})
	h := newHost(t)
	resp, err := s.HandleConnect(context.Background(), h, idA, relay.AppendConnectReq(nil, idB))
	if err != nil {
		t.Fatal(err)
	}
	sid, err := relay.ParseConnectResp(resp)
	if err != nil {
		t.Fatal(err)
	}
	if h.calls != 1 || h.lastCalls[0] != idB {
		t.Fatalf("told %v, want the target once", h.lastCalls)
	}
	if st := s.Stats(); st.Sessions != 1 || st.Opened != 1 {
		t.Fatalf("stats %+v", st)
	}
	if !s.Forward(frame(sid, "x"), addrA, t0) {
		t.Fatal("the new session does not forward")
	}
}

// Every way a requester can be refused, each a refusal that says why, none
// leaving a session behind or making the relay call anyone it should not.
func TestHandleConnectRefusals(t *testing.T) {
	for _, c := range []struct {
		name   string
		from   pki.Identity
		req    []byte
		tune   func(*fakeHost)
		want   string
		called int
	}{
		{"target not relayable", idA, relay.AppendConnectReq(nil, idB), func(h *fakeHost) { h.refuse[idB] = "the target is not a member" }, "not a member", 0},
		{"requester relayed", idA, relay.AppendConnectReq(nil, idB), func(h *fakeHost) { delete(h.direct, idA) }, "no direct path", 0},
		{"target relayed", idA, relay.AppendConnectReq(nil, idB), func(h *fakeHost) { delete(h.direct, idB) }, "no direct path", 0},
		{"to itself", idA, relay.AppendConnectReq(nil, idA), nil, "", 0},
		{"target says no", idA, relay.AppendConnectReq(nil, idB), func(h *fakeHost) {
			h.answer = func([]byte) ([]byte, error) { return nil, errors.New("you are not one of my relays") }
		}, "the target refused: you are not one of my relays", 1},
		{"target answers garbage", idA, relay.AppendConnectReq(nil, idB), func(h *fakeHost) {
			h.answer = func([]byte) ([]byte, error) { return []byte{relay.MsgIncoming, 0}, nil }
		}, "the target refused", 1},
	} {
		s := New(Config{}, &fakeSender{})
		h := newHost(t)
		if c.tune != nil {
			c.tune(h)
		}
		_, err := s.HandleConnect(context.Background(), h, c.from, c.req)
		var re *RefusedError
		if !errors.As(err, &re) || !strings.Contains(re.Reason, c.want) {
			t.Errorf("%s: %v, want a refusal saying %q", c.name, err, c.want)
		}
		if st := s.Stats(); st.Sessions != 0 {
			t.Errorf("%s: %d sessions left", c.name, st.Sessions)
		}
		if h.calls != c.called {
			t.Errorf("%s: the relay called the target %d times, want %d", c.name, h.calls, c.called)
		}
	}
	// A malformed request is an error, not a refusal, and calls nobody.
	s, h := New(Config{}, &fakeSender{}), newHost(t)
	var re *RefusedError
	if _, err := s.HandleConnect(context.Background(), h, idA, []byte{relay.MsgConnect, 1, 2}); err == nil || errors.As(err, &re) || h.calls != 0 {
		t.Fatalf("malformed request: %v (calls %d)", err, h.calls)
	}
}

// The session table's limits hold through the RPC side: one requester
// address cannot open more than MaxPerIP sessions however many targets it
// names.
func TestHandleConnectLimits(t *testing.T) {
	s := New(Config{MaxPerIP: 3}, &fakeSender{})
	h := newHost(t)
	opened := 0
	for i := range 10 {
		target := ident(100 + i)
		h.direct[target] = ipAddr(100 + i)
		if _, err := s.HandleConnect(context.Background(), h, idA, relay.AppendConnectReq(nil, target)); err == nil {
			opened++
		}
	}
	if opened != 3 || s.Stats().Sessions != 3 {
		t.Fatalf("opened %d sessions for one requester address, want 3", opened)
	}
}

// FuzzHandleConnect: any request from any requester either opens a session
// between two identities the host reaches directly, after telling the
// target, or leaves no session and tells nobody.
func FuzzHandleConnect(f *testing.F) {
	f.Add(relay.AppendConnectReq(nil, idB), true)
	f.Add(relay.AppendConnectReq(nil, idA), false)
	f.Add([]byte{relay.MsgConnect}, true)
	f.Add([]byte{relay.MsgObserve, 1, 2, 3, 4, 5, 6, 7, 8}, true)
	f.Fuzz(func(t *testing.T, req []byte, accept bool) {
		s := New(Config{}, &fakeSender{})
		h := newHost(t)
		h.answer = func(r []byte) ([]byte, error) {
			if !accept {
				return nil, errors.New("no")
			}
			return relay.AppendIncomingResp(nil), nil
		}
		resp, err := s.HandleConnect(context.Background(), h, idA, req)
		st := s.Stats()
		if err != nil {
			if st.Sessions != 0 {
				t.Fatalf("a failed request left %d sessions", st.Sessions)
			}
			return
		}
		if _, perr := relay.ParseConnectResp(resp); perr != nil || st.Sessions != 1 || h.calls != 1 || h.lastCalls[0] != idB {
			t.Fatalf("answered %x (%v) with %d sessions, target told %v", resp, perr, st.Sessions, h.lastCalls)
		}
	})
}
