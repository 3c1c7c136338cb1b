package overlay

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
	"github.com/korium/korium-tun/relay/client"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/rpc"
	"github.com/korium/korium-tun/smartsock"
)

// NAT traversal: the reference's configure_nat, relay sessions over RPC
// (relay.Msg* over rpc.ProtoRelay), SmartConnect and hole punching.
//
// A node asks its bootstrap peers which address they see it at and to send
// a packet back from a fresh socket (dial-back). If one arrives, unsolicited
// packets reach us: we are public. Otherwise we pick the public ones among
// them as relays, keep connections to them, and publish them in our contact
// record. A peer that wants to reach us asks one of our relays for a
// session (MsgConnect); the relay opens it and tells us (MsgIncoming), and
// both ends add the session as a path in smartsock. The QUIC handshake
// races over every direct address and the relay at once. Once connected,
// the two ends swap candidate addresses (MsgPunch) and probe them at the
// same time; when a direct path proves itself, smartsock moves the traffic
// there without a new connection.

// Timing of NAT traversal.
const (
	natRecheck      = 60 * time.Second // how often configure_nat runs again
	dialBackWait    = 1500 * time.Millisecond
	relayCallTime   = 3 * time.Second
	punchRetry      = 30 * time.Second // a relayed peer is punched again this often
	maxRelaysChosen = 2
)

// NATStatus is what configure_nat found.
type NATStatus struct {
	Public   bool     `json:"public"`
	Observed string   `json:"observed,omitempty"` // our address as a helper saw it
	Relays   []string `json:"relays"`             // relay identities we publish
	Checked  bool     `json:"checked"`
}

type natState struct {
	mu       sync.Mutex
	checked  bool
	public   bool
	observed []netip.AddrPort
	relays   []pki.Identity
}

// maxDialBacks bounds dial-backs in flight (each a socket and a goroutine).
const maxDialBacks = 32

func (n *Node) initRelay() {
	n.dialBacks = make(chan struct{}, maxDialBacks)
	if !n.cfg.NoRelay {
		n.relaySrv = server.New(n.cfg.RelayServer, n.sock)
		n.sock.SetRelayForwarder(n.relaySrv.Forward)
	}
	n.rpc.Handle(rpc.ProtoRelay, n.handleRelay)
}

// NAT returns what configure_nat found.
func (n *Node) NAT() NATStatus {
	n.nat.mu.Lock()
	defer n.nat.mu.Unlock()
	s := NATStatus{Public: n.nat.public, Checked: n.nat.checked, Relays: []string{}}
	if len(n.nat.observed) > 0 {
		s.Observed = n.nat.observed[0].String()
	}
	for _, r := range n.nat.relays {
		s.Relays = append(s.Relays, r.String())
	}
	return s
}

// RelayStats returns the relay server's counters (nil when relaying is off).
func (n *Node) RelayStats() *server.Stats {
	if n.relaySrv == nil {
		return nil
	}
	s := n.relaySrv.Stats()
	return &s
}

func (n *Node) isPublic() bool {
	n.nat.mu.Lock()
	defer n.nat.mu.Unlock()
	return n.nat.public
}

func (n *Node) isMyRelay(id pki.Identity) bool {
	n.nat.mu.Lock()
	defer n.nat.mu.Unlock()
	return slices.Contains(n.nat.relays, id)
}

// directAddr returns where a connected peer's packets come from directly.
func (n *Node) directAddr(id pki.Identity) (netip.AddrPort, bool) {
	pi, ok := n.sock.Path(id)
	if !ok || pi.Relayed || !pi.Current.IsValid() {
		return netip.AddrPort{}, false
	}
	return pi.Current, true
}

