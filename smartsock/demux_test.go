package smartsock

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
)

// The read-path demultiplexer under arbitrary packets from arbitrary
// sources, without a socket: a Conn with three peers (P1 direct and proven,
// P2 through a relay session and proven, P3 dialled but never connected)
// and a relay server stub, driven by demux and probeTick on a clock of the
// test's own.

var demuxT0 = time.Unix(1_750_000_000, 0)

func demuxKey(b byte) *pki.Keypair {
	seed := make([]byte, 32)
	seed[0] = b
	kp, err := pki.NewKeypair(seed, 0)
	if err != nil {
		panic(err)
	}
	return kp
}

var (
	dxSelf, dxP1, dxP2, dxP3, dxQ = demuxKey(1), demuxKey(2), demuxKey(3), demuxKey(4), demuxKey(5)
	dxKey1, dxKey2                = [32]byte{1, 1}, [32]byte{2, 2}
	dxSession                     = [16]byte{0xee, 1}
	dxAddr1                       = netip.MustParseAddrPort("198.18.0.1:7400")
	dxRelay                       = netip.MustParseAddrPort("198.18.0.2:7400")
	dxAddr3                       = netip.MustParseAddrPort("198.18.0.3:7400")
	// Sources a fuzzed packet may come from: selector byte % 8; selectors
	// from 128 up are distinct unknown addresses each.
	dxSrcs = [8]netip.AddrPort{
		dxAddr1, dxRelay, dxAddr3,
		netip.MustParseAddrPort("[::ffff:198.18.0.1]:7400"), // P1's, IPv4-mapped
		netip.MustParseAddrPort("198.18.0.9:9"),
		netip.MustParseAddrPort("[2001:db8::1]:7400"),
		netip.MustParseAddrPort("198.18.0.1:7401"), // P1's host, another port
		netip.MustParseAddrPort("[2001:db8::2]:443"),
	}
)

func dxSrc(sel byte) netip.AddrPort {
	if sel < 128 {
		return dxSrcs[sel%8]
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, sel}), 1000+uint16(sel))
}

type dxSend struct {
	dst  netip.AddrPort
	size int
}

type demuxFixture struct {
	mu     sync.Mutex // guards sends
	t      testing.TB
	c      *Conn
	now    time.Time
	sends  []dxSend
	proven map[[3]any]bool // (identity, address, session) of every proven path
}

func dxMsg(b []byte, src netip.AddrPort) ipv4.Message {
	buf := make([]byte, 2048)
	return ipv4.Message{Buffers: [][]byte{buf}, N: copy(buf, b), Addr: net.UDPAddrFromAddrPort(src)}
}

