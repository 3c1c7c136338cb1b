package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/korium/korium-tun/firewall"
	"github.com/korium/korium-tun/peers"
)

// The firewall hook, attacked through the engine's own entry points: a
// receiver's accept + filterIn for what peers send, the device read loop
// for what we send.

// tcp6 is a TCP SYN from src:sport to dst:dport.
func tcp6(src, dst netip.Addr, sport, dport uint16) []byte {
	p := udp6(src, dst, make([]byte, 12)) // 8 + 12 bytes: a 20-byte TCP header
	p[6] = 6
	binary.BigEndian.PutUint16(p[40:], sport)
	binary.BigEndian.PutUint16(p[42:], dport)
	p[52], p[53] = 5<<4, 0x02
	return p
}

// newFirewallEngine is a test engine behind a firewall with rules (%s in a
// rule is replaced by the identity of ps[0]).
func newFirewallEngine(t testing.TB, cfg firewall.Config, rules []string, spiffe func(*peers.Peer) (*atomic.Pointer[string], *atomic.Int64), ps ...*peers.Peer) *Engine {
	t.Helper()
	for _, r := range rules {
		rule, err := firewall.ParseRule(strings.ReplaceAll(r, "%s", ps[0].ID.String()))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Rules = append(cfg.Rules, rule)
	}
	fw, err := firewall.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := newTestEngine(t, func(c *Config) { c.Firewall, c.FirewallSPIFFE = fw, spiffe }, ps...)
	return e
}

// in is what the receiver does with one datagram from p.
func (e *Engine) in(fp *firewall.Peer, p *peers.Peer, d []byte) bool {
	return e.accept(p, d) && e.filterIn(fp, d)
}

// A opens tcp/8080 to B only: B's SYN passes, C's is dropped and shown
// with C's identity and port; pings and replies to our flows pass.
func TestFirewallHookRules(t *testing.T) {
	b, c := testPeer(1), testPeer(2)
	e := newFirewallEngine(t, firewall.Config{}, []string{"%s tcp/8080"}, nil, b, c)
	fb, fc := e.firewallPeer(b), e.firewallPeer(c)
	us := e.cfg.Addr
	if !e.in(fb, b, tcp6(b.Addr, us, 40000, 8080)) {
		t.Fatal("B's SYN to 8080 dropped")
	}
	if e.in(fc, c, tcp6(c.Addr, us, 40000, 8080)) {
		t.Fatal("C's SYN to 8080 passed")
	}
	if e.in(fb, b, tcp6(b.Addr, us, 40000, 22)) {
		t.Fatal("B's SYN to 22 passed")
	}
	ping := udp6(c.Addr, us, make([]byte, 8))
	ping[6], ping[40] = 58, 128
	if !e.in(fc, c, ping) {
		t.Fatal("C's echo request dropped")
	}
	d := e.cfg.Firewall.RecentDrops()
	if len(d) != 2 || d[1].Peer != c.ID || d[1].Proto != "tcp" || d[1].Port != 8080 || d[1].Reason != "no_rule" {
		t.Fatalf("recent drops %+v", d)
	}
	if n := e.cfg.Firewall.Dropped(firewall.DropNoRule); n != 2 {
		t.Fatalf("no_rule drops %d, want 2", n)
	}
}

// The read loop tracks what it sends, also a packet it only holds while
// the destination is resolved: the answer passes, the same ports from
// another peer do not.
func TestFirewallHookTracksDeviceFlows(t *testing.T) {
	b, c := testPeer(1), testPeer(2)
	e := newFirewallEngine(t, firewall.Config{}, nil, nil, c)
	peers.NewSnapshot(b) // gives b a clock; the engine's peers do not have it
	dev := e.dev.(*memDevice)
	us := e.cfg.Addr
	dev.Send(tcp6(us, b.Addr, 40000, 443)) // b is not connected: held, then failed
	deadline := time.Now().Add(10 * time.Second)
	for e.cfg.Firewall.Stats().Flows == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the read loop did not track the flow")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !e.in(e.firewallPeer(b), b, tcp6(b.Addr, us, 443, 40000)) {
		t.Fatal("the answer to our own flow was dropped")
	}
	if e.in(e.firewallPeer(c), c, tcp6(c.Addr, us, 443, 40000)) {
		t.Fatal("another peer's packet on our flow's ports passed")
	}
}