// candidateAddrs are the addresses a peer may punch toward: what helpers
// observed (our NAT's mapping), then our own interface addresses.
func (n *Node) candidateAddrs() []netip.AddrPort {
	n.nat.mu.Lock()
	out := slices.Clone(n.nat.observed)
	n.nat.mu.Unlock()
	for _, a := range n.AdvertisedAddrs() {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out[:min(len(out), relay.MaxCandidates)]
}

// relayCaller sends relay requests on the node's connections.
type relayCaller struct{ n *Node }

// CallRelay implements client.Caller.
func (c relayCaller) CallRelay(ctx context.Context, to pki.Identity, req []byte) ([]byte, error) {
	return c.n.callConnected(ctx, to, rpc.ProtoRelay, req)
}

// handleRelay answers rpc.ProtoRelay requests.
func (n *Node) handleRelay(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
	n.touch(from)
	t, err := relay.Type(req)
	if err != nil {
		return nil, err
	}
	switch t {
	case relay.MsgObserve:
		nonce, err := relay.ParseObserveReq(req)
		if err != nil {
			return nil, err
		}
		addr, ok := n.directAddr(from)
		if !ok {
			return nil, rpc.RefuseError("you reach me only through a relay")
		}
		// addr is where from's authenticated packets come from, not an
		// address it named; a loopback source is a process on this host
		// that we already talk to. Anything else addrpolicy refuses
		// (link-local, broadcast...) gets no dial-back.
		if !addrpolicy.Dialable(addr, true) {
			n.stats.PunchRefused.Add(1)
			return nil, rpc.RefuseError("no dial-back to that address")
		}
		var flags byte
		if n.relaySrv != nil && n.isPublic() {
			flags |= relay.FlagRelays
		}
		select {
		case n.dialBacks <- struct{}{}: // bounded: each holds a socket for 300 ms
			n.goLoop(func() { defer func() { <-n.dialBacks }(); n.dialBack(addr, nonce) })
		default:
			n.stats.DialBackBusy.Add(1)
		}
		return relay.AppendObserveResp(nil, relay.ObserveResp{Addr: addr, Flags: flags})
	case relay.MsgConnect:
		target, err := relay.ParseConnectReq(req)
		if err != nil {
			return nil, err
		}
		return n.openSession(ctx, from, target)
	case relay.MsgIncoming:
		in, err := relay.ParseIncomingReq(req)
		if err != nil {
			return nil, err
		}
		raddr, ok := n.directAddr(from)
		if !ok || !n.isMyRelay(from) {
			n.stats.RelayRefused.Add(1)
			return nil, rpc.RefuseError("you are not one of my relays")
		}
		n.sock.AddRelayPath(in.From, from, raddr, in.Session)
		n.cfg.Logger.Info("relay session offered", "peer", in.From.Short(), "relay", from.Short())
		return relay.AppendIncomingResp(nil), nil
	case relay.MsgPunch:
		var buf [relay.MaxCandidates]netip.AddrPort
		theirs, err := relay.ParsePunch(buf[:0], req)
		if err != nil {
			return nil, err
		}
		n.sock.Punch(from, n.punchable(theirs))
		n.stats.Punches.Add(1)
		return relay.AppendPunch(nil, n.candidateAddrs())
	}
	return nil, rpc.RefuseError(fmt.Sprintf("unknown relay message %d", t))
}

// punchable keeps the candidates a peer sent that we may probe: only
// addresses addrpolicy allows (a peer must not make us send packets to
// services on our own host or link, or to broadcast and multicast groups),
// loopback only when we ourselves listen on loopback, as tests on one host
// do.
func (n *Node) punchable(addrs []netip.AddrPort) []netip.AddrPort {
	local := n.onLoopback()
	out := addrs[:0]
	for _, a := range addrs {
		if !addrpolicy.Dialable(a, local) {
			n.stats.PunchRefused.Add(1)
			continue
		}
		out = append(out, a)
	}
	return out
}

// onLoopback reports whether the node listens on a loopback address: only
// then may a peer's word make it send to loopback addresses.
func (n *Node) onLoopback() bool { return n.LocalAddr().Addr().Unmap().IsLoopback() }

// dialBack sends nonce to addr from a fresh socket (not our QUIC one), so
// it reaches addr only if its NAT lets unsolicited packets in.
func (n *Node) dialBack(addr netip.AddrPort, nonce uint64) {
	network := "udp4"
	if addr.Addr().Is6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, nil)
	if err != nil {
		return
	}
	defer c.Close()
	pkt := smartsock.AppendDialBack(nil, nonce)
	for i := 0; i < 3; i++ {
		c.WriteToUDPAddrPort(pkt, addr)
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// openSession is the relay side of MsgConnect: from asks us to relay to
// target, which must be connected to us directly.
func (n *Node) openSession(ctx context.Context, from, target pki.Identity) ([]byte, error) {
	if n.relaySrv == nil {
		return nil, rpc.RefuseError("this node does not relay")
	}
	tp := n.peer(target)
	if tp == nil {
		return nil, rpc.RefuseError("the target is not connected to this relay")
	}
	if tp.enrollee() {
		return nil, rpc.RefuseError("the target is not a member") // no relaying for enrollees (members.go)
	}
	fa, ok1 := n.directAddr(from)
	ta, ok2 := n.directAddr(target)
	if !ok1 || !ok2 {
		return nil, rpc.RefuseError("an endpoint has no direct path to the relay")
	}
	sid, err := n.relaySrv.Open(from, target, fa, ta, time.Now())
	if err != nil {
		return nil, rpc.RefuseError(err.Error())
	}
	cctx, cancel := context.WithTimeout(ctx, relayCallTime)
	defer cancel()
	resp, err := n.rpc.Call(cctx, tp.conn, rpc.ProtoRelay, relay.AppendIncomingReq(nil, relay.Incoming{Session: sid, From: from}))
	if err == nil {
		err = relay.ParseIncomingResp(resp)
	}
	if err != nil {
		n.relaySrv.CloseSession(sid)
		return nil, rpc.RefuseError("the target refused: " + err.Error())
	}
	return relay.AppendConnectResp(nil, sid), nil
}

// configureNAT is the reference's configure_nat: ask helpers (our bootstrap
// peers) where they see us and whether they can reach us unsolicited; if
// not, choose relays among them and publish them.
func (n *Node) configureNAT(ctx context.Context) {
	n.mu.RLock()
	var helpers []*peer
	for id := range n.desired {
		if p := n.peers[id]; p != nil {
			helpers = append(helpers, p)
		}
	}
	n.mu.RUnlock()
	if len(helpers) == 0 {
		return
	}
	type answer struct {
		id       pki.Identity
		observed netip.AddrPort
		relays   bool
		dialBack bool
	}
	answers := make([]answer, len(helpers))
	var wg sync.WaitGroup
	for i, h := range helpers[:min(len(helpers), 3)] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var nb [8]byte
			rand.Read(nb[:])
			nonce := binary.BigEndian.Uint64(nb[:])
			ch, err := n.sock.ExpectDialBack(nonce)
			if err != nil {
				return
			}
			defer n.sock.CancelDialBack(nonce)
			cctx, cancel := context.WithTimeout(ctx, relayCallTime)
			defer cancel()
			or, err := client.Observe(cctx, relayCaller{n}, h.id, nonce)
			if err != nil {
				return
			}
			a := answer{id: h.id, observed: or.Addr, relays: or.Flags&relay.FlagRelays != 0}
			select {
			case <-ch:
				a.dialBack = !n.cfg.testNoDialBack
			case <-time.After(dialBackWait):
			case <-ctx.Done():
			}
			answers[i] = a
		}()
	}
	wg.Wait()
	var observed []netip.AddrPort
	var relays []pki.Identity
	public, got := false, false
	for _, a := range answers {
		if !a.observed.IsValid() {
			continue
		}
		got = true
		public = public || a.dialBack
		if !slices.Contains(observed, a.observed) {
			observed = append(observed, a.observed)
		}
		if a.relays && len(relays) < maxRelaysChosen {
			relays = append(relays, a.id)
		}
	}
	if !got {
		return
	}
	if public {
		relays = nil
	}
	n.nat.mu.Lock()
	changed := !n.nat.checked || n.nat.public != public || !slices.Equal(n.nat.observed, observed) || !slices.Equal(n.nat.relays, relays)
	n.nat.checked, n.nat.public, n.nat.observed, n.nat.relays = true, public, observed, relays
	n.nat.mu.Unlock()
	if !changed {
		return
	}
	n.cfg.Logger.Info("NAT checked", "public", public, "observed", observed, "relays", len(relays))
	if n.dht != nil {
		addrs := n.AdvertisedAddrs()
		for _, o := range observed {
			if !slices.Contains(addrs, o) {
				addrs = append(addrs, o)
			}
		}
		n.dht.SetAddrs(addrs[:min(len(addrs), 16)])
		n.dht.SetRelays(relays)
		// Behind NAT others cannot dial us: stay out of their routing
		// tables (our record, with relays, is how we are found).
		n.dht.SetClient(!public)
	}
}