func newDemuxFixture(t testing.TB) *demuxFixture {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	rk := [32]byte{9}
	u, err := NewUDP(udp)
	if err != nil {
		t.Fatal(err)
	}
	// The probe loop ticks on the fixture's clock, not the wall's; the
	// budgets start full at their first use, on the same clock.
	c, err := newConn(u, Config{Keypair: dxSelf, MaxPeers: 3, StatelessResetKey: &rk}, false)
	if err != nil {
		t.Fatal(err)
	}
	f := &demuxFixture{t: t, c: c, now: demuxT0}
	// Called by the path loop and by the read path (resets).
	c.ctlSent = func(dst netip.AddrPort, size int) {
		f.mu.Lock()
		f.sends = append(f.sends, dxSend{dst, size})
		f.mu.Unlock()
	}
	// The relay server stub takes every other session.
	c.SetRelayForwarder(func(frame []byte, _ netip.AddrPort, _ time.Time) bool {
		if len(frame) < wire.RelayHeaderSize {
			t.Fatalf("the relay server got a frame of %d bytes", len(frame))
		}
		return frame[4]&1 == 0
	})

	long := []byte{0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0}
	id1, id2 := dxP1.Identity(), dxP2.Identity()
	c.AddPeer(id1, dxAddr1)
	ms := []ipv4.Message{dxMsg(long, dxAddr1)}
	if c.demux(ms, 1, f.now) != 1 {
		t.Fatal("P1's handshake packet was dropped")
	}
	c.Confirm(id1)
	c.SetPathKey(id1, dxKey1)
	c.AddRelayPath(id2, demuxKey(6).Identity(), dxRelay, dxSession)
	ms = []ipv4.Message{dxMsg(append(wire.AppendRelayHeader(nil, wire.RelayHeader{Session: dxSession}), long...), dxRelay)}
	if c.demux(ms, 1, f.now) != 1 {
		t.Fatal("P2's relayed handshake packet was dropped")
	}
	c.Confirm(id2)
	c.SetPathKey(id2, dxKey2)
	c.AddPeer(dxP3.Identity(), dxAddr3)
	f.proven = map[[3]any]bool{}
	c.call(func() {
		c.virt.all(func(_ netip.AddrPort, p *peer) {
			p.lastRecv.Store(f.now.UnixNano())
			for _, pa := range p.paths {
				pa.added = f.now
				pa.lastRecv.Store(f.now.UnixNano())
				if pa.validated {
					f.proven[[3]any{p.id, pa.addr, pa.session}] = true
				}
			}
		})
	})
	if len(f.proven) != 2 {
		t.Fatalf("fixture: %d proven paths, want 2", len(f.proven))
	}
	f.sends = f.sends[:0]
	return f
}

// check asserts the invariants of the path table, on the path loop (which
// owns it), and that every published route and index entry agrees with it.
func (f *demuxFixture) check() {
	c := f.c
	var bad string
	fail := func(format string, a ...any) {
		if bad == "" {
			bad = fmt.Sprintf(format, a...)
		}
	}
	c.call(func() {
		if c.virt.len() > c.cfg.MaxPeers {
			fail("%d peers, cap %d", c.virt.len(), c.cfg.MaxPeers)
		}
		paths := 0
		c.virt.all(func(v netip.AddrPort, p *peer) {
			if p.virt != v {
				fail("peer indexed under another virtual address")
			}
			direct, relays := 0, 0
			for _, pa := range p.paths {
				paths++
				if pa.peer != p {
					fail("a path of another peer in the list")
				}
				if pa.relay {
					relays++
					if pa.owner != (c.sess.load(pa.session) == pa) {
						fail("relay path ownership and session index disagree")
					}
				} else {
					direct++
					if pa.owner != (c.real.load(pa.addr) == pa) {
						fail("path %v: owner %v but index says otherwise", pa.addr, pa.owner)
					}
					if pa.addr != unmap(pa.addr) {
						fail("path under an IPv4-mapped address %v", pa.addr)
					}
				}
				if pa.validated && !f.proven[[3]any{p.id, pa.addr, pa.session}] {
					fail("a path became proven from the network alone: %s %v", p.id.Short(), pa.addr)
				}
			}
			if direct > maxRealPerPeer || relays > maxRelayPerPeer {
				fail("peer %s has %d direct and %d relay paths", p.id.Short(), direct, relays)
			}
			if p.current != nil && !p.current.owner {
				fail("peer %s's traffic goes to a path that does not own its address", p.id.Short())
			}
			rt := p.rt.Load()
			if rt == nil || rt.cur != p.current || rt.hs != p.handshake || rt.confirmed != p.confirmed() || rt.keyed != (p.key != nil) || len(rt.direct) != direct {
				fail("peer %s: the published route disagrees with the table", p.id.Short())
			}
		})
		if c.real.len()+c.sess.len() > paths {
			fail("index holds paths no peer has")
		}
		c.real.all(func(_ netip.AddrPort, pa *path) {
			if c.virt.load(pa.peer.virt) != pa.peer {
				fail("index points at an evicted peer")
			}
		})
		if len(c.waiters) != 0 || len(c.dialBack) != 0 || c.dialBacks.Load() != 0 {
			fail("waiters appeared from the network")
		}
	})
	if bad != "" {
		f.t.Fatal(bad)
	}
}