// C sends with B's address as source, on B's admitted flow and on our
// flow with B: accept drops it (rx_spoofed_source), and so would the
// firewall on its own.
func TestFirewallHookSpoofedSource(t *testing.T) {
	b, c := testPeer(1), testPeer(2)
	e := newFirewallEngine(t, firewall.Config{}, []string{"%s tcp/8080"}, nil, b, c)
	fb, fc := e.firewallPeer(b), e.firewallPeer(c)
	us := e.cfg.Addr
	e.trackOut(tcp6(us, b.Addr, 40001, 443))
	if !e.in(fb, b, tcp6(b.Addr, us, 40000, 8080)) || !e.in(fb, b, tcp6(b.Addr, us, 443, 40001)) {
		t.Fatal("B's own packets dropped")
	}
	for _, pkt := range [][]byte{tcp6(b.Addr, us, 40000, 8080), tcp6(b.Addr, us, 443, 40001)} {
		if e.in(fc, c, pkt) {
			t.Fatal("C passed with B's source")
		}
		if e.filterIn(fc, pkt) {
			t.Fatal("the firewall alone let C pass with B's source")
		}
	}
	if n := e.Counters.RxSpoofedSource.Load(); n != 2 {
		t.Fatalf("rx_spoofed_source %d, want 2", n)
	}
	if n := e.cfg.Firewall.Dropped(firewall.DropSpoofed); n != 2 {
		t.Fatalf("firewall spoofed drops %d, want 2", n)
	}
}

// One peer opening flows without end, under a rule that admits them all,
// tracks at most its cap, and cannot push out our flows or another peer's;
// many peers together fill the table, which stays at its size, evicts
// (counted), and still answers our newest flows.
func TestFirewallHookFloodOfFlows(t *testing.T) {
	b, c := testPeer(1), testPeer(2)
	e := newFirewallEngine(t, firewall.Config{MaxFlows: 1024, MaxInboundFlowsPerPeer: 32}, []string{"* udp"}, nil, b, c)
	fb, fc := e.firewallPeer(b), e.firewallPeer(c)
	us := e.cfg.Addr
	for i := range 100 {
		e.trackOut(udp6port(us, b.Addr, uint16(20000+i), 53))
	}
	if !e.in(fb, b, udp6port(b.Addr, us, 9, 7000)) {
		t.Fatal("B's flow dropped")
	}
	for i := range 100000 {
		e.in(fc, c, udp6port(c.Addr, us, uint16(i), uint16(i>>4)+1))
	}
	st := e.cfg.Firewall.Stats()
	if st.Flows > 32+100+1 || st.Untracked == 0 {
		t.Fatalf("after C's flood: %d flows tracked, %d untracked (cap 32 for C)", st.Flows, st.Untracked)
	}
	// Now only tracked flows pass: ours and B's survived C's flood.
	if _, err := e.cfg.Firewall.Reload(firewall.Config{}, e.fw.clock.Load()); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if !e.in(fb, b, udp6port(b.Addr, us, 53, uint16(20000+i))) {
			t.Fatalf("our flow %d lost to C's flood", i)
		}
	}

	// 200 peers, 32 flows each: 6,400 flows for 1,024 places.
	e.cfg.Firewall.Reload(firewall.Config{Rules: mustRules(t, "* udp")}, e.fw.clock.Load())
	for k := range 200 {
		p := testPeer(byte(10 + k))
		peers.NewSnapshot(p)
		fp := e.firewallPeer(p)
		for i := range 32 {
			e.in(fp, p, udp6port(p.Addr, us, uint16(i+1), 5000))
		}
	}
	st = e.cfg.Firewall.Stats()
	if st.Flows > st.MaxFlows || st.MaxFlows != 1024 || st.Evicted == 0 {
		t.Fatalf("table full: %d flows, max %d, evicted %d", st.Flows, st.MaxFlows, st.Evicted)
	}
	e.trackOut(udp6port(us, b.Addr, 30000, 53))
	if !e.in(fb, b, udp6port(b.Addr, us, 53, 30000)) {
		t.Fatal("our newest flow is not tracked in a full table")
	}
}

// SPIFFE patterns match only the ID FirewallSPIFFE vouches for, until its
// expiry.
func TestFirewallHookSPIFFE(t *testing.T) {
	b, c := testPeer(1), testPeer(2)
	var expiry atomic.Int64
	expiry.Store(time.Now().Add(time.Hour).UnixNano())
	var sid atomic.Pointer[string]
	web := "spiffe://corp.example/" + b.ID.String() + "/web"
	sid.Store(&web)
	vouch := func(p *peers.Peer) (*atomic.Pointer[string], *atomic.Int64) {
		if p == b {
			return &sid, &expiry
		}
		return nil, nil // c's certificate claims one too, but no CA signed it
	}
	e := newFirewallEngine(t, firewall.Config{}, []string{"spiffe://corp.example/*/web tcp/443"}, vouch, b, c)
	us := e.cfg.Addr
	if !e.in(e.firewallPeer(b), b, tcp6(b.Addr, us, 1, 443)) {
		t.Fatal("B's vouched SPIFFE ID did not match")
	}
	if e.in(e.firewallPeer(c), c, tcp6(c.Addr, us, 1, 443)) {
		t.Fatal("C matched without a vouched SPIFFE ID")
	}
	expiry.Store(time.Now().Add(-time.Second).UnixNano())
	if e.in(e.firewallPeer(b), b, tcp6(b.Addr, us, 2, 443)) {
		t.Fatal("B matched after its certificate expired")
	}
}