// natLoop runs configure_nat once a bootstrap peer is connected, then every
// natRecheck. A node without bootstrap peers is a seed: public by definition.
func (n *Node) natLoop() {
	if len(n.cfg.Bootstrap) == 0 {
		n.nat.mu.Lock()
		n.nat.checked, n.nat.public = true, true
		n.nat.mu.Unlock()
		return
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var next time.Time
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-t.C:
			n.nat.mu.Lock()
			checked := n.nat.checked
			n.nat.mu.Unlock()
			if now.Before(next) && checked {
				continue
			}
			n.configureNAT(n.ctx)
			n.nat.mu.Lock()
			checked = n.nat.checked
			n.nat.mu.Unlock()
			if checked {
				next = now.Add(natRecheck)
			}
		}
	}
}

// setupRelays asks id's relays for sessions to it and adds them as paths.
// It returns how many sessions were set up.
func (n *Node) setupRelays(ctx context.Context, id pki.Identity, relays []pki.Identity) int {
	ok := 0
	for _, r := range relays[:min(len(relays), maxRelaysChosen)] {
		if r == n.id || r == id {
			continue
		}
		rp := n.peer(r)
		if rp == nil {
			// Resolve the relay and connect to it directly (relays are public).
			rec, err := n.Resolve(ctx, r)
			if err != nil {
				continue
			}
			if _, err := n.connFor(ctx, r, rec.Addrs); err != nil {
				continue
			}
			if rp = n.peer(r); rp == nil {
				continue
			}
		}
		raddr, direct := n.directAddr(r)
		if !direct {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, relayCallTime)
		sid, err := client.Connect(cctx, relayCaller{n}, r, id)
		cancel()
		if err != nil {
			n.cfg.Logger.Debug("relay refused", "relay", r.Short(), "peer", id.Short(), "err", err)
			continue
		}
		n.sock.AddRelayPath(id, r, raddr, sid)
		ok++
	}
	return ok
}