// ownerOf is the peer packets from src (in frame b) are attributed to now.
func (f *demuxFixture) ownerOf(b []byte, src netip.AddrPort) *peer {
	src = unmap(src)
	if wire.IsRelay(b) {
		if pa := f.c.ourSession(b, src); pa != nil {
			return pa.peer
		}
		return nil
	}
	if pa := f.c.real.load(src); pa != nil {
		return pa.peer
	}
	return nil
}

// packet runs one packet through demux and checks what came out of it.
func (f *demuxFixture) packet(b []byte, src netip.AddrPort) {
	t, c := f.t, f.c
	owner := f.ownerOf(b, src)
	before := c.Stats()
	f.sends = f.sends[:0]
	ms := []ipv4.Message{dxMsg(b, src)}
	n := c.demux(ms, 1, f.now)
	c.sync() // whatever the read path posted is applied
	after := c.Stats()
	if n == 1 {
		// Only QUIC from a source that is a peer's, rewritten to that peer.
		if wire.IsProbe(b) || owner == nil || ms[0].Addr != owner.virtUDP {
			t.Fatalf("packet from %v reached quic-go as from %v (owner before: %v)", src, ms[0].Addr, owner != nil)
		}
	}
	// Replies go only where the packet came from, and an unauthenticated
	// packet gets at most a stateless reset, smaller than itself.
	bytes := 0
	for _, s := range f.sends {
		if s.dst != unmap(src) {
			t.Fatalf("a packet from %v made us send to %v", src, s.dst)
		}
		bytes += s.size
	}
	authed := int(after.RxProbe - before.RxProbe)
	resets := int(after.TxReset - before.TxReset)
	if len(f.sends) > 2*authed+resets {
		t.Fatalf("%d packets sent for one from %v (%d authenticated requests, %d resets)", len(f.sends), src, authed, resets)
	}
	if authed == 0 && bytes >= len(b) && bytes > 0 {
		t.Fatalf("%d bytes sent for an unauthenticated packet of %d", bytes, len(b))
	}
	f.check()
}

// batch runs several packets through one demux call (removeMsg's shuffling).
func (f *demuxFixture) batch(pkts [][]byte, srcs []netip.AddrPort) {
	var owners []*peer
	ms := make([]ipv4.Message, len(pkts))
	for i := range pkts {
		owners = append(owners, f.ownerOf(pkts[i], srcs[i]))
		ms[i] = dxMsg(pkts[i], srcs[i])
	}
	n := f.c.demux(ms, len(ms), f.now)
	f.c.sync()
	for _, m := range ms[:n] {
		ok := false
		for _, o := range owners {
			ok = ok || (o != nil && m.Addr == o.virtUDP)
		}
		if !ok {
			f.t.Fatalf("a packet reached quic-go as from %v, which sent nothing in this batch", m.Addr)
		}
	}
	f.check()
}

// tick advances the clock and runs the probe loop's bookkeeping; its probes
// go only to paths we have.
func (f *demuxFixture) tick(d time.Duration) {
	f.now = f.now.Add(d)
	f.sends = f.sends[:0]
	c := f.c
	c.tickAt(f.now)
	var bad netip.AddrPort
	c.call(func() {
		for _, s := range f.sends {
			known := false
			c.virt.all(func(_ netip.AddrPort, p *peer) {
				for _, pa := range p.paths {
					known = known || pa.addr == s.dst
				}
			})
			if !known {
				bad = s.dst
			}
		}
	})
	if bad.IsValid() {
		f.t.Fatalf("the probe loop sent to %v, no path of any peer", bad)
	}
	f.check()
}

// dxRecord encodes one fuzz record: source selector, clock advance (in
// 20 ms steps; 0 runs no tick), length, packet.
func dxRecord(sel, adv byte, pkt []byte) []byte {
	b := []byte{sel, adv}
	b = binary.BigEndian.AppendUint16(b, uint16(len(pkt)))
	return append(b, pkt...)
}

