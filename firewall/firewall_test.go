package firewall

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// node is a peer of the tests: an identity and its SmartAddr.
type node struct {
	id   pki.Identity
	addr netip.Addr
}

func newNode(t testing.TB) node {
	t.Helper()
	kp, err := pki.GenerateKeypair(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return node{kp.Identity(), smartaddr.FromIdentity(kp.Identity())}
}

// pkt builds an IPv6 packet from src to dst with the given next header and
// transport header bytes (plus 8 bytes of payload).
func pkt(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	b := make([]byte, 40, 40+len(l4)+8)
	b[0] = 6 << 4
	b[6], b[7] = proto, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	b = append(b, l4...)
	b = append(b, make([]byte, 8)...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

func tcp(src, dst netip.Addr, sport, dport uint16) []byte {
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	l4[12], l4[13] = 5<<4, 0x02 // SYN
	return pkt(src, dst, 6, l4)
}

func udp(src, dst netip.Addr, sport, dport uint16) []byte {
	l4 := make([]byte, 8)
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	return pkt(src, dst, 17, l4)
}

func icmp(src, dst netip.Addr, typ uint8, ident uint16) []byte {
	l4 := make([]byte, 8)
	l4[0] = typ
	binary.BigEndian.PutUint16(l4[4:], ident)
	return pkt(src, dst, 58, l4)
}

// icmpErr builds an ICMPv6 error message of type typ quoting the packet q.
func icmpErr(src, dst netip.Addr, typ uint8, q []byte) []byte {
	l4 := make([]byte, 8, 8+len(q))
	l4[0] = typ
	return pkt(src, dst, 58, append(l4, q...))
}

type fixture struct {
	t     *testing.T
	fw    *Firewall
	us    node
	b, c  node
	pb    *Peer
	pc    *Peer
	clock int64
}

func newFixture(t *testing.T, cfg Config, rules ...string) *fixture {
	t.Helper()
	f := &fixture{t: t, us: newNode(t), b: newNode(t), c: newNode(t), clock: time.Now().UnixNano()}
	var err error
	for _, r := range rules {
		r = strings.ReplaceAll(r, "%s", f.b.id.String())
		rule, err := ParseRule(r)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Rules = append(cfg.Rules, rule)
	}
	if f.fw, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	f.pb = f.fw.NewPeer(f.b.id, "spiffe://corp.example/web/b")
	f.pc = f.fw.NewPeer(f.c.id, "")
	return f
}

func (f *fixture) in(p *Peer, pk []byte, want Verdict) {
	f.t.Helper()
	if got := f.fw.Inbound(p, pk, f.clock); got != want {
		f.t.Fatalf("Inbound = %v, want %v", got, want)
	}
}

func TestParseRule(t *testing.T) {
	id := newNode(t).id
	for _, s := range []string{
		"* tcp/22", "* tcp/1-1024", id.String() + " udp/5000-5100", "spiffe://corp.example/web/* tcp/443",
		"spiffe://corp.example/*/web tcp/80", "* icmp", id.String() + " any", "* udp",
	} {
		r, err := ParseRule(s)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", s, err)
			continue
		}
		if r.String() != s {
			t.Errorf("ParseRule(%q).String() = %q", s, r.String())
		}
	}
	for _, s := range []string{
		"", "*", "* tcp/22 extra", "* sctp/1", "* tcp/0", "* tcp/65536", "* tcp/22-21", "* tcp/x", "* tcp/022",
		"* icmp/8", "* any/1", "abc tcp/22", "spiffe://corp.example tcp/1", "spiffe://*/x tcp/1",
		"spiffe://corp.example/we*b tcp/1", "spiffe://corp.example/../x tcp/1", "spiffe://corp.example//x tcp/1",
		"0000000000000000000000000000000000000000000000000000000000000000 tcp/22", // not a valid key
	} {
		if _, err := ParseRule(s); !errors.Is(err, ErrBadRule) {
			t.Errorf("ParseRule(%q) err = %v, want ErrBadRule", s, err)
		}
	}
}

func TestMatchSPIFFE(t *testing.T) {
	for _, c := range []struct {
		pat, id string
		want    bool
	}{
		{"spiffe://td/web/*", "spiffe://td/web/a", true},
		{"spiffe://td/web/*", "spiffe://td/web/a/b", true},
		{"spiffe://td/web/*", "spiffe://td/web", false},
		{"spiffe://td/web/*", "spiffe://td/db/a", false},
		{"spiffe://td/web/*", "spiffe://other/web/a", false},
		{"spiffe://td/*/web", "spiffe://td/5f1c/web", true},
		{"spiffe://td/*/web", "spiffe://td/5f1c/web/x", false},
		{"spiffe://td/*/web", "spiffe://td/5f1c/db", false},
		{"spiffe://td/a/b", "spiffe://td/a/b", true},
		{"spiffe://td/a/b", "spiffe://td/a/b/c", false},
		{"spiffe://td/a/b", "spiffe://td/a", false},
		{"spiffe://td/a/*", "spiffe://td/a//", false},
		{"spiffe://td/a/*", "td/a/b", false},
	} {
		r, err := ParseRule(c.pat + " tcp/1")
		if err != nil {
			t.Fatal(err)
		}
		if got := matchSPIFFE(r.spiffe, c.id); got != c.want {
			t.Errorf("match(%s, %s) = %v, want %v", c.pat, c.id, got, c.want)
		}
	}
}

func TestDefaultDenyKeepsICMP(t *testing.T) {
	f := newFixture(t, Config{})
	b, us := f.b.addr, f.us.addr
	f.in(f.pb, tcp(b, us, 5555, 22), DropNoRule)
	f.in(f.pb, udp(b, us, 5555, 53), DropNoRule)
	f.in(f.pb, icmp(b, us, icmpEchoRequest, 1), PassICMP)
	f.in(f.pb, icmpErr(b, us, 2, tcp(us, b, 40000, 443)), PassICMP) // Packet Too Big
	f.in(f.pb, icmpErr(b, us, 1, udp(us, b, 40000, 53)), PassICMP)  // Destination Unreachable
	f.in(f.pb, icmp(b, us, icmpEchoReply, 1), DropNoRule)
	f.in(f.pb, pkt(b, us, 132, make([]byte, 8)), DropNoRule) // SCTP
	if got := f.fw.Dropped(DropNoRule); got != 4 {
		t.Fatalf("no_rule drops = %d, want 4", got)
	}
}

// An ICMPv6 error passes only when it quotes a packet we sent to its
// sender: b cannot shrink or reset our flows with c by quoting them, nor
// send an error that quotes nothing.
func TestForgedICMPErrors(t *testing.T) {
	f := newFixture(t, Config{Default: Allow})
	b, c, us := f.b.addr, f.c.addr, f.us.addr
	f.in(f.pb, icmpErr(b, us, 2, tcp(us, c, 40000, 443)), DropICMPForged) // about our flow with c
	f.in(f.pb, icmpErr(b, us, 1, tcp(c, us, 443, 40000)), DropICMPForged) // quoting c's packet
	f.in(f.pb, icmp(b, us, 2, 0), DropICMPForged)                         // quotes nothing
	// pkt pads every packet with 8 bytes: a quote of 31 is 39 in all, one
	// short of an IPv6 header.
	f.in(f.pb, icmpErr(b, us, 2, tcp(us, b, 40000, 443)[:31]), DropICMPForged)
	f.in(f.pb, icmpErr(b, us, 2, tcp(us, b, 40000, 443)[:40]), PassICMP) // a header is enough
}

// A peer cannot use another peer's address to ride its flows or its rules:
// the firewall checks the source itself, whatever its caller did.
func TestSpoofedSource(t *testing.T) {
	f := newFixture(t, Config{}, "%s tcp/8080")
	b, us := f.b.addr, f.us.addr
	f.fw.Outbound(tcp(us, b, 40000, 443), f.clock)
	f.in(f.pc, tcp(b, us, 443, 40000), DropSpoofed) // c claims b's reply
	f.in(f.pc, tcp(b, us, 1000, 8080), DropSpoofed) // c claims b's rule
	f.in(f.pc, icmp(b, us, icmpEchoRequest, 1), DropSpoofed)
	f.in(f.pb, tcp(b, us, 443, 40000), PassFlow)
	if d := f.fw.RecentDrops(); len(d) == 0 || d[0].Peer != f.c.id || d[0].Reason != "spoofed" {
		t.Fatalf("recent drops %+v", d)
	}
}

// A SPIFFE ID given with an expiry stops counting once it passes (flows
// it admitted included) and counts again when a renewal pushes it.
func TestSPIFFEExpiry(t *testing.T) {
	f := newFixture(t, Config{}, "spiffe://corp.example/* tcp/443")
	b, us := f.b.addr, f.us.addr
	var until atomic.Int64
	until.Store(f.clock + int64(time.Minute))
	var sid atomic.Pointer[string]
	id := "spiffe://corp.example/" + f.b.id.String()
	sid.Store(&id)
	p := f.fw.NewPeerVouched(f.b.id, &sid, &until)
	f.in(p, tcp(b, us, 1000, 443), PassRule)
	f.clock += int64(2 * time.Minute)
	f.in(p, tcp(b, us, 1000, 443), DropNoRule) // its flow goes with it
	f.in(p, tcp(b, us, 1001, 443), DropNoRule)
	until.Store(f.clock + int64(time.Hour)) // renewed
	f.clock += int64(2 * time.Second)       // rechecked within a second
	f.in(p, tcp(b, us, 1001, 443), PassRule)
	// Without a SPIFFE ID, or another trust domain, the rule never applies.
	f.in(f.fw.NewPeer(f.b.id, ""), tcp(b, us, 1002, 443), DropNoRule)
	f.in(f.fw.NewPeer(f.b.id, "spiffe://evil.example/"+f.b.id.String()), tcp(b, us, 1003, 443), DropNoRule)
}

// A renewed certificate naming another workload replaces the SPIFFE ID the
// rules see at the peer's next packet: what the old name admitted (its
// flows included) stops passing, what the new one admits passes.
func TestSPIFFERenamed(t *testing.T) {
	f := newFixture(t, Config{}, "spiffe://corp.example/*/admin tcp/22", "spiffe://corp.example/*/web tcp/443")
	b, us := f.b.addr, f.us.addr
	var sid atomic.Pointer[string]
	admin, web := "spiffe://corp.example/"+f.b.id.String()+"/admin", "spiffe://corp.example/"+f.b.id.String()+"/web"
	sid.Store(&admin)
	p := f.fw.NewPeerVouched(f.b.id, &sid, nil)
	f.in(p, tcp(b, us, 1000, 22), PassRule)
	f.in(p, tcp(b, us, 1001, 443), DropNoRule)
	sid.Store(&web)                           // the CA renamed it
	f.in(p, tcp(b, us, 1000, 22), DropNoRule) // its admin flow goes with the name
	f.in(p, tcp(b, us, 1002, 22), DropNoRule)
	f.in(p, tcp(b, us, 1001, 443), PassRule)
	sid.Store(nil) // no vouched name at all
	f.in(p, tcp(b, us, 1003, 443), DropNoRule)
}

func TestRepliesToOurFlowsPass(t *testing.T) {
	f := newFixture(t, Config{})
	b, c, us := f.b.addr, f.c.addr, f.us.addr
	f.fw.Outbound(tcp(us, b, 40000, 80), f.clock)
	f.in(f.pb, tcp(b, us, 80, 40000), PassFlow)
	f.in(f.pc, tcp(c, us, 80, 40000), DropNoRule) // same ports, other peer
	f.in(f.pb, tcp(b, us, 81, 40000), DropNoRule)
	f.in(f.pb, udp(b, us, 80, 40000), DropNoRule) // other protocol

	f.fw.Outbound(icmp(us, b, icmpEchoRequest, 7), f.clock)
	f.in(f.pb, icmp(b, us, icmpEchoReply, 7), PassFlow)
	f.in(f.pb, icmp(b, us, icmpEchoReply, 8), DropNoRule)

	f.fw.Outbound(udp(us, b, 5353, 53), f.clock)
	f.in(f.pb, udp(b, us, 53, 5353), PassFlow)
}

func TestRulesAdmitByIdentityAndSPIFFE(t *testing.T) {
	f := newFixture(t, Config{}, "%s tcp/8080", "spiffe://corp.example/web/* tcp/443", "* udp/5000-5100")
	b, c, us := f.b.addr, f.c.addr, f.us.addr
	f.in(f.pb, tcp(b, us, 1000, 8080), PassRule)
	f.in(f.pb, tcp(b, us, 1000, 8080), PassFlow)
	f.in(f.pc, tcp(c, us, 1000, 8080), DropNoRule)
	f.in(f.pb, tcp(b, us, 1001, 443), PassRule) // b's SPIFFE ID matches
	f.in(f.pc, tcp(c, us, 1001, 443), DropNoRule)
	f.in(f.pc, udp(c, us, 9, 5000), PassRule)
	f.in(f.pc, udp(c, us, 9, 5100), PassRule)
	f.in(f.pc, udp(c, us, 9, 5101), DropNoRule)
	f.in(f.pc, udp(c, us, 9, 4999), DropNoRule)
}

func TestDefaultAllow(t *testing.T) {
	f := newFixture(t, Config{Default: Allow})
	f.in(f.pc, tcp(f.c.addr, f.us.addr, 1, 22), PassDefault)
	f.in(f.pc, tcp(f.c.addr, f.us.addr, 1, 22), PassFlow)
}

func TestReloadKeepsAllowedFlows(t *testing.T) {
	f := newFixture(t, Config{}, "%s tcp/8080")
	b, us := f.b.addr, f.us.addr
	f.in(f.pb, tcp(b, us, 1000, 8080), PassRule)   // b's flow, admitted
	f.fw.Outbound(tcp(us, b, 8080, 1000), f.clock) // our reply on it: still b's flow
	f.fw.Outbound(tcp(us, b, 40000, 443), f.clock) // our own flow
	rules, _ := f.fw.Rules()
	if n, err := f.fw.Reload(Config{Rules: rules}, f.clock); err != nil || n != 0 { // same rules
		t.Fatal(n, err)
	}
	f.in(f.pb, tcp(b, us, 1000, 8080), PassFlow)
	if n, err := f.fw.Reload(Config{}, f.clock); err != nil || n != 1 { // rule gone: b's flow goes now
		t.Fatalf("reload dropped %d flows (%v), want 1", n, err)
	}
	if st := f.fw.Stats(); st.Flows != 1 {
		t.Fatalf("%d flows tracked after the reload, want ours only", st.Flows)
	}
	f.in(f.pb, tcp(b, us, 1000, 8080), DropNoRule)
	f.in(f.pb, tcp(b, us, 443, 40000), PassFlow) // replies to our own flow still pass
	if _, err := f.fw.Reload(Config{Default: Allow}, f.clock); err != nil {
		t.Fatal(err)
	}
	f.in(f.pb, tcp(b, us, 1000, 8080), PassDefault)
}

func TestFlowsExpire(t *testing.T) {
	f := newFixture(t, Config{UDPTimeout: time.Second})
	b, us := f.b.addr, f.us.addr
	f.fw.Outbound(udp(us, b, 5353, 53), f.clock)
	f.clock += int64(900 * time.Millisecond)
	f.in(f.pb, udp(b, us, 53, 5353), PassFlow) // refreshes
	f.clock += int64(900 * time.Millisecond)
	f.in(f.pb, udp(b, us, 53, 5353), PassFlow)
	f.clock += int64(1100 * time.Millisecond)
	f.in(f.pb, udp(b, us, 53, 5353), DropNoRule)
}

// A peer the rules admit on every port cannot fill the table: it tracks at
// most MaxInboundFlowsPerPeer of its flows, and our own flows survive.
func TestPeerCannotFillTheTable(t *testing.T) {
	f := newFixture(t, Config{MaxFlows: 4096, MaxInboundFlowsPerPeer: 64}, "* udp")
	b, c, us := f.b.addr, f.c.addr, f.us.addr
	for i := 0; i < 200; i++ {
		f.fw.Outbound(udp(us, b, uint16(10000+i), 53), f.clock)
	}
	for i := 0; i < 50000; i++ {
		f.fw.Inbound(f.pc, udp(c, us, uint16(i), uint16(i>>3)+1), f.clock)
	}
	if n := f.pc.inbound.Load(); n > 64 {
		t.Fatalf("peer tracks %d flows, cap 64", n)
	}
	if f.fw.untrack.Load() == 0 {
		t.Fatal("untracked counter did not move")
	}
	f.fw.Reload(Config{}, f.clock) // now only tracked flows pass
	for i := 0; i < 200; i++ {
		f.in(f.pb, udp(b, us, 53, uint16(10000+i)), PassFlow)
	}
}

func TestTableBoundedAndEvicts(t *testing.T) {
	f := newFixture(t, Config{MaxFlows: 64})
	us, b := f.us.addr, f.b.addr
	for i := 0; i < 10000; i++ {
		f.clock++
		f.fw.Outbound(udp(us, b, uint16(i), 53), f.clock)
	}
	st := f.fw.Stats()
	if st.Flows > st.MaxFlows || st.MaxFlows != 64 {
		t.Fatalf("flows %d, max %d", st.Flows, st.MaxFlows)
	}
	if st.Evicted == 0 {
		t.Fatal("no eviction counted")
	}
	// The newest flow is there.
	f.in(f.pb, udp(b, us, 53, 9999), PassFlow)
}

func TestFragments(t *testing.T) {
	f := newFixture(t, Config{}, "* udp/53")
	b, us := f.b.addr, f.us.addr
	frag := func(offset uint16, l4 []byte) []byte {
		h := make([]byte, 8)
		h[0] = 17 // next: UDP
		binary.BigEndian.PutUint16(h[2:], offset<<3|1)
		return pkt(b, us, 44, append(h, l4...))
	}
	b, us = f.b.addr, f.us.addr
	first := make([]byte, 8)
	binary.BigEndian.PutUint16(first[0:], 9)
	binary.BigEndian.PutUint16(first[2:], 53)
	f.in(f.pb, frag(0, first), PassRule)
	f.in(f.pb, frag(100, make([]byte, 8)), DropFragment)
	g := newFixture(t, Config{Default: Allow})
	b, us = g.b.addr, g.us.addr
	g.in(g.pb, frag(100, make([]byte, 8)), PassDefault)
}

func TestMalformed(t *testing.T) {
	f := newFixture(t, Config{Default: Allow})
	b, us := f.b.addr, f.us.addr
	short := tcp(b, us, 1, 2)[:42]
	f.in(f.pb, short, DropMalformed)
	hop := pkt(b, us, 0, []byte{6, 200, 0, 0, 0, 0, 0, 0}) // hop-by-hop claims 1608 bytes
	f.in(f.pb, hop, DropMalformed)
	// A chain of nine destination-options headers is refused.
	var chain []byte
	for i := 0; i < 9; i++ {
		chain = append(chain, 60, 0, 0, 0, 0, 0, 0, 0)
	}
	f.in(f.pb, pkt(b, us, 60, chain), DropMalformed)
}

func TestRecentDrops(t *testing.T) {
	f := newFixture(t, Config{})
	c, us := f.c.addr, f.us.addr
	for i := 0; i < 3; i++ {
		f.fw.Inbound(f.pc, tcp(c, us, uint16(1000+i), 22), f.clock)
	}
	f.fw.Inbound(f.pb, udp(f.b.addr, us, 1, 5432), f.clock)
	d := f.fw.RecentDrops()
	if len(d) != 2 {
		t.Fatalf("recent drops %+v", d)
	}
	if d[0].Peer != f.b.id || d[0].Proto != "udp" || d[0].Port != 5432 || d[0].Reason != "no_rule" {
		t.Errorf("newest drop %+v", d[0])
	}
	if d[1].Peer != f.c.id || d[1].Proto != "tcp" || d[1].Port != 22 || d[1].Count != 3 {
		t.Errorf("older drop %+v", d[1])
	}
	for i := 0; i < 100; i++ {
		f.fw.Inbound(f.pc, tcp(c, us, 1, uint16(i+1)), f.clock)
	}
	if n := len(f.fw.RecentDrops()); n != MaxRecentDrops {
		t.Fatalf("%d recent drops kept, want %d", n, MaxRecentDrops)
	}
}

func TestPerPacketPathAllocatesNothing(t *testing.T) {
	var rules []string
	for i := 0; i < 99; i++ {
		rules = append(rules, fmt.Sprintf("* tcp/%d", 2000+2*i))
	}
	f := newFixture(t, Config{}, append(rules, "%s tcp/8080")...)
	b, us := f.b.addr, f.us.addr
	out := tcp(us, b, 40000, 443)
	reply := tcp(b, us, 443, 40000)
	admitted := tcp(b, us, 1000, 8080)
	denied := tcp(b, us, 1000, 22)
	ptb := icmpErr(b, us, 2, tcp(us, b, 40000, 443))
	f.fw.Outbound(out, f.clock)
	f.fw.Inbound(f.pb, admitted, f.clock) // compiles b's rules once
	for name, fn := range map[string]func(){
		"outbound": func() { f.fw.Outbound(out, f.clock) },
		"reply":    func() { f.fw.Inbound(f.pb, reply, f.clock) },
		"admitted": func() { f.fw.Inbound(f.pb, admitted, f.clock) },
		"denied":   func() { f.fw.Inbound(f.pb, denied, f.clock) },
		"icmp":     func() { f.fw.Inbound(f.pb, ptb, f.clock) },
	} {
		if n := testing.AllocsPerRun(1000, fn); n != 0 {
			t.Errorf("%s: %v allocations per packet", name, n)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, Config{MaxFlows: 1024}, "* udp/1-30000")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				now := time.Now().UnixNano()
				f.fw.Outbound(udp(f.us.addr, f.b.addr, uint16(i), 53), now)
				f.fw.Inbound(f.pb, udp(f.b.addr, f.us.addr, 53, uint16(i)), now)
				f.fw.Inbound(f.pc, udp(f.c.addr, f.us.addr, uint16(i), uint16(i)), now)
			}
		}()
	}
	for i := 0; i < 20; i++ {
		rules, _ := f.fw.Rules()
		f.fw.Reload(Config{Rules: rules}, time.Now().UnixNano())
		f.fw.Stats()
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if n := f.pc.inbound.Load(); n < 0 || n > int32(1024) {
		t.Fatalf("peer flow count %d out of range", n)
	}
}

func BenchmarkInboundReply(b *testing.B) {
	f := newFixture(&testing.T{}, Config{})
	f.fw.Outbound(tcp(f.us.addr, f.b.addr, 40000, 443), f.clock)
	p := tcp(f.b.addr, f.us.addr, 443, 40000)
	b.ReportAllocs()
	for b.Loop() {
		f.fw.Inbound(f.pb, p, f.clock)
	}
}

func BenchmarkInboundRule100(b *testing.B) {
	var rules []string
	for i := 0; i < 100; i++ {
		rules = append(rules, fmt.Sprintf("* tcp/%d", 2000+2*i))
	}
	f := newFixture(&testing.T{}, Config{}, rules...)
	p := tcp(f.b.addr, f.us.addr, 1000, 2198)
	b.ReportAllocs()
	for b.Loop() {
		f.fw.Inbound(f.pb, p, f.clock)
	}
}

func BenchmarkOutbound(b *testing.B) {
	f := newFixture(&testing.T{}, Config{})
	p := tcp(f.us.addr, f.b.addr, 40000, 443)
	b.ReportAllocs()
	for b.Loop() {
		f.fw.Outbound(p, f.clock)
	}
}

func FuzzInbound(f *testing.F) {
	us, peer := newNode(f), newNode(f)
	f.Add(tcp(peer.addr, us.addr, 1, 22))
	f.Add(udp(peer.addr, us.addr, 1, 53))
	f.Add(icmp(peer.addr, us.addr, 128, 1))
	f.Add(pkt(peer.addr, us.addr, 44, make([]byte, 16)))
	f.Add(pkt(peer.addr, us.addr, 0, make([]byte, 16)))
	rule, _ := ParseRule("* udp/53")
	fw, err := New(Config{Rules: []Rule{rule}, MaxFlows: 256})
	if err != nil {
		f.Fatal(err)
	}
	p := fw.NewPeer(peer.id, "")
	f.Fuzz(func(t *testing.T, b []byte) {
		now := time.Now().UnixNano()
		if v := fw.Inbound(p, b, now); v >= numVerdicts {
			t.Fatalf("verdict %d", v)
		}
		fw.Outbound(b, now)
		if fw.Stats().Flows > 256 {
			t.Fatal("table grew past its cap")
		}
	})
}