// SmartConnect connects to id: its direct addresses and, if it publishes
// relays, relay sessions through them, raced in one handshake. Once
// connected over a relay, the two ends try to punch a direct path. The
// caller chose addrs: loopback is allowed, addresses nobody can be reached
// at (unspecified, multicast, broadcast, link-local) are skipped.
func (n *Node) SmartConnect(ctx context.Context, id pki.Identity, addrs []netip.AddrPort, relays []pki.Identity) error {
	return n.smartConnect(ctx, id, addrs, relays, true)
}

// smartConnect is SmartConnect. chosen says whether addrs come from our
// user (bootstrap contacts, the Go API) rather than from the network
// (records, DHT contacts): the network's word never makes us send to
// loopback unless we listen there ourselves (addrpolicy).
func (n *Node) smartConnect(ctx context.Context, id pki.Identity, addrs []netip.AddrPort, relays []pki.Identity, chosen bool) error {
	if id == n.id {
		return fmt.Errorf("%w: that is us", ErrUnreachable)
	}
	if n.peer(id) != nil {
		return nil
	}
	if len(addrs) == 0 && len(relays) == 0 {
		return fmt.Errorf("%w: %s: no address", ErrUnreachable, id.Short())
	}
	var first netip.AddrPort
	var addErr error
	usable := 0
	loopback := chosen || n.onLoopback()
	for _, a := range addrs[:min(len(addrs), maxDialAddrs)] {
		if err := addrpolicy.Check(a, loopback); err != nil {
			n.stats.DialAddrRefused.Add(1)
			addErr = err
			continue
		}
		if _, err := n.sock.AddPeer(id, a); err != nil {
			addErr = err
			continue
		}
		if usable == 0 {
			first = a
		}
		usable++
	}
	if usable == 0 && len(relays) == 0 {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, id.Short(), addErr)
	}
	if len(relays) > 0 {
		// Before joining a dial that may be in flight: its handshake
		// retransmissions go over every path, relays included.
		n.setupRelays(ctx, id, relays)
	}
	err := n.dialOnce(ctx, id, usable+len(relays), func(ctx context.Context) error {
		if n.peer(id) != nil {
			return nil
		}
		return n.dial(ctx, id, first)
	})
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, id.Short(), err)
	}
	return nil
}