func dxSeeds() [][]byte {
	id1, id2, self := dxP1.Identity(), dxP2.Identity(), dxSelf.Identity()
	ts := demuxT0.UnixNano()
	req := func(from pki.Identity, key *[32]byte, tx uint64) []byte {
		p := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeRequest, TxID: tx, Timestamp: ts}, From: from}
		p.Seal(key, self)
		return wire.AppendProbe(nil, &p)
	}
	reply := func(from pki.Identity, key *[32]byte, tx uint64) []byte {
		p := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeReply, TxID: tx, Timestamp: ts}, From: from, Observed: dxAddr1}
		p.Seal(key, self)
		return wire.AppendProbe(nil, &p)
	}
	relayed := func(b []byte) []byte {
		return append(wire.AppendRelayHeader(nil, wire.RelayHeader{Session: dxSession}), b...)
	}
	hello := func(kp *pki.Keypair, tx uint64, ts int64) []byte {
		h := wire.NewHello(kp, self, tx, ts)
		return wire.AppendHello(nil, &h)
	}
	short := append([]byte{0x41}, make([]byte, 40)...)
	long := append([]byte{0xc3, 0, 0, 0, 1, 8}, make([]byte, 60)...)
	// A reply's transaction ID never matches one of ours: the MAC is valid
	// but the probe was not asked for.
	const notOurs = 0xdead_beef_0000_0000
	recs := [][]byte{
		dxRecord(0, 0, short),
		dxRecord(4, 0, long),
		dxRecord(6, 1, hello(dxP1, 1, ts+1)),
		dxRecord(5, 0, hello(dxQ, 2, ts+2)),
		dxRecord(0, 0, req(id1, &dxKey1, 3)),
		dxRecord(4, 0, req(id1, &dxKey1, 4)),
		dxRecord(1, 0, relayed(req(id2, &dxKey2, 5))),
		dxRecord(1, 0, relayed(short)),
		dxRecord(4, 0, append(wire.AppendRelayHeader(nil, wire.RelayHeader{Session: [16]byte{2}}), short...)),
		dxRecord(0, 0, reply(id1, &dxKey1, notOurs)),
		dxRecord(2, 0, wire.AppendDialBack(nil, 7, ts)),
		dxRecord(3, 10, short),
		dxRecord(200, 0, []byte("SMPR\x09garbage")),
		dxRecord(2, 0, long),
		dxRecord(7, 200, short),
	}
	var all []byte
	for _, r := range recs {
		all = append(all, r...)
	}
	return append(recs, all)
}

// FuzzDemux drives the whole read-path demultiplexer (hello, probe request
// and reply, dial-back, CRLY frames of our sessions and of others, QUIC
// from known and unknown sources) with arbitrary packets from arbitrary
// sources and the probe loop on an arbitrary clock: no panic, the tables
// stay within their caps and consistent, nothing unauthenticated becomes a
// proven path or reaches quic-go, and nothing makes us send anywhere but
// back to the sender (or, from the probe loop, to a path we have).
func FuzzDemux(f *testing.F) {
	for _, s := range dxSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fx := newDemuxFixture(t)
		defer fx.c.Close()
		var pend [][]byte
		var srcs []netip.AddrPort
		for i := 0; len(data) >= 4 && i < 64; i++ {
			sel, adv := data[0], data[1]
			n := min(int(binary.BigEndian.Uint16(data[2:4])), len(data)-4, 1500)
			pkt := data[4 : 4+n]
			data = data[4+n:]
			if adv != 0 {
				fx.tick(time.Duration(adv) * 20 * time.Millisecond)
			}
			if sel&0x40 != 0 && sel < 128 { // gather for one batch
				pend, srcs = append(pend, pkt), append(srcs, dxSrc(sel))
				if len(pend) == 4 {
					fx.batch(pend, srcs)
					pend, srcs = pend[:0], srcs[:0]
				}
				continue
			}
			fx.packet(pkt, dxSrc(sel))
		}
		if len(pend) > 0 {
			fx.batch(pend, srcs)
		}
	})
}