// The hook adds no allocation to the per-packet path, with 100 rules.
func TestFirewallHookAllocatesNothing(t *testing.T) {
	b := testPeer(1)
	e := newFirewallEngine(t, firewall.Config{}, rules100(), nil, b)
	fb := e.firewallPeer(b)
	us := e.cfg.Addr
	out, reply, admitted := tcp6(us, b.Addr, 40000, 443), tcp6(b.Addr, us, 443, 40000), tcp6(b.Addr, us, 1, 8080)
	e.trackOut(out)
	e.in(fb, b, admitted)
	for name, f := range map[string]func(){
		"outbound": func() { e.trackOut(out) },
		"reply": func() {
			if !e.in(fb, b, reply) {
				t.Fatal("reply dropped")
			}
		},
		"admitted": func() {
			if !e.in(fb, b, admitted) {
				t.Fatal("admitted flow dropped")
			}
		},
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %v allocations per packet", name, n)
		}
	}
}

func udp6port(src, dst netip.Addr, sport, dport uint16) []byte {
	p := udp6(src, dst, make([]byte, 32))
	binary.BigEndian.PutUint16(p[40:], sport)
	binary.BigEndian.PutUint16(p[42:], dport)
	return p
}

func mustRules(t testing.TB, ss ...string) []firewall.Rule {
	t.Helper()
	r, err := firewall.ParseRules(ss)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// rules100 is a rule set of 100: 99 ports for everyone, and tcp/8080 for
// the first peer.
func rules100() []string {
	var rs []string
	for i := range 99 {
		rs = append(rs, fmt.Sprintf("* tcp/%d", 2000+2*i))
	}
	return append(rs, "%s tcp/8080")
}

// BenchmarkFirewallInbound: accept and the firewall for a packet of an
// admitted flow, 100 rules loaded (compare BenchmarkAcceptInbound).
func BenchmarkFirewallInbound(b *testing.B) {
	p := testPeer(1)
	e := newFirewallEngine(b, firewall.Config{}, rules100(), nil, p)
	fp := e.firewallPeer(p)
	in := tcp6(p.Addr, e.cfg.Addr, 1, 8080)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		e.in(fp, p, in)
	}
}

// BenchmarkFirewallOutbound: tracking one packet we send.
func BenchmarkFirewallOutbound(b *testing.B) {
	p := testPeer(1)
	e := newFirewallEngine(b, firewall.Config{}, rules100(), nil, p)
	out := tcp6(e.cfg.Addr, p.Addr, 40000, 443)
	b.ReportAllocs()
	for b.Loop() {
		e.trackOut(out)
	}
}

// FuzzFirewallHook: any datagram from a peer, against a rule set, is
// either dropped and counted (by accept or by the firewall) or comes from
// the peer's own address to ours; the flow table never outgrows its cap.
func FuzzFirewallHook(f *testing.F) {
	p := testPeer(1)
	e := newFirewallEngine(f, firewall.Config{MaxFlows: 256}, []string{"%s tcp/8080", "* udp/53"}, nil, p)
	fp := e.firewallPeer(p)
	self := e.cfg.Addr
	f.Add(tcp6(p.Addr, self, 1, 8080))
	f.Add(udp6port(p.Addr, self, 1, 53))
	f.Add(tcp6(self, p.Addr, 1, 8080))
	f.Add([]byte{0x60})
	fw := e.cfg.Firewall
	dropped := func() uint64 {
		c := &e.Counters
		n := c.RxMalformed.Load() + c.RxSpoofedSource.Load() + c.RxNotForUs.Load()
		for _, v := range fw.Stats().Dropped {
			n += v
		}
		return n
	}
	f.Fuzz(func(t *testing.T, d []byte) {
		before := dropped()
		ok := e.in(fp, p, d)
		e.trackOut(d)
		if !ok {
			if dropped() != before+1 {
				t.Fatal("a dropped datagram was not counted once")
			}
			return
		}
		if len(d) < 40 || [16]byte(d[8:24]) != p.Addr.As16() || [16]byte(d[24:40]) != self.As16() {
			t.Fatalf("passed a datagram not from the peer to us: %x", d[:min(len(d), 40)])
		}
		if st := fw.Stats(); st.Flows > st.MaxFlows {
			t.Fatalf("%d flows, cap %d", st.Flows, st.MaxFlows)
		}
	})
}