// punch swaps candidate addresses with a relayed peer and probes them.
func (n *Node) punch(p *peer) {
	pi, ok := n.sock.Path(p.id)
	if !ok || !pi.Relayed {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, relayCallTime)
	defer cancel()
	theirs, err := client.Punch(ctx, relayCaller{n}, p.id, n.candidateAddrs())
	if err != nil {
		n.cfg.Logger.Debug("punch refused", "peer", p.id.Short(), "err", err)
		return
	}
	n.stats.Punches.Add(1)
	n.sock.Punch(p.id, n.punchable(theirs))
}

// punchLoop punches relayed peers we dialed right after connecting, and
// again every punchRetry while they stay relayed.
func (n *Node) punchRelayed(now time.Time) {
	n.mu.RLock()
	var due []*peer
	for _, p := range n.peers {
		if p.outbound && now.UnixNano()-p.lastPunch.Load() >= int64(punchRetry) {
			due = append(due, p)
		}
	}
	n.mu.RUnlock()
	for _, p := range due {
		if pi, ok := n.sock.Path(p.id); !ok || !pi.Relayed {
			continue
		}
		p.lastPunch.Store(now.UnixNano())
		n.goLoop(func() { n.punch(p) })
	}
}

// Ping probes id's current path and reports which path it is and its RTT.
func (n *Node) Ping(ctx context.Context, id pki.Identity) (smartsock.PingResult, error) {
	if n.peer(id) == nil {
		return smartsock.PingResult{}, errors.New("overlay: not connected to that peer")
	}
	return n.sock.Ping(ctx, id)
}

// OwnerOf returns the identity that owns an overlay address: a connected
// peer, else the DHT's answer (checked against the address).
func (n *Node) OwnerOf(ctx context.Context, addr netip.Addr) (pki.Identity, error) {
	n.mu.RLock()
	p := n.byAddr[addr]
	n.mu.RUnlock()
	if p != nil {
		return p.id, nil
	}
	rec, err := n.ResolveAddr(ctx, addr)
	if err != nil {
		return pki.Identity{}, err
	}
	return rec.Identity, nil
}

// ConnectIdentity connects to id (SmartConnect from its contact record)
// unless a connection exists.
func (n *Node) ConnectIdentity(ctx context.Context, id pki.Identity) error {
	if n.peer(id) != nil {
		return nil
	}
	rec, err := n.Resolve(ctx, id)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, id.Short(), err)
	}
	return n.smartConnect(ctx, id, rec.Addrs, rec.Relays, false)
}