// TestDemuxSeedsDoWhatTheySay: the fuzz seeds reach the branches they are
// meant for, so the fuzzer starts from packets that pass the checks.
func TestDemuxSeedsDoWhatTheySay(t *testing.T) {
	fx := newDemuxFixture(t)
	defer fx.c.Close()
	seeds := dxSeeds()
	for _, r := range seeds[:len(seeds)-1] {
		n := int(binary.BigEndian.Uint16(r[2:4]))
		if r[1] != 0 {
			fx.tick(time.Duration(r[1]) * 20 * time.Millisecond)
		}
		fx.packet(r[4:4+n], dxSrc(r[0]))
	}
	s := fx.c.Stats()
	for name, v := range map[string]uint64{
		"hellos accepted": s.RxHello - s.DropBadProbe, "requests answered": s.RxProbe, "relayed QUIC": s.RxRelayed,
		"foreign frames": s.RxForwarded + s.DropRelay, "unknown sources": s.DropUnknownSource, "stateless resets": s.TxReset,
	} {
		if v == 0 {
			t.Errorf("no %s: %+v", name, s)
		}
	}
	if s.RxProbe < 3 {
		t.Errorf("%d requests answered, want 3 (P1 twice, P2 through the relay)", s.RxProbe)
	}
	if _, ok := fx.c.Path(dxQ.Identity()); !ok {
		t.Error("a validly signed hello from a new identity added no peer")
	}
}

// fastBatch returns a batch of 16 QUIC packets from known sources, every
// other one in a relay frame of our session, and a function that restores
// it (demux rewrites addresses and unwraps frames in place) and dispatches
// it.
func fastBatch(t testing.TB, fx *demuxFixture) func() {
	short := append([]byte{0x41}, make([]byte, 1200)...)
	ms := make([]ipv4.Message, 16)
	srcs := make([]net.Addr, len(ms))
	lens := make([]int, len(ms))
	for i := range ms {
		if i%2 == 0 {
			ms[i] = dxMsg(short, dxAddr1)
		} else {
			ms[i] = dxMsg(append(wire.AppendRelayHeader(nil, wire.RelayHeader{Session: dxSession}), short...), dxRelay)
		}
		srcs[i], lens[i] = ms[i].Addr, ms[i].N
	}
	return func() {
		for i := range ms {
			ms[i].Addr, ms[i].N = srcs[i], lens[i]
			if i%2 == 1 {
				wire.AppendRelayHeader(ms[i].Buffers[0][:0], wire.RelayHeader{Session: dxSession})
				copy(ms[i].Buffers[0][wire.RelayHeaderSize:], short)
			}
		}
		if n := fx.c.demux(ms, len(ms), fx.now); n != len(ms) {
			t.Fatalf("%d of %d delivered", n, len(ms))
		}
	}
}

// TestDemuxFastPathAllocs: QUIC packets from a known source, direct or in
// a relay frame of our session, are dispatched without allocating.
func TestDemuxFastPathAllocs(t *testing.T) {
	fx := newDemuxFixture(t)
	defer fx.c.Close()
	run := fastBatch(t, fx)
	if allocs := testing.AllocsPerRun(200, run); allocs != 0 {
		t.Fatalf("%v allocations per batch of 16", allocs)
	}
}

// BenchmarkDemux measures the dispatch of a batch of 16 QUIC packets (half
// relayed) from known sources, without the socket.
func BenchmarkDemux(b *testing.B) {
	fx := newDemuxFixture(b)
	defer fx.c.Close()
	run := fastBatch(b, fx)
	b.ReportAllocs()
	for b.Loop() {
		run()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*16), "ns/packet")
}
